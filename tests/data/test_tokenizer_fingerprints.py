"""A run's tokenizer files swapped for others (two characters exchanged in vocab.json, a
sentencepiece model and vocabulary from another run) are refused wherever the run's tokenizer is
loaded: score, generate, export and resume each print one line naming both fingerprints and the
files, exit 2 and write nothing."""

import importlib
import json
import os
import shutil

import pytest
from pydoc_data.topics import topics

from conftest import run_tflm, small_config
from tflm.serving.loading import load_run
from tflm.data.tokenizers import learn_tokenizer, load_tokenizer
from tflm.training.train import train

pytestmark = pytest.mark.slow  # two tiny runs trained

TINY = {"train": {"steps": 2, "eval_every": 2, "eval_batches": 1}}
SENTENCEPIECE = {"data": {"tokenizer": "sentencepiece", "vocab_size": 400}}


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    return train(small_config(**TINY), str(tmp_path_factory.mktemp("char") / "run"))


@pytest.fixture(scope="module")
def sentencepiece_run(tmp_path_factory):
    return train(small_config(**TINY, **SENTENCEPIECE), str(tmp_path_factory.mktemp("sentencepiece") / "run"))


def copy_run(run_dir, tmp_path):
    """A copy of a run directory, its token store included."""
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    return copy


def swap_two_characters(run_dir):
    """Exchange the first two characters of the run's char vocab.json (a consistent, loadable file)."""
    path = os.path.join(run_dir, "vocab.json")
    with open(path, encoding="utf-8") as f:
        definition = json.load(f)
    characters = definition["characters"]
    characters[0], characters[1] = characters[1], characters[0]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(definition, f)


def fails_with_one_line(capsys, module, *args):
    """The error line of `python -m tflm.<module> args` run in this process; asserts exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"tflm.{module}").main(list(args))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("tflm: error:") and error.count("\n") == 1, error
    return error


def test_a_char_vocabulary_with_two_characters_swapped_is_refused_everywhere(char_run, tmp_path, capsys):
    swapped = copy_run(char_run, tmp_path)
    swap_two_characters(swapped)
    recorded, actual = load_run(char_run).tokenizer.fingerprint(), load_tokenizer(swapped).fingerprint()
    assert recorded != actual
    for module, args in (("score", ["abc"]), ("generate", ["--prompt", "a", "--max-new-tokens", "2"]),
                         ("export", ["--base", str(tmp_path / "models")])):
        error = fails_with_one_line(capsys, module, "--run-dir", swapped, *args)
        assert f"{swapped}/vocab.json (tokenizer fingerprint {actual[:12]})" in error
        assert f"{swapped}/store/index.json records {recorded[:12]}" in error
    assert not os.path.exists(tmp_path / "models")
    history = open(os.path.join(swapped, "history.jsonl"), encoding="utf-8").read()
    resumed = run_tflm("train", "--run-dir", swapped, "--config", os.path.join(swapped, "config.yaml"),
                       "--set", "train.steps=4")
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert resumed.stderr.strip().splitlines()[-1] == error.strip()  # the same line as score's
    assert open(os.path.join(swapped, "history.jsonl"), encoding="utf-8").read() == history


def test_a_sentencepiece_model_from_another_run_is_refused(sentencepiece_run, tmp_path, capsys):
    scored = run_tflm("score", "--run-dir", sentencepiece_run, "def main():")  # its own tokenizer: fine
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "LOG(" not in scored.stderr  # sentencepiece's own log lines are not shown either
    swapped = copy_run(sentencepiece_run, tmp_path)
    other = learn_tokenizer("sentencepiece", list(topics.values()), 400, model_type="bpe", sample_bytes=300_000)
    other.save(swapped)  # its vocab.json and tokenizer.model, consistent with each other
    error = fails_with_one_line(capsys, "score", "--run-dir", swapped, "abc")
    assert f"{swapped}/vocab.json and {swapped}/tokenizer.model (tokenizer fingerprint " \
           f"{other.fingerprint()[:12]})" in error
    assert load_run(sentencepiece_run).tokenizer.fingerprint()[:12] in error


def test_a_run_whose_store_is_gone_records_no_fingerprint_and_still_loads(char_run, tmp_path):
    """As tflm 0.1's runs (tests/test_compatibility.py), which have no store."""
    moved = copy_run(char_run, tmp_path)
    shutil.rmtree(os.path.join(moved, "store"))
    assert load_run(moved).tokenizer.fingerprint() == load_run(char_run).tokenizer.fingerprint()
