"""Every command with every tokenizer: train, resume exactly, score, generate, and an export that a
process importing only TensorFlow (and tensorflow-text where the tokenizer needs its ops) serves
as tflm does in Python."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import small_config
from tflm.runs import run_dir as runs
from tflm.serving.export import export_run
from tflm.serving.decoding import generate
from tflm.serving.loading import load_run
from tflm.serving.scoring import score_texts
from tflm.training.train import train

pytestmark = pytest.mark.slow  # a run and an export per tokenizer (about 30 s each)

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
                        train={"steps": steps, "eval_every": 5, "eval_batches": 2})


@pytest.mark.parametrize("tokenizer", ["byte", "wordpiece", "sentencepiece"])  # char: tests/test_export.py
def test_every_command_works_with_the_tokenizer(tmp_path, tokenizer):
    run_dir = train(config_for(tokenizer, steps=5), str(tmp_path / "run"))
    fingerprint = load_run(run_dir).tokenizer.fingerprint()
    train(config_for(tokenizer), run_dir)  # resumes with the run's own tokenizer
    straight = train(config_for(tokenizer), str(tmp_path / "straight"))
    history = runs.read_history(run_dir)
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
