"""Sources and token stores: any UTF-8 text, explicit validation files, TFDS, shared stores, and
one-line errors for the data a user can get wrong."""

import os

import pytest

from conftest import run_tflm, small_config, write_config
from tflm import run_dir as runs
from tflm.errors import TflmError
from tflm.prepare import prepare_store
from tflm.store import TokenStore
from tflm.train import train

CJK = "日本語のテキストと中文文本，混在한국어도。\n"


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
    vocabulary = runs.load_tokenizer(run_dir).characters
    assert {"語", "한", "ü", "ö"} <= set(vocabulary)
    assert TokenStore.open(os.path.join(run_dir, "store")).tokens("train") > 0


def test_validation_files_hold_the_validation_text_and_every_training_line_trains(tmp_path):
    (tmp_path / "train.txt").write_text("abcdefgh\n" * 300, encoding="utf-8")
    (tmp_path / "valid.txt").write_text("hgfedcba\n" * 70, encoding="utf-8")
    config = small_config(data={"source": "files", "paths": [str(tmp_path / "train.txt")],
                                "validation_paths": [str(tmp_path / "valid.txt")]})
    store = prepare_store(config.data, str(tmp_path / "store"), log=lambda _: None)
    assert store.tokens("train") == 9 * 300 and store.tokens("validation") == 9 * 70
    assert store.index["splits"]["train"]["text_bytes"] == 9 * 300


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n" * 10, encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"ok\nstill ok\nbroken \xff here\n")
    config = small_config(data={"source": "files", "paths": [str(tmp_path / "*.txt")]})
    with pytest.raises(TflmError, match=r"bad\.txt: line 3: invalid UTF-8 byte 0xff"):
        prepare_store(config.data, str(tmp_path / "store"), log=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["bad.txt", "good.txt"]  # no store, no staging left


@pytest.mark.parametrize("pattern", ["nothing*.txt", "ram://tflm-no-such-bucket/*.txt"])
def test_paths_that_match_nothing_are_a_clear_error(tmp_path, pattern):
    pattern = pattern if "://" in pattern else str(tmp_path / pattern)
    config = small_config(data={"source": "files", "paths": [pattern]})
    with pytest.raises(TflmError, match="no file matches"):
        prepare_store(config.data, str(tmp_path / "store"), log=lambda _: None)


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
    store = prepare_store(config.data, str(tmp_path / "store"), log=lambda _: None)
    assert store.tokens("train") == sum(len(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 5)
                                        for i in range(40))
    assert store.tokens("validation") > 0
    bad = small_config(data={"source": "tfds", "tfds_name": "tiny_tflm_corpus", "tfds_split": "test",
                             "tfds_data_dir": str(tmp_path / "tfds")})
    with pytest.raises(TflmError, match="has no split 'test'"):
        prepare_store(bad.data, str(tmp_path / "store2"), log=lambda _: None)


def test_runs_share_a_named_store_and_one_from_another_tokenizer_is_refused(tmp_path):
    shared = str(tmp_path / "shared-store")
    config = small_config(data={"store": shared}, train={"steps": 2, "eval_every": 2, "eval_batches": 1})
    config_path = write_config(tmp_path / "c.yaml", config)
    first = run_tflm("train", "--config", config_path, "--run-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    index = open(os.path.join(shared, "index.json")).read()
    second = run_tflm("train", "--config", config_path, "--run-dir", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "learning a char tokenizer" not in second.stdout  # prepared once, used twice
    assert open(os.path.join(shared, "index.json")).read() == index
    assert not os.path.exists(tmp_path / "a" / "store") and not os.path.exists(tmp_path / "b" / "store")

    other = run_tflm("train", "--config", config_path, "--run-dir", str(tmp_path / "c"),
                     "--set", "data.tokenizer=byte")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"tflm: error: token store {shared} was prepared with data.tokenizer='char', not 'byte'; "
        "use another data.store, or the same setting")
    assert not (tmp_path / "c").exists()


def test_a_damaged_store_stops_a_new_run_before_it_writes_anything(tmp_path):
    shared = str(tmp_path / "store")
    config = small_config(data={"store": shared})
    prepare_store(config.data, shared, log=lambda _: None)
    shard = os.path.join(shared, "train", "00000.bin")
    with open(shard, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = run_tflm("train", "--config", write_config(tmp_path / "c.yaml", config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "train/00000.bin does not match its checksum" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
