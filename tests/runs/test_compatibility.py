"""Run directories written by an older tflm still load, score, generate and resume."""

import json
import os
import shutil

import pytest

from conftest import REPO, run_tflm
from tflm.runs import run_dir as runs
from tflm.serving.decoding import generate
from tflm.serving.loading import load_run
from tflm.serving.scoring import score_texts

V0_1 = os.path.join(REPO, "tests", "fixtures", "v0_1")
with open(os.path.join(V0_1, "reference.json"), encoding="utf-8") as f:
    REFERENCE = json.load(f)


@pytest.mark.parametrize("model_type", sorted(REFERENCE))
def test_a_tflm_0_1_run_scores_and_generates_as_it_did(model_type):
    expected = REFERENCE[model_type]
    run = load_run(os.path.join(V0_1, model_type))
    (scored,) = score_texts(run, [expected["score"]["text"]])
    assert scored["num_tokens"] == expected["score"]["num_tokens"]
    assert scored["log_prob"] == pytest.approx(expected["score"]["log_prob"], abs=1e-3)
    assert generate(run, [expected["prompt"]], expected["max_new_tokens"], temperature=0.0) == expected["greedy"]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(REFERENCE))
def test_a_tflm_0_1_run_resumes(tmp_path, model_type):
    run_dir = str(tmp_path / model_type)
    shutil.copytree(os.path.join(V0_1, model_type), run_dir)
    result = run_tflm("train", "--run-dir", run_dir, "--config", os.path.join(run_dir, "config.yaml"),
                      "--set", "train.steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "at step 4" in result.stdout
    assert [r["step"] for r in runs.read_history(run_dir)] == [2, 4, 6]
