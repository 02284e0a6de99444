"""The `byte` tokenizer: the UTF-8 bytes of the text, id = byte + 1 (0 is padding); nothing to learn,
always 257 ids, core TensorFlow ops only. Lossless: every text round-trips and its byte lengths
sum to its UTF-8 length.
"""

import numpy as np

from tflm.data.tokenizers import PAD_ID, Tokenizer, split_lengths, text_batches
from tflm.lazy import tf


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + 1, 0 padding; nothing learned, core TF ops only."""

    kind = "byte"
    vocabulary_size = 257

    def _tokenize_batch(self, strings):
        # ISO-8859-1 maps each byte to the code point of the same value: one core op, no padding.
        return tf.strings.unicode_decode(strings, "ISO-8859-1") + 1

    def _detokenize_batch(self, ids):
        byte_strings = tf.constant([b""] + [bytes([b]) for b in range(256)])
        return tf.strings.reduce_join(tf.gather(byte_strings, ids), axis=-1)

    def encode(self, texts):
        """List of str -> list of np.int32 ids: the UTF-8 bytes plus one, no TensorFlow."""
        out = []
        for batch in text_batches(texts):
            encoded = [text.encode("utf-8") for text in batch]
            ids = np.frombuffer(b"".join(encoded), np.uint8).astype(np.int32) + 1
            out.extend(split_lengths(ids, [len(e) for e in encoded]))
        return out

    def byte_lengths(self):
        """Padding 0, every byte 1."""
        return np.array([0] + [1] * 256, np.int32)

    def _definition(self):
        return {"type": "byte", "pad_id": PAD_ID, "vocabulary_size": self.vocabulary_size}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object."""
        return cls()

    @classmethod
    def learn(cls, texts, vocab_size):
        """A byte tokenizer; `texts` and `vocab_size` are not used."""
        return cls()
