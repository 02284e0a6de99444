"""Sources, tokenizer and pipelines: any UTF-8 text, TFDS, and sharding without loss or duplication."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from conftest import small_config
from tflm.config import updated
from tflm.data import load_corpus, train_windows
from tflm.errors import TflmError
from tflm.tokenizer import OOV_ID, CharTokenizer
from tflm.train import train

CJK = "日本語のテキストと中文文本，混在한국어도。\n"


def test_cjk_round_trips_and_unseen_characters_map_to_oov(tmp_path):
    tokenizer = CharTokenizer.from_counts(collections.Counter(CJK * 3), max_vocab_size=100)
    ids = tokenizer.tokenize(tf.constant(CJK))
    assert ids.shape == (len(CJK),) and OOV_ID not in ids.numpy()
    assert tokenizer.detokenize(ids).numpy().decode("utf-8") == CJK
    assert tokenizer.tokenize(tf.constant("日Ω")).numpy().tolist() == [tokenizer.tokenize("日").numpy()[0], OOV_ID]
    tokenizer.save(str(tmp_path / "vocab.json"))
    assert CharTokenizer.load(str(tmp_path / "vocab.json")).characters == tokenizer.characters


def write_files(directory, texts):
    """Write each text as a UTF-8 file; return the glob that matches them."""
    for i, text in enumerate(texts):
        (directory / f"part{i}.txt").write_text(text, encoding="utf-8")
    return str(directory / "part*.txt")


@pytest.mark.slow
def test_text_files_of_any_script_train(tmp_path):
    pattern = write_files(tmp_path, [CJK * 2000, "Grüße aus Köln.\n" * 2000])
    config = small_config(data={"source": "files", "paths": [pattern]},
                          train={"steps": 4, "eval_every": 4, "eval_batches": 1})
    run_dir = train(config, str(tmp_path / "run"))
    vocabulary = CharTokenizer.load(f"{run_dir}/vocab.json").characters
    assert {"語", "한", "ü", "ö"} <= set(vocabulary)


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n" * 10, encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"ok\nstill ok\nbroken \xff here\n")
    config = small_config(data={"source": "files", "paths": [str(tmp_path / "*.txt")]})
    with pytest.raises(TflmError, match=r"bad\.txt: line 3: invalid UTF-8 byte 0xff"):
        load_corpus(config.data)


def test_missing_files_are_a_clear_error(tmp_path):
    config = small_config(data={"source": "files", "paths": [str(tmp_path / "nothing*.txt")]})
    with pytest.raises(TflmError, match="no file matches"):
        load_corpus(config.data)


def test_tfds_dataset_built_locally_is_read_through_the_tfds_source(tmp_path):
    import tensorflow_datasets as tfds

    class TinyTflmCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 40), "validation": self._generate_examples(40, 50)}

        def _generate_examples(self, start, stop):
            for i in range(start, stop):
                yield i, {"text": f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 5}

    config = small_config(data={"source": "tfds", "tfds_name": "tiny_tflm_corpus",
                                "tfds_data_dir": str(tmp_path / "tfds")})
    corpus = load_corpus(config.data)
    assert corpus.tokens("train") == sum(len(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 5)
                                         for i in range(40))
    assert corpus.tokens("validation") > 0
    bad = small_config(data={"source": "tfds", "tfds_name": "tiny_tflm_corpus", "tfds_split": "test",
                             "tfds_data_dir": str(tmp_path / "tfds")})
    with pytest.raises(TflmError, match="has no split 'test'"):
        load_corpus(bad.data)


def epoch_windows(corpus, config, pipelines, index):
    """This pipeline's windows over one epoch, as tuples."""
    return [tuple(w) for w in train_windows(corpus, config, pipelines, index, epochs=1).as_numpy_iterator()]


@pytest.mark.parametrize("policy,files", [("data", 0), ("file", 3), ("data", 3)])
def test_every_training_window_is_seen_exactly_once_across_workers(tmp_path, policy, files):
    data = {"shard_policy": policy}
    if files:
        data.update(source="files", paths=[write_files(tmp_path, [f"file {i} " * (300 + 97 * i) for i in range(files)])])
    config = small_config(data=data)
    corpus = load_corpus(config.data)
    everything = epoch_windows(corpus, config, 1, 0)
    assert len(everything) == corpus.windows("train", config.data.seq_len)
    per_worker = [epoch_windows(corpus, config, 2, i) for i in range(2)]
    assert all(per_worker)
    assert collections.Counter(per_worker[0] + per_worker[1]) == collections.Counter(everything)
    if policy == "data":
        assert abs(len(per_worker[0]) - len(per_worker[1])) <= 1


def test_same_seed_same_windows_and_a_new_seed_reshuffles():
    config = small_config()
    corpus = load_corpus(config.data)
    first = epoch_windows(corpus, config, 1, 0)[:50]
    assert first == epoch_windows(corpus, config, 1, 0)[:50]
    config = updated(config, train={"seed": 1})
    assert first != epoch_windows(corpus, config, 1, 0)[:50]
    assert np.array(first).dtype == np.int32
