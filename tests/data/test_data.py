"""Sources and token stores: any UTF-8 text, explicit validation files, TFDS, shared stores, and
one-line errors for the data a user can get wrong."""

import errno
import io
import json
import os
import threading

import pytest

from conftest import run_tflm, small_config, write_config
from tflm.runs import run_dir as runs
from tflm.errors import TflmError
from tflm import prepare as prepare_command
from tflm.data.prepare import StoreExists, prepare_store, preparing_alone, write_store
from tflm.data.store import TokenStore
from tflm.training.train import train

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
    assert f"tflm: run directory {tmp_path / 'a'} (default strategy, one device, 1 replica(s))" in first.stdout
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
    flip_a_byte(os.path.join(shared, "train", "00000.bin"))
    result = run_tflm("train", "--config", write_config(tmp_path / "c.yaml", config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "train/00000.bin does not match its checksum" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def flip_a_byte(path, offset=10):
    """Change one byte of a file in place (its size and name stay)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_a_store_damaged_after_its_run_started_stops_the_resume_naming_the_shard(tmp_path):
    run_dir = train(small_config(train={"steps": 2, "eval_every": 2, "eval_batches": 1}), str(tmp_path / "run"))
    history = open(runs.history_path(run_dir)).read()
    checkpoints = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    shard = os.path.join(run_dir, "store", "train", "00000.bin")
    flip_a_byte(shard)
    longer = write_config(tmp_path / "c.yaml", small_config(train={"steps": 4, "eval_every": 2, "eval_batches": 1}))
    resumed = run_tflm("train", "--config", longer, "--run-dir", run_dir)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1] == (
        f"tflm: error: token store {run_dir}/store: train/00000.bin does not match its checksum in index.json "
        "(damaged or changed); prepare the store again")
    flip_a_byte(shard)
    os.truncate(shard, os.path.getsize(shard) - 1)
    with pytest.raises(TflmError, match=r"train/00000.bin is \d+ bytes, index.json says \d+ \(truncated or changed\)"):
        train(small_config(train={"steps": 4, "eval_every": 2, "eval_batches": 1}), run_dir)
    assert open(runs.history_path(run_dir)).read() == history
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == checkpoints  # nothing trained on it is kept


def test_a_full_disk_during_prepare_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import tflm.data.store

    (tmp_path / "corpus").mkdir()
    pattern = write_files(tmp_path / "corpus", ["some text to tokenize\n" * 200])

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def shard_open(path, mode):  # the shards, written with open() locally, find the disk full
        return FullDisk(path, mode) if "/train/" in path else open(path, mode)

    monkeypatch.setattr(tflm.data.store, "open", shard_open, raising=False)
    store = str(tmp_path / "stores" / "corpus")
    with pytest.raises(SystemExit) as exit_:
        prepare_command.main(["--set", "data.source=files", "--set", f"data.paths=[{json.dumps(pattern)}]", "--store", store])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"tflm: error: cannot write the token store {store}: No space left on device "
                                       "(writing train/00000.bin); the partial store was removed\n")
    assert os.listdir(tmp_path / "stores") == []


def test_a_second_prepare_of_one_store_is_refused_or_waits_for_the_first(tmp_path):
    config = small_config(data={"source": "files", "paths": [write_files(tmp_path, ["text " * 400])]})
    path = str(tmp_path / "store")
    quiet = lambda _: None  # noqa: E731
    with preparing_alone(path, False, quiet):  # as another process preparing it: an flock on its own descriptor
        with pytest.raises(TflmError, match=rf"^{path} is being prepared by pid {os.getpid()} on .*; "
                                            "wait for it to finish, or prepare another path$"):
            prepare_store(config.data, path, log=quiet)
    assert not os.path.exists(path)

    held, waiting, outcome = threading.Event(), threading.Event(), []

    def first():
        with preparing_alone(path, False, quiet):
            held.set()
            waiting.wait(60)
            write_store(config.data, path, None, quiet)

    def second():
        try:
            prepare_store(config.data, path, log=lambda line: waiting.set(), wait=True)
        except StoreExists as error:
            outcome.append(error)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    held.wait(60)
    threads[1].start()
    for thread in threads:
        thread.join(120)
    assert waiting.is_set() and len(outcome) == 1  # it waited, then found the store the first one prepared
    assert TokenStore.open(path).tokens("train") > 0
    assert sorted(os.listdir(tmp_path)) == ["part0.txt", "store"]  # no lock file, no staging left


def test_a_store_where_nothing_can_be_written_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_command.main(["--store", "/proc/tflm-store"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tflm: error: cannot prepare a token store at /proc/tflm-store: /proc: ") and err.count("\n") == 1
