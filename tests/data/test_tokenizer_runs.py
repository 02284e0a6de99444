"""Tokenizers inside runs. Every command with every tokenizer: train, resume exactly, score,
generate, and an export that a process importing only TensorFlow (and tensorflow-text where the
tokenizer needs its ops) serves as tflm does in Python. A run's tokenizer files swapped for others
(two characters exchanged in vocab.json, a sentencepiece model and vocabulary from another run) are
refused wherever the run's tokenizer is loaded: score, generate, export and resume each print one
line naming both fingerprints and the files, exit 2 and write nothing.
(The tokenizers themselves: tests/data/test_tokenizers.py.)"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pydoc_data.topics import topics

from conftest import run_tflm, small_config
from tflm.data.tokenizers import learn_tokenizer, load_tokenizer
from tflm.runs import run_dir as runs
from tflm.serving.export import export_run
from tflm.serving.decoding import generate
from tflm.serving.loading import load_run
from tflm.serving.scoring import score_texts
from tflm.training.train import train

pytestmark = pytest.mark.slow  # a run and an export per tokenizer (about 30 s each), two tiny runs swapped

VOCAB_SIZES = {"char": 1000, "byte": 257, "wordpiece": 300, "sentencepiece": 400}
TEXTS = ["def main():\n    return 0", "", "\u00e9t\u00e9 \u2603 unseen"]
PROMPTS = ["import ", "class "]

SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    if sys.argv[2]:
        import tensorflow_text  # registers the ops the subword tokenizers' graphs use
    texts, prompts = json.loads(sys.argv[3])
    model = tf.saved_model.load(sys.argv[1])
    score = model.signatures["score"](texts=tf.constant(texts))
    completions = model.signatures["generate"](
        prompts=tf.constant(prompts), max_new_tokens=tf.constant(20), temperature=tf.constant(0.0),
        top_k=tf.constant(0), seed=tf.constant(0), top_p=tf.constant(1.0), stop=tf.constant(""))["completions"]
    print(json.dumps({"score": {k: v.numpy().tolist() for k, v in score.items()},
                      "completions": [c.decode("utf-8") for c in completions.numpy()],
                      "modules": sorted({m.split(".")[0] for m in sys.modules} & {"keras_hub", "keras_nlp", "tflm"})}))
""")


def learned(history):
    """History records without their timings."""
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_sec")} for r in history]


def config_for(tokenizer, steps=10):
    return small_config(data={"tokenizer": tokenizer, "vocab_size": VOCAB_SIZES[tokenizer]},
                        train={"steps": steps, "eval_every": 5, "eval_batches": 2},
                        runtime={"jit_compile": False})  # these runs test the tokenizer, not the compiler


@pytest.mark.parametrize("tokenizer", ["byte", "wordpiece", "sentencepiece"])  # char: tests/serving/test_export.py
def test_every_command_works_with_the_tokenizer(tmp_path, tokenizer):
    run_dir = train(config_for(tokenizer, steps=5), str(tmp_path / "run"))
    fingerprint = load_run(run_dir).tokenizer.fingerprint()
    train(config_for(tokenizer), run_dir)  # resumes with the run's own tokenizer
    history = runs.read_history(run_dir)
    if tokenizer == "sentencepiece":  # the one whose tokenizer is a model file of its own
        straight = train(config_for(tokenizer), str(tmp_path / "straight"))
        assert learned(history) == learned(runs.read_history(straight))  # resumed = uninterrupted, exactly
    assert [r["step"] for r in history] == [5, 10]
    assert all(np.isfinite(r["val_bits_per_byte"]) for r in history)
    run = load_run(run_dir)
    assert run.tokenizer.kind == tokenizer and run.tokenizer.fingerprint() == fingerprint

    scores = score_texts(run, TEXTS)
    completions = generate(run, PROMPTS, 20, temperature=0.0)
    assert all(np.isfinite(s["log_prob"]) for s in scores) and scores[1]["num_tokens"] == 0
    assert all(isinstance(c, str) for c in completions)

    version = export_run(run_dir, base=str(tmp_path / "saved_models"), name=tokenizer)
    with open(os.path.join(version, "assets.extra", "tflm_export.json"), encoding="utf-8") as f:
        described = json.load(f)
    assert described["tokenizer"]["type"] == tokenizer
    assert described["tokenizer"]["fingerprint"] == run.tokenizer.fingerprint()
    assert set(described["non_core_ops"]) <= set(run.tokenizer.non_core_ops)
    needs_text_ops = bool(described["non_core_ops"])
    assert needs_text_ops == (tokenizer in ("wordpiece", "sentencepiece"))

    done = subprocess.run([sys.executable, "-c", SERVE, version, "1" if needs_text_ops else "",
                           json.dumps([TEXTS, PROMPTS])], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["modules"] == []
    for key in ("log_prob", "bits_per_byte"):
        np.testing.assert_allclose(served["score"][key], [s[key] for s in scores], atol=1e-4, rtol=1e-5)
    assert served["score"]["num_tokens"] == [s["num_tokens"] for s in scores]
    assert served["completions"] == completions


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
    """As tflm 0.1's runs (tests/runs/test_compatibility.py), which have no store."""
    moved = copy_run(char_run, tmp_path)
    shutil.rmtree(os.path.join(moved, "store"))
    assert load_run(moved).tokenizer.fingerprint() == load_run(char_run).tokenizer.fingerprint()
