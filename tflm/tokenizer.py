"""Character tokenizer: text <-> ids with a vocabulary learned from the training split.

Built from core TensorFlow string ops and Keras' `StringLookup`, so a SavedModel that contains it
runs on stock TF Serving without tensorflow-text. keras-nlp's `UnicodeCodepointTokenizer` was the
other candidate; it maps characters to raw code points, so a CJK corpus needs a ~40k-row embedding
(or, with `vocabulary_size` set, sends every CJK character to one id), while a learned vocabulary
of the characters that occur stays small.

Ids: 0 is padding, 1 is out-of-vocabulary, then characters from most to least frequent.
"""

import collections
import json

import keras
import tensorflow as tf

from tflm.atomic import write_json
from tflm.errors import TflmError

PAD_ID = 0
OOV_ID = 1
OOV_CHAR = "\ufffd"  # what detokenize writes for an out-of-vocabulary id


class CharTokenizer:
    """Maps strings to ragged int32 ids and back; works inside tf.data and tf.function."""

    # Ops outside core TensorFlow this tokenizer puts into an exported graph, which a TF Serving
    # build must then have (tflm.export refuses any other): none, it uses core string ops only.
    non_core_ops = ()

    def __init__(self, characters):
        if len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
            raise TflmError("tokenizer vocabulary must be distinct single characters")
        self.characters = list(characters)
        self._to_id = keras.layers.StringLookup(
            vocabulary=self.characters, mask_token="", oov_token="[UNK]", output_mode="int"
        )
        self._to_char = keras.layers.StringLookup(
            vocabulary=self.characters, mask_token="", oov_token=OOV_CHAR, invert=True
        )

    @property
    def vocabulary_size(self):
        """Number of ids, padding and OOV included."""
        return len(self.characters) + 2

    def tokenize(self, text):
        """String (or 1-D batch of strings) -> int32 ids (ragged for a batch)."""
        chars = tf.strings.unicode_split(text, "UTF-8", errors="replace")
        return tf.cast(self._to_id(chars), tf.int32)

    def detokenize(self, ids):
        """Ids (1-D, or 2-D batch) -> string(s); padding is dropped, OOV becomes U+FFFD."""
        ids = tf.convert_to_tensor(ids) if not isinstance(ids, tf.RaggedTensor) else ids
        chars = self._to_char(tf.cast(ids, tf.int64))
        return tf.strings.reduce_join(chars, axis=-1)

    def save(self, path):
        """Write the vocabulary as JSON (atomically)."""
        write_json(path, {"type": "char", "pad_id": PAD_ID, "oov_id": OOV_ID,
                                 "characters": self.characters})

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by `save`."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls(json.load(f)["characters"])
        except (OSError, ValueError, KeyError) as error:
            raise TflmError(f"cannot read tokenizer vocabulary {path}: {error}") from None

    @classmethod
    def from_counts(cls, counts, max_vocab_size):
        """Keep the `max_vocab_size` most frequent characters (ties broken by character)."""
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([char for char, _ in ranked[: max(1, max_vocab_size - 2)]])


def count_characters(texts):
    """Counter of characters over an iterable of strings."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text)
    return counts
