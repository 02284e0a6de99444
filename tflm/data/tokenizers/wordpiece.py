"""The `wordpiece` tokenizer: BERT-style subwords learned from the first `sample_bytes` of the training
split with keras-hub's `compute_word_piece_vocabulary` (tensorflow-text's learner), run in-graph by
keras-hub's `WordPieceTokenizer` (tensorflow-text ops, `non_core_ops`). Lossy: text is split into
words at whitespace, at each punctuation character and at each CJK character (keras-hub's
pre-tokenizer, without lowercasing or accent stripping); a newline is kept as a word of its own
(reserved id 2), other whitespace only separates words. Words are spelt greedily longest-match-first
with "##" marking a piece that continues a word; a word it cannot spell (a character outside the
vocabulary, or longer than 100 bytes) becomes the unknown id. `detokenize` joins words with one
space ("Hello, world" -> "Hello , world"), as tensorflow-text does. `byte_lengths` counts the bytes
detokenize writes: a "##" piece its text without "##", any other piece its text plus one for the
space before the word it starts (the newline token: 2, the unknown token: 3 + 1). So over the ids of
a text the sum is len(detokenize(ids)) + 1: bits per byte of that normalised text, not of the
original.
"""

import math

import numpy as np

from tflm.data.tokenizers import OOV_BYTES, OOV_CHAR, OOV_ID, PAD_ID, Tokenizer, check_vocab_size, text_sample
from tflm.errors import TflmError
from tflm.lazy import tf


class WordPieceTokenizer(Tokenizer):
    """WordPiece over keras-hub's `WordPieceTokenizer` (tensorflow-text's FastWordpiece ops)."""

    kind = "wordpiece"
    RESERVED = ("[PAD]", OOV_CHAR, "\n")  # ids 0, 1, 2: padding, unknown (written as U+FFFD), newline
    SUFFIX = "##"
    SAMPLE_BYTES = 8 * 10**6  # about 2 minutes of tensorflow-text's Python learner (measured 59 s for 4 MB)
    non_core_ops = ("RegexSplitWithOffsets", "FastWordpieceTokenizeWithOffsets", "TFText>FastWordpieceDetokenize")

    def __init__(self, tokens):
        import keras_hub  # loads TensorFlow and Keras: only when needed

        tokens = list(tokens)
        if tuple(tokens[:3]) != self.RESERVED or len(set(tokens)) != len(tokens):
            raise TflmError("a wordpiece vocabulary must be distinct tokens starting with [PAD], U+FFFD, newline")
        self.tokens = tokens
        self._layer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=tokens, lowercase=False, strip_accents=False, split=True, split_on_cjk=True,
            suffix_indicator=self.SUFFIX, oov_token=OOV_CHAR, special_tokens=["\n"],
            special_tokens_in_strings=True, dtype="int32")
        # Called inside a tf.function keras-hub runs its TensorFlow path and returns tensors (eagerly
        # it would run a Python re-implementation and return lists).
        self._tokenize_batch = tf.function(self._layer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        self._detokenize_batch = tf.function(
            self._layer.detokenize, input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)])

    @property
    def vocabulary_size(self):
        """Number of ids, the reserved tokens included."""
        return len(self.tokens)

    def byte_lengths(self):
        """Bytes detokenize writes per token: "##x" len(x); others len + 1 (the space before a word)."""
        lengths = [0, OOV_BYTES + 1]
        for token in self.tokens[2:]:
            if token.startswith(self.SUFFIX) and len(token) > len(self.SUFFIX):
                lengths.append(len(token[len(self.SUFFIX):].encode("utf-8")))
            else:
                lengths.append(len(token.encode("utf-8")) + 1)
        return np.array(lengths, np.int32)

    def _definition(self):
        return {"type": "wordpiece", "pad_id": PAD_ID, "oov_id": OOV_ID, "newline_id": 2,
                "suffix_indicator": self.SUFFIX, "lowercase": False, "split_on_cjk": True,
                "tokens": self.tokens}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object."""
        return cls(definition["tokens"])

    @classmethod
    def learn(cls, texts, vocab_size, sample_bytes=SAMPLE_BYTES):
        """Learn exactly `vocab_size` tokens from the first `sample_bytes` of `texts`."""
        import keras_hub  # loads TensorFlow and Keras: only when needed

        check_vocab_size("wordpiece", vocab_size, len(cls.RESERVED) + 1,
                          "padding, unknown, newline and one word piece")
        sample = text_sample(texts, sample_bytes)
        # tensorflow-text's learner stops anywhere within 5% below the size it is asked for, and
        # lists tokens by frequency after the reserved ones and the characters: ask for enough to
        # land at or above `vocab_size`, then keep the most frequent.
        target = math.ceil(vocab_size / 0.95) + 1
        learned = keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(sample), target, reserved_tokens=list(cls.RESERVED),
            lowercase=False, strip_accents=False, split=True, split_on_cjk=True,
            suffix_indicator=cls.SUFFIX)
        if len(learned) < vocab_size:
            raise TflmError(
                f"the training sample supports only {len(learned)} wordpiece tokens (pieces seen at least "
                f"10 times in its first {sample_bytes} bytes); vocab_size={vocab_size} is too large")
        return cls(learned[:vocab_size])
