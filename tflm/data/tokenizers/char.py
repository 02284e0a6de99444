"""The `char` tokenizer: the characters of the training split, most frequent first (`vocab_size` is
a maximum; the rest are out-of-vocabulary, id 1), looked up with Keras's StringLookup (core
TensorFlow ops, so stock TF Serving runs its graphs). Learning counts every character of the split.
"""

import numpy as np

from tflm.data.tokenizers import (OOV_BYTES, OOV_CHAR, OOV_ID, PAD_ID, Tokenizer, check_vocab_size, split_lengths,
                                  text_batches)
from tflm.errors import TflmError
from tflm.lazy import keras, tf


class CharTokenizer(Tokenizer):
    """Characters of the training split, via StringLookup (core TF ops: stock TF Serving runs it).

    keras-hub's `UnicodeCodepointTokenizer` was the other candidate; it maps characters to raw code
    points, so a CJK corpus needs a ~40k-row embedding, while a learned vocabulary of the characters
    that occur stays small. Ids: 0 padding, 1 out-of-vocabulary, then characters from most to
    least frequent.
    """

    kind = "char"

    def __init__(self, characters):
        if len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
            raise TflmError("tokenizer vocabulary must be distinct single characters")
        self.characters = list(characters)
        self._lookups = None  # built when first used: `encode` (a prepare, a Beam worker) needs no Keras
        self._table = None

    def lookups(self):
        """(characters -> ids, ids -> characters): Keras StringLookup layers, built on first use."""
        if self._lookups is None:
            with tf.init_scope():  # eagerly, even when first used while a tf.function is traced
                to_id = keras.layers.StringLookup(vocabulary=self.characters, mask_token="", oov_token="[UNK]",
                                                  output_mode="int")
                to_char = keras.layers.StringLookup(vocabulary=self.characters, mask_token="", oov_token=OOV_CHAR,
                                                    invert=True)
                for lookup in (to_id, to_char):
                    lookup.build(None)  # only used eagerly it is never marked built, and export needs it built
            self._lookups = (to_id, to_char)
        return self._lookups

    def export_fields(self):
        """Its characters, in id order from 2."""
        return {"characters": self.characters}

    @property
    def vocabulary_size(self):
        """Number of ids, padding and OOV included."""
        return len(self.characters) + 2

    @property
    def trackables(self):
        """The two lookup layers (their hash tables)."""
        return self.lookups()

    def _tokenize_batch(self, strings):
        chars = tf.strings.unicode_split(strings, "UTF-8", errors="replace")
        return tf.cast(self.lookups()[0](chars), tf.int32)

    def _detokenize_batch(self, ids):
        return tf.strings.reduce_join(self.lookups()[1](tf.cast(ids, tf.int64)), axis=-1)

    def encode(self, texts):
        """List of str -> list of np.int32 ids: a code point -> id table, no TensorFlow."""
        if self._table is None:
            self._table = np.full(0x110000, OOV_ID, np.int32)
            self._table[[ord(c) for c in self.characters]] = np.arange(2, self.vocabulary_size, dtype=np.int32)
        out = []
        for batch in text_batches(texts):
            codes = np.frombuffer("".join(batch).encode("utf-32-le"), np.uint32)
            out.extend(split_lengths(self._table[codes], [len(t) for t in batch]))
        return out

    def byte_lengths(self):
        """Padding 0, OOV 3 (U+FFFD), each character its UTF-8 length."""
        return np.array([0, OOV_BYTES] + [len(c.encode("utf-8")) for c in self.characters], np.int32)

    def _definition(self):
        return {"type": "char", "pad_id": PAD_ID, "oov_id": OOV_ID, "characters": self.characters}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object (tflm 0.1's included)."""
        return cls(definition["characters"])

    @classmethod
    def learn(cls, texts, vocab_size):
        """The `vocab_size` - 2 most frequent characters of all of `texts`."""
        cls.check_vocab_size(vocab_size)
        return cls.from_counts(count_characters(texts), vocab_size)

    @staticmethod
    def check_vocab_size(vocab_size):
        """Raise unless `vocab_size` leaves room for one character."""
        check_vocab_size("char", vocab_size, 3, "padding, out-of-vocabulary and one character")

    @classmethod
    def from_counts(cls, counts, max_vocab_size):
        """Keep the `max_vocab_size` most frequent characters of {character: count} (ties broken by
        character); `counts` may be added up from parts of the training split (Beam's workers)."""
        if not counts:
            raise TflmError("the training split is empty")
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([char for char, _ in ranked[: max(1, max_vocab_size - 2)]])


def count_characters(texts):
    """{character: count} over an iterable of strings, counted in bulk (numpy over code points:
    measured 5.6x collections.Counter's update per line)."""
    counts = np.zeros(0x110000, np.int64)
    for batch in text_batches(texts):
        counts += np.bincount(np.frombuffer("".join(batch).encode("utf-32-le"), np.uint32), minlength=0x110000)
    present = np.flatnonzero(counts)
    return dict(zip(map(chr, present.tolist()), counts[present].tolist()))
