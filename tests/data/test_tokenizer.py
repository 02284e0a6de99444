"""The character tokenizer: ids are padding, out-of-vocabulary, then characters by frequency; text
round-trips; padding disappears and unknown characters come back as U+FFFD."""

import collections

import pytest
import tensorflow as tf

from tflm.errors import TflmError
from tflm.data.tokenizers import OOV_CHAR, OOV_ID, PAD_ID, CharTokenizer

TEXT = "def f(x):\n    return x ** 2  # ünïcode ✓ 日本\n"


def tokenizer_of(text, max_vocab_size=1000):
    return CharTokenizer.from_counts(collections.Counter(text), max_vocab_size)


def ids(tokenizer, text):
    return tokenizer.tokenize(text).numpy().tolist()


def test_ids_are_padding_oov_then_characters_from_most_to_least_frequent():
    tokenizer = tokenizer_of("cc aaabb c")  # a and c 3 times (a first: ties go by character), b twice, " " twice
    assert (PAD_ID, OOV_ID) == (0, 1)
    assert tokenizer.characters == ["a", "c", " ", "b"]
    assert ids(tokenizer, "abc ") == [2, 5, 3, 4]
    assert tokenizer.vocabulary_size == 6


def test_max_vocab_size_keeps_the_most_frequent_characters_and_the_rest_are_oov():
    tokenizer = tokenizer_of("aaabbc", max_vocab_size=4)  # padding, OOV and two characters
    assert tokenizer.characters == ["a", "b"]
    assert ids(tokenizer, "abcz") == [2, 3, OOV_ID, OOV_ID]


def test_text_round_trips_and_unknown_characters_come_back_as_the_replacement_character():
    tokenizer = tokenizer_of(TEXT)
    assert tokenizer.detokenize(tokenizer.tokenize(TEXT)).numpy().decode("utf-8") == TEXT
    assert ids(tokenizer, "dΩ") == [ids(tokenizer, "d")[0], OOV_ID]
    assert tokenizer.detokenize(tokenizer.tokenize("dΩ")).numpy().decode("utf-8") == "d" + OOV_CHAR == "d\ufffd"


def test_detokenize_drops_padding_from_a_batch():
    tokenizer = tokenizer_of(TEXT)
    batch = tokenizer.tokenize(tf.constant(["def", "", "日本"]))
    padded = batch.to_tensor(default_value=PAD_ID)
    assert padded.shape == (3, 3)
    for row_ids in (batch, padded):
        assert [t.decode("utf-8") for t in tokenizer.detokenize(row_ids).numpy()] == ["def", "", "日本"]


def test_a_vocabulary_must_be_distinct_single_characters():
    for characters in (["a", "a"], ["ab"], [""]):
        with pytest.raises(TflmError, match="distinct single characters"):
            CharTokenizer(characters)
