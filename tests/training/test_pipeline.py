"""Micro-batches and pipeline stages train the same run as one device.

Every comparison: the same config and global batch, dropout on, per-step training losses and every
final weight within 1e-5 (relative) of the one-device run's. The pipeline runs use logical CPUs
in their own processes (a process splits its CPU once).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, labelled_rows, run_tflm, small_config, write_config, write_csv, write_jsonl
from tflm.config import updated
from tflm.runs import run_dir as runs
from tflm.training.pipeline import (BACKWARD, FORWARD, balanced_cut, bubble_fraction, one_f_one_b_order,
                                    stage_orders)
from tflm.training.train import train

TOLERANCE = 1e-5


def pipeline_config(model_type="transformer", **sections):
    """Two layers with dropout, a loss per step, a constant learning rate after warm-up (so a run
    stopped early and resumed with more train.steps continues the uninterrupted run)."""
    config = small_config(model_type, model={"dropout": 0.2, "num_layers": 2},
                          train={"steps": 6, "eval_every": 1, "eval_batches": 1, "global_batch_size": 8,
                                 "warmup_steps": 2, "min_learning_rate_ratio": 1.0})
    return updated(config, **sections)


def losses(run_dir):
    """{step: training loss} of a run's history."""
    return {r["step"]: r["loss"] for r in runs.read_history(run_dir)}


def weights(run_dir):
    """[(variable path, value)] of every weight of a run's newest checkpoint, loaded into its model."""
    from tflm.serving.loading import load_run

    return [(v.path, np.asarray(v.numpy())) for v in load_run(run_dir).model.weights]


def assert_same_run(run_dir, reference):
    """Per-step losses and final weights agree to TOLERANCE (relative)."""
    got, expected = losses(run_dir), losses(reference)
    assert got.keys() == expected.keys() and got
    for step in expected:
        assert abs(got[step] - expected[step]) <= TOLERANCE * abs(expected[step]), (step, got, expected)
    a, b = weights(run_dir), weights(reference)
    assert len(a) == len(b) > 0
    for (_, got_value), (path, value) in zip(a, b):  # paths differ by Keras' per-process name counters
        if path.endswith("key/bias"):
            # Its gradient is 0 in exact arithmetic (softmax ignores a shift of every key's score),
            # so AdamW's normalisation turns rounding noise into updates of random sign: it moves by
            # noise alone (about 1e-6 here), and changes no output.
            continue
        scale = float(np.abs(value).max())
        assert got_value.shape == value.shape and float(np.abs(got_value - value).max()) <= TOLERANCE * scale, path


def train_in_process(config, run_dir):
    return train(config, str(run_dir))


def train_subprocess(tmp_path, name, config, *extra):
    """Train `config` in a fresh process (its own logical CPUs) into tmp_path/name."""
    run_dir = str(tmp_path / name)
    result = run_tflm("train", "--config", write_config(tmp_path / f"{name}.yaml", config), "--run-dir", run_dir,
                      *extra, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout


def staged(config, stages=2, replicas=1, microbatches=2, schedule="1f1b"):
    return updated(config, runtime={"pipeline_stages": stages, "logical_cpus": stages * replicas,
                                    "pipeline_schedule": schedule},
                   train={"microbatches": microbatches})


def split(config, shards=2, stages=1, replicas=1, microbatches=1):
    """`config` with each stage's blocks split over `shards` logical CPUs (runtime.tensor_parallel)."""
    return updated(config, runtime={"tensor_parallel": shards, "pipeline_stages": stages,
                                    "logical_cpus": shards * stages * replicas},
                   train={"microbatches": microbatches})


# --- the plan: cut and schedules (fast) -----------------------------------------------------------

def test_the_cut_balances_weights_and_keeps_the_chain_in_order():
    sizes = [300, 100, 100, 100, 100, 100, 100, 100, 100, 300]  # embedding, 8 blocks, head
    for stages in (1, 2, 4):
        cut = balanced_cut(sizes, stages)
        assert cut[0][0] == 0 and cut[-1][1] == len(sizes)
        assert all(end == next_first for (_, end), (next_first, _) in zip(cut, cut[1:]))
        assert max(sum(sizes[a:b]) for a, b in cut) <= 1.25 * sum(sizes) / stages
    assert balanced_cut([5, 1, 1, 5], 2) == [(0, 2), (2, 4)]
    with pytest.raises(ValueError):
        balanced_cut([1, 2], 3)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages,microbatches", [(2, 1), (2, 4), (4, 8), (3, 2)])
def test_every_schedule_runs_each_microbatch_forward_then_backward_once(schedule, stages, microbatches):
    for order in stage_orders(schedule, stages, microbatches):
        assert sorted(order) == sorted([(FORWARD, m) for m in range(microbatches)]
                                       + [(BACKWARD, m) for m in range(microbatches)])
        assert all(order.index((FORWARD, m)) < order.index((BACKWARD, m)) for m in range(microbatches))


def test_1f1b_holds_at_most_stages_microbatches_and_gpipe_holds_all():
    def most_held(order):
        held = peak = 0
        for kind, _ in order:
            held += 1 if kind == FORWARD else -1
            peak = max(peak, held)
        return peak

    for k in range(4):
        assert most_held(one_f_one_b_order(k, 4, 8)) == 4 - k
    assert most_held(stage_orders("gpipe", 4, 8)[0]) == 8
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------

@pytest.mark.parametrize("setting,message", [
    ("runtime.pipeline_stages=5", "runtime.pipeline_stages=5 is more than the 3 pieces the model can be cut into"),
    ("train.microbatches=3", "train.microbatches=3 does not divide train.global_batch_size=8"),
    ("runtime.pipeline_schedule=zigzag", "runtime.pipeline_schedule"),
])
def test_impossible_pipeline_settings_are_one_line_errors(tmp_path, setting, message):
    assert_refused(tmp_path, [setting], message)


def assert_refused(tmp_path, settings, message):
    """Training small_config() with `settings` fails with `message` alone, exit 2, nothing written."""
    config = write_config(tmp_path / "c.yaml", small_config())
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = run_tflm("train", "--config", config, *args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("settings,message", [
    (["runtime.pipeline_stages=2"], "runtime.pipeline_stages=2 needs a multiple of 2 devices per worker"),
    (["runtime.pipeline_stages=2", "runtime.logical_cpus=3"], "found 3 CPU(s)"),
    (["runtime.pipeline_stages=2", "runtime.logical_cpus=4", "train.microbatches=8"],
     "train.microbatches=8 does not divide a replica's share of the global batch (8 / 2 replicas = 4)"),
])
def test_too_few_devices_or_microbatches_past_a_replica_share_stop_before_anything_is_written(
        tmp_path, settings, message):
    assert_refused(tmp_path, settings, message)


# --- equal to one device -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One-device runs of pipeline_config(model_type), made once per model type."""
    made = {}

    def get(model_type):
        if model_type not in made:
            made[model_type] = train_in_process(pipeline_config(model_type),
                                                tmp_path_factory.mktemp(f"one_device_{model_type}") / "run")
        return made[model_type]

    return get


@pytest.mark.slow
def test_four_microbatches_train_as_one_batch(tmp_path, references):
    run_dir = train_in_process(pipeline_config(train={"microbatches": 4}), tmp_path / "run")
    assert_same_run(run_dir, references("transformer"))


@pytest.mark.slow
@pytest.mark.parametrize("model_type,schedule,microbatches", [
    ("transformer", "gpipe", 4), ("lstm", "gpipe", 2), ("lstm", "1f1b", 4)])  # Transformer 1F1B: test_tensor_parallel
def test_two_stages_train_as_one_device(tmp_path, references, model_type, schedule, microbatches):
    config = staged(pipeline_config(model_type, runtime={"pipeline_trace_steps": 2}), microbatches=microbatches,
                    schedule=schedule)
    run_dir, out = train_subprocess(tmp_path, "staged", config)
    assert "pipeline of 2 stages" in out and "stage 1 on /device:CPU:1" in out
    assert_same_run(run_dir, references(model_type))  # the traced steps too
    assert_trace_follows_the_schedule(run_dir, schedule, microbatches)


def assert_trace_follows_the_schedule(run_dir, schedule, microbatches):
    """Each traced step holds every stage's work in its schedule's order, and (once compiled) no
    work starts before what it receives from the other stage is done, within the few milliseconds
    a time stamp may lag behind the work it follows."""
    from tflm.runs.pipeline_trace import read_traces

    traces = read_traces(run_dir)
    assert [t["step"] for t in traces] == [1, 2]
    for trace in traces:
        events = {(e["stage"], e["kind"], e["microbatch"]): e for e in trace["events"]}
        for k, order in enumerate(stage_orders(schedule, 2, microbatches)):
            starts = [events[(k, kind, m)]["start_s"] for kind, m in order]
            assert starts == sorted(starts)
    for m in range(microbatches):  # the last traced step: the first one also times compilation
        assert events[(1, FORWARD, m)]["start_s"] >= events[(0, FORWARD, m)]["end_s"] - 5e-3
        assert events[(0, BACKWARD, m)]["start_s"] >= events[(1, BACKWARD, m)]["end_s"] - 5e-3


@pytest.mark.slow
def test_two_workers_of_two_stages_preempted_save_exit_42_and_resume_to_the_uninterrupted_run(tmp_path):
    config = staged(pipeline_config(train={"steps": 12}), microbatches=2)
    reference = train_in_process(pipeline_config(train={"steps": 12}), tmp_path / "one_device")
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "tflm.launch", "--workers", "2", "--", "--config",
               write_config(tmp_path / "c.yaml", config), "--run-dir", run_dir]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(r["step"] >= 3 for r in runs.read_history(run_dir)):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 42, out[-3000:]
    assert "checkpoint saved at step" in out
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_a_classifier_in_two_stages_of_two_shards_from_a_split_language_model_trains_as_one_device(tmp_path):
    from tflm.serving.classifying import classify_texts
    from tflm.serving.loading import load_run

    source, _ = train_subprocess(tmp_path, "source", split(pipeline_config(train={"steps": 3})))
    train_path = write_csv(tmp_path / "train.csv", labelled_rows(64, 0))
    val_path = write_jsonl(tmp_path / "val.jsonl", labelled_rows(16, 1))
    config = pipeline_config(data={"source": "files", "paths": [train_path], "validation_paths": [val_path]},
                             task={"type": "classify", "freeze_backbone_steps": 2}, train={"init_from": source})
    reference = train_in_process(config, tmp_path / "one_device")
    run_dir, out = train_subprocess(tmp_path, "split", split(config, stages=2))
    assert "pipeline of 2 stages x 2 shards" in out
    assert_same_run(run_dir, reference)
    texts = ["abc de", "fgh ij", "klm no"]
    for got, expected in zip(classify_texts(load_run(run_dir), texts), classify_texts(load_run(reference), texts)):
        assert got["label"] == expected["label"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], rel=TOLERANCE)


WITH_A_TRAINER = """
import json, sys
from tflm.training.strategy import split_cpu
from tflm.config import Config
config = Config.from_dict(json.loads(sys.argv[1]))
split_cpu(config.runtime.logical_cpus)
from tflm.data.tokenizers.char import CharTokenizer
from tflm.tasks import task_for
from tflm.training.cluster import Worker
from tflm.training.pipeline import pipeline_layout
from tflm.training.train import pipeline_trainer

task = task_for(config)
task.tokenizer = CharTokenizer(list("abcdefgh"))
task.byte_lengths = None
trainer = pipeline_trainer(config, task, pipeline_layout(config.runtime, Worker()), Worker(), None, "")
replica = trainer.replicas[0]
"""


def inspect_trainer(config, script):
    """What `script` prints (JSON, its last line), run in a fresh process after WITH_A_TRAINER has
    built `trainer`, the PipelineTrainer of `config`, and `replica`, its replica 0."""
    result = subprocess.run([sys.executable, "-c", WITH_A_TRAINER + script, json.dumps(config.to_dict())], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


PLACEMENT_CHECK = """
placed = []
for k, stage in enumerate(trainer.stages[0]):
    for layer in (layer for piece in stage.pieces for layer in piece.layers):
        placed += [(k, v.path, v.value.device) for v in replica.layer_state(layer)]
print(json.dumps({"placed": placed, "count": len(replica.model.variables), "bytes": trainer.device_bytes()}))
"""


@pytest.mark.slow
def test_every_weight_and_optimizer_slot_of_stage_k_lives_on_device_k():
    config = pipeline_config(model={"num_layers": 4}, runtime={"pipeline_stages": 2, "logical_cpus": 2})
    found = inspect_trainer(config, PLACEMENT_CHECK)
    placed = found["placed"]
    assert len({path for _, path, _ in placed if "momentum" not in path and "velocity" not in path}) == found["count"]
    assert {k for k, _, _ in placed} == {0, 1}
    for k, path, device in placed:
        assert device.endswith(f"/device:CPU:{k}"), (k, path, device)
    first, second = found["bytes"]
    assert max(first, second) <= 1.25 * (first + second) / 2
