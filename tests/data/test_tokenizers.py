"""Tokenizers: char, byte, wordpiece and sentencepiece behind one interface, in Python, tf.data and
SavedModels; exact byte counts for bits per byte; old vocabularies load; bad inputs are one line.
The character tokenizer's own rules come first: ids are padding, out-of-vocabulary, then characters
by frequency; padding disappears and unknown characters come back as U+FFFD.
(Tokenizers inside runs and exports: tests/data/test_tokenizer_runs.py.)"""

import collections
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from pydoc_data.topics import topics

from tflm.errors import TflmError
from tflm.quiet import is_noise
from tflm.serving.warmup import graph_ops, non_core_ops
from tflm.config import Config, DataConfig, field_types, updated
from tflm.data.tokenizers import (OOV_CHAR, OOV_ID, PAD_ID, VOCAB_FILE, CharTokenizer, learn_tokenizer, load_tokenizer,
                                  tokenizer_class)

from conftest import REPO
V0_1_RUN = os.path.join(REPO, "tests", "fixtures", "v0_1", "transformer")

ENGLISH = "The quick brown fox jumps over the lazy dog. It's 3:45pm -- isn't it?"
CODE = "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}  # tab-indented\r\n    pass\n\n\n" + "\n" + "*" * 21 + "\n"
CHINESE = "我们的语言模型需要处理中文文本，包括标点符号。"
EMOJI = "ok 🙂👍🏽 👩‍👩‍👧 🇩🇪 done"
TEXTS = {"english": ENGLISH, "code": CODE, "chinese": CHINESE, "emoji": EMOJI}
VARIED = list(TEXTS.values()) + ["", " ", "  two  spaces ", "\n", "\ufeffbom and \u00a0nbsp", "e\u0301 é",
                                 "\x00\x7f control", "a" * 300, topics["assignment"][:4000]]
CORPUS = list(topics.values()) + list(TEXTS.values())  # every test character occurs: char has no OOV
SIZES = {"char": 1000, "byte": 0, "wordpiece": 400, "sentencepiece": 800}
OPTIONS = {"wordpiece": {"sample_bytes": 60_000}, "sentencepiece": {"sample_bytes": 300_000}}
LOSSLESS = ["char", "byte", "sentencepiece", "sentencepiece-bpe"]
ALL = ["char", "byte", "wordpiece", "sentencepiece", "sentencepiece-bpe"]


def learn(name, texts=CORPUS):
    """A tokenizer learned from `texts`; 'sentencepiece-bpe' is a bpe model."""
    kind, _, model_type = name.partition("-")
    options = dict(OPTIONS.get(kind, {}), **({"model_type": model_type} if model_type else {}))
    return learn_tokenizer(kind, texts, SIZES[kind], **options)


@pytest.fixture(scope="module")
def tokenizers():
    """One tokenizer of each kind (and a bpe sentencepiece), learned from the pydoc topics."""
    return {name: learn(name) for name in ALL}


def ids_of(tokenizer, text):
    """tokenize(text) as a list."""
    return tokenizer.tokenize(tf.constant(text)).numpy().tolist()


def text_of(tokenizer, ids):
    """detokenize(ids) as str."""
    return tokenizer.detokenize(tf.constant(ids, tf.int32)).numpy().decode("utf-8")


def char_tokenizer_of(text, max_vocab_size=1000):
    """A character tokenizer counting the characters of `text`."""
    return CharTokenizer.from_counts(collections.Counter(text), max_vocab_size)


def test_char_ids_are_padding_oov_then_characters_from_most_to_least_frequent():
    tokenizer = char_tokenizer_of("cc aaabb c")  # a and c 3 times (a first: ties go by character), b twice, " " twice
    assert (PAD_ID, OOV_ID) == (0, 1)
    assert tokenizer.characters == ["a", "c", " ", "b"]
    assert tokenizer.tokenize("abc ").numpy().tolist() == [2, 5, 3, 4]  # a Python str is taken as it is
    assert tokenizer.vocabulary_size == 6


def test_char_max_vocab_size_keeps_the_most_frequent_characters_and_the_rest_are_oov():
    tokenizer = char_tokenizer_of("aaabbc", max_vocab_size=4)  # padding, OOV and two characters
    assert tokenizer.characters == ["a", "b"]
    assert ids_of(tokenizer, "abcz") == [2, 3, OOV_ID, OOV_ID]


def test_char_text_round_trips_and_unknown_characters_come_back_as_the_replacement_character():
    text = "def f(x):\n    return x ** 2  # ünïcode ✓ 日本\n"
    tokenizer = char_tokenizer_of(text)
    assert text_of(tokenizer, ids_of(tokenizer, text)) == text
    assert ids_of(tokenizer, "dΩ") == [ids_of(tokenizer, "d")[0], OOV_ID]
    assert text_of(tokenizer, ids_of(tokenizer, "dΩ")) == "d" + OOV_CHAR == "d\ufffd"


def test_char_detokenize_drops_padding_from_a_batch():
    tokenizer = char_tokenizer_of("def f(x):\n    return x ** 2  # ünïcode ✓ 日本\n")
    batch = tokenizer.tokenize(tf.constant(["def", "", "日本"]))
    padded = batch.to_tensor(default_value=PAD_ID)
    assert padded.shape == (3, 3)
    for row_ids in (batch, padded):
        assert [t.decode("utf-8") for t in tokenizer.detokenize(row_ids).numpy()] == ["def", "", "日本"]


def test_a_char_vocabulary_must_be_distinct_single_characters():
    for characters in (["a", "a"], ["ab"], [""]):
        with pytest.raises(TflmError, match="distinct single characters"):
            CharTokenizer(characters)


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.parametrize("script", TEXTS)
def test_lossless_tokenizers_round_trip_and_count_every_byte(tokenizers, name, script):
    tokenizer, text = tokenizers[name], TEXTS[script]
    ids = ids_of(tokenizer, text)
    assert text_of(tokenizer, ids) == text
    assert tokenizer.byte_lengths()[ids].sum() == len(text.encode("utf-8"))


def test_wordpiece_joins_words_with_one_space_keeps_newlines_and_counts_what_it_writes(tokenizers):
    tokenizer = tokenizers["wordpiece"]
    ids = ids_of(tokenizer, "The  value,\tthe\r\nfunction.")
    assert text_of(tokenizer, ids) == "The value , the \n function ."
    for text in VARIED:
        ids = ids_of(tokenizer, text)
        decoded = text_of(tokenizer, ids)
        assert tokenizer.byte_lengths()[ids].sum() == (len(decoded.encode("utf-8")) + 1 if ids else 0)
    assert "\u16a0" not in "".join(CORPUS)
    assert text_of(tokenizer, ids_of(tokenizer, "x \u16a0mega y")) == f"x {OOV_CHAR} y"  # a word it cannot spell


def test_byte_ids_are_bytes_plus_one_and_detokenize_always_returns_valid_utf8(tokenizers):
    tokenizer = tokenizers["byte"]
    assert tokenizer.vocabulary_size == 257
    assert ids_of(tokenizer, "aé") == [ord("a") + 1, 0xC3 + 1, 0xA9 + 1]
    assert text_of(tokenizer, [ord("a") + 1, 0xC3 + 1]) == "a\ufffd"  # half a character


@pytest.mark.parametrize("name", ALL)
def test_encode_gives_the_ids_tokenize_gives_eagerly_in_tf_data_and_in_tf_function(tokenizers, name):
    tokenizer = tokenizers[name]
    encoded = tokenizer.encode(VARIED)
    assert all(ids.dtype == np.int32 for ids in encoded)
    batch = tokenizer.tokenize(tf.constant(VARIED))
    assert [ids.tolist() for ids in encoded] == batch.to_list()
    assert [ids.tolist() for ids in encoded] == [ids_of(tokenizer, text) for text in VARIED]
    mapped = tf.data.Dataset.from_tensor_slices(VARIED).map(tokenizer.tokenize)
    assert [ids.tolist() for ids in encoded] == [ids.tolist() for ids in mapped.as_numpy_iterator()]
    traced = tf.function(lambda texts: tokenizer.detokenize(tokenizer.tokenize(texts)))
    assert traced(tf.constant(VARIED)).numpy().tolist() == tokenizer.detokenize(batch).numpy().tolist()
    assert tokenizer.encode([]) == []


@pytest.mark.parametrize("name", ALL)
def test_detokenize_drops_padding_from_dense_and_ragged_batches(tokenizers, name):
    tokenizer = tokenizers[name]
    ragged = tokenizer.tokenize(tf.constant([ENGLISH, "", CHINESE]))
    expected = tokenizer.detokenize(ragged).numpy().tolist()
    assert tokenizer.detokenize(ragged.to_tensor(default_value=PAD_ID)).numpy().tolist() == expected
    assert text_of(tokenizer, [PAD_ID] + ids_of(tokenizer, ENGLISH) + [PAD_ID]) == expected[0].decode("utf-8")


@pytest.mark.parametrize("name", ALL)
def test_vocabulary_has_the_size_asked_for_and_a_byte_length_per_id(tokenizers, name):
    tokenizer = tokenizers[name]
    kind = name.partition("-")[0]
    expected = {"char": len(set("".join(CORPUS))) + 2, "byte": 257}.get(kind, SIZES[kind])
    assert tokenizer.kind == kind and tokenizer.vocabulary_size == expected
    lengths = tokenizer.byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (tokenizer.vocabulary_size,) and lengths[PAD_ID] == 0


@pytest.mark.parametrize("name", ALL)
def test_save_and_load_keep_the_ids_and_the_fingerprint(tokenizers, name, tmp_path):
    tokenizer = tokenizers[name]
    tokenizer.save(str(tmp_path))
    with open(tmp_path / VOCAB_FILE, encoding="utf-8") as f:
        assert json.load(f)["type"] == tokenizer.kind
    loaded = load_tokenizer(str(tmp_path))
    assert (loaded.kind, loaded.vocabulary_size) == (tokenizer.kind, tokenizer.vocabulary_size)
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert [ids.tolist() for ids in loaded.encode(VARIED)] == [ids.tolist() for ids in tokenizer.encode(VARIED)]
    assert loaded.byte_lengths().tolist() == tokenizer.byte_lengths().tolist()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_fingerprints_differ_between_vocabularies_and_learning_repeats_exactly(tokenizers):
    fingerprints = {tokenizer.fingerprint() for tokenizer in tokenizers.values()}
    assert len(fingerprints) == len(tokenizers)
    assert learn("sentencepiece").fingerprint() == tokenizers["sentencepiece"].fingerprint()
    assert learn("char", CORPUS[:3]).fingerprint() != tokenizers["char"].fingerprint()


def test_tflm_0_1_vocabulary_loads_with_its_ids():
    tokenizer = load_tokenizer(V0_1_RUN)
    with open(os.path.join(V0_1_RUN, VOCAB_FILE), encoding="utf-8") as f:
        characters = json.load(f)["characters"]
    assert tokenizer.kind == "char" and tokenizer.vocabulary_size == len(characters) + 2
    assert ids_of(tokenizer, "the€") == [characters.index(c) + 2 for c in "the"] + [1]
    assert tokenizer.encode(["the€"])[0].tolist() == ids_of(tokenizer, "the€")
    # Pinned: what defines these ids has not changed, so anything keyed by the fingerprint stays valid.
    assert tokenizer.fingerprint() == "2166317e4886abfa1ee6981ea5991c0365492dd718229b6f33311f05af8cffd9"


def test_each_data_tokenizer_choice_is_the_class_of_its_module_and_learns_with_its_config_options():
    kinds = field_types(DataConfig)["tokenizer"][1].choices
    classes = [tokenizer_class(kind) for kind in kinds]
    assert [(cls.__module__, cls.kind) for cls in classes] == [(f"tflm.data.tokenizers.{kind}", kind) for kind in kinds]
    data = updated(Config(), data={"tokenizer": "sentencepiece", "sentencepiece_model": "bpe"}).data
    assert [cls.learn_options(data) for cls in classes] == [{}, {}, {}, {"model_type": "bpe"}, {}]


@pytest.mark.parametrize("kind, vocab_size, options, message", [
    ("words", 100, {}, "unknown tokenizer kind 'words'; expected one of char, byte, wordpiece, sentencepiece"),
    ("char", 2, {}, "char vocab_size must be at least 3"),
    ("wordpiece", 3, {}, "wordpiece vocab_size must be at least 4"),
    ("sentencepiece", 259, {}, "sentencepiece vocab_size must be at least 260"),
    ("char", 2**31, {}, "vocab_size must be at most 2147483647"),
    ("sentencepiece", 2**31, {}, "vocab_size must be at most 2147483647"),
    ("char", 10.5, {}, "vocab_size must be an integer"),
    ("wordpiece", 5000, {"sample_bytes": 20_000}, "the training sample supports only"),
    ("sentencepiece", 100_000, {"sample_bytes": 20_000}, "the training sample supports at most"),
    ("sentencepiece", 300, {"model_type": "word"}, "sentencepiece model_type must be one of unigram, bpe"),
    ("sentencepiece", 300, {"vocab": 3}, "the sentencepiece tokenizer has no option 'vocab'"),
    ("wordpiece", 300, {"sample_bytes": 0}, "sample_bytes must be a positive integer"),
])
def test_bad_requests_are_one_line_errors(kind, vocab_size, options, message):
    with pytest.raises(TflmError) as error:
        learn_tokenizer(kind, CORPUS, vocab_size, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_sentencepiece_too_small_for_the_corpus_says_the_minimum():
    chinese = "".join(chr(0x4E00 + i) for i in range(400))
    with pytest.raises(TflmError, match=r"vocab_size=300 is too small for this corpus: .* at least \d+"):
        learn_tokenizer("sentencepiece", [chinese] * 3, 300)


@pytest.mark.parametrize("kind", ["char", "wordpiece", "sentencepiece"])
def test_empty_training_split_is_an_error(kind):
    with pytest.raises(TflmError, match="the training split is empty"):
        learn_tokenizer(kind, ["", ""], SIZES[kind])


def test_sentencepiece_log_lines_are_hidden_from_commands():
    """tensorflow-text's sentencepiece logs "LOG(INFO)" lines to stderr when a model loads (its
    level cannot be set from Python); the commands' stderr filter leaves them out, errors stay."""
    assert is_noise("normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity normalization.")
    assert is_noise("trainer_interface.cc(409) LOG(WARNING) Found too long line (5000 > 4192).")
    assert not is_noise("model_interface.cc(65) LOG(ERROR) cannot parse the model")


def test_unreadable_or_mismatched_saves_are_one_line_errors(tokenizers, tmp_path):
    with pytest.raises(TflmError, match="cannot read tokenizer vocabulary"):
        load_tokenizer(str(tmp_path))
    (tmp_path / VOCAB_FILE).write_text('{"type": "words"}', encoding="utf-8")
    with pytest.raises(TflmError, match="unknown tokenizer type 'words'"):
        load_tokenizer(str(tmp_path))
    tokenizers["sentencepiece"].save(str(tmp_path))
    with open(tmp_path / "tokenizer.model", "wb") as f:
        f.write(tokenizers["sentencepiece-bpe"].model_proto)
    with pytest.raises(TflmError, match="is not the model"):
        load_tokenizer(str(tmp_path))


LOAD_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    paths, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    if sys.argv[3] == "subword":
        import tensorflow_text  # registers its ops, as TF Serving links them
    results = {}
    for name, path in paths.items():
        model = tf.saved_model.load(path)
        ids = model.signatures["tokenize"](texts=tf.constant(texts))["output_0"]
        decoded = model.signatures["detokenize"](ids=ids)["output_0"]
        results[name] = {"ids": ids.numpy().tolist(), "texts": [t.decode("utf-8") for t in decoded.numpy()]}
    results["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tflm", "keras_hub", "keras_nlp"))
    print(json.dumps(results))
""")


def export_tokenizer(tokenizer, path):
    """A SavedModel with tokenize (texts -> padded ids) and detokenize signatures, as tflm.export
    writes one: keras' ExportArchive tracking the tokenizer's trackables."""
    archive = keras.export.ExportArchive()
    for trackable in tokenizer.trackables:
        archive.track(trackable)
    archive.add_endpoint("tokenize", lambda texts: tokenizer.tokenize(texts).to_tensor(),
                         input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    archive.add_endpoint("detokenize", tokenizer.detokenize,
                         input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    archive.write_out(path, verbose=False)


@pytest.fixture(scope="module")
def saved_models(tokenizers, tmp_path_factory):
    """{name: (SavedModel path, what a fresh process that imports only tensorflow, plus
    tensorflow_text for the subword ones, computes with it)}."""
    paths = {name: str(tmp_path_factory.mktemp(name)) for name in ALL}
    for name, path in paths.items():
        export_tokenizer(tokenizers[name], path)
    served = {}
    for group in ("core", "subword"):
        names = [n for n in ALL if (n in ("char", "byte")) == (group == "core")]
        if not names:
            continue
        result = subprocess.run(
            [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, json.dumps({n: paths[n] for n in names}),
             json.dumps(list(TEXTS.values())), group],
            capture_output=True, text=True, timeout=300, cwd=paths[names[0]],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert result.returncode == 0, result.stderr[-3000:]
        results = json.loads(result.stdout.strip().splitlines()[-1])
        assert results.pop("modules") == []  # neither tflm nor keras-hub was needed
        served.update({name: (paths[name], results[name]) for name in names})
    return served


@pytest.mark.slow  # five SavedModels written, two processes load them (half a minute)
@pytest.mark.parametrize("name", ALL)
def test_tokenizer_works_in_a_saved_model_loaded_by_plain_tensorflow(tokenizers, saved_models, name):
    tokenizer, (path, served) = tokenizers[name], saved_models[name]
    texts = list(TEXTS.values())
    assert served["ids"] == tokenizer.tokenize(tf.constant(texts)).to_tensor().numpy().tolist()
    assert served["texts"] == texts if name in LOSSLESS else served["texts"] == [
        t.decode("utf-8") for t in tokenizer.detokenize(tokenizer.tokenize(texts)).numpy()]
    assert set(non_core_ops(graph_ops(path))) <= set(tokenizer.non_core_ops)


@pytest.mark.parametrize("kind, options", [("char", {}), ("sentencepiece", {"model_type": "unigram"}),
                                           ("sentencepiece", {"model_type": "bpe"}), ("wordpiece", {})])
def test_a_tokenizer_learns_the_same_from_blocks_of_lines_as_from_lines(kind, options):
    # A prepare hands the learners blocks of 100 lines (tflm.data.chunks), which wordpiece learns from 6x faster.
    lines = [line + "\n" for name in sorted(topics)[:150] for line in topics[name].splitlines()]
    blocks = ["".join(lines[i:i + 100]) for i in range(0, len(lines), 100)]
    vocab_size = {"char": 100, "sentencepiece": 400, "wordpiece": 300}[kind]
    sample = {} if kind == "char" else {"sample_bytes": 150_000}
    from_lines = learn_tokenizer(kind, iter(lines), vocab_size, **options, **sample)
    assert learn_tokenizer(kind, iter(blocks), vocab_size, **options, **sample).fingerprint() == from_lines.fingerprint()
