"""The training loop (tflm.training.controller) with stand-ins for the compiled steps and the
checkpoints, in seconds: evaluations and checkpoints come at their cadence (and at the end), each
evaluation appends one history record with every field the task reports, skipped non-finite
steps warn within train.max_nonfinite_steps and stop the run past it without saving, and Ctrl-C
or a preemption notice saves at the step reached. (Real runs: tests/training/test_train.py and
tests/training/test_divergence.py.)"""

import io
import json
import os
import re

import pytest

from conftest import small_config
from tflm.errors import Diverged, Interrupted, Preempted
from tflm.runs import run_dir as runs
from tflm.training.controller import Controller
from tflm.training.progress import Progress
from tflm.training.cluster import Worker

UNITS_PER_STEP = 256


class Scalar:
    """A counter read as the Trainer's variables are (`.numpy()`)."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value


class FakeMetrics:
    """The Trainer's summed training metrics: the mean loss of the steps since `reset`."""

    def __init__(self):
        self.losses = []

    def result(self):
        return {"loss": sum(self.losses) / max(len(self.losses), 1), "accuracy": 0.5}

    def reset(self):
        self.losses = []


class FakeTask:
    """What the Controller asks of the task: its unit, history fields and progress text."""

    unit, unit_shown = "tokens", "tok"

    def history_fields(self, train, val):
        return {"loss": train["loss"], "val_loss": val["loss"], "val_new_metric": val["new_metric"]}

    def log_text(self, record):
        return f"loss {record['loss']:.4f}  val_loss {record['val_loss']:.4f}"


class FakeTrainer:
    """Stands in for tflm.training.trainer.Trainer: step N's loss is N; the steps in `nonfinite_at`
    are skipped as a non-finite gradient is; `during_step` is called with each step number."""

    def __init__(self, step=0, nonfinite_at=(), during_step=lambda step: None):
        self.task, self.train_metrics = FakeTask(), FakeMetrics()
        self.step, self.nonfinite_at, self.during_step = step, set(nonfinite_at), during_step
        self.nonfinite_steps, self.first_nonfinite_step = Scalar(0), Scalar(-1)
        self.loops, self.evaluations = [], []  # (first step, steps) of each host call; steps evaluated at

    def train_steps(self, iterator, steps):
        self.loops.append((self.step, steps))
        for _ in range(steps):
            self.step += 1
            self.during_step(self.step)
            if self.step in self.nonfinite_at:
                self.nonfinite_steps.value += 1
                if self.first_nonfinite_step.value < 0:
                    self.first_nonfinite_step.value = self.step
            else:
                self.train_metrics.losses.append(float(self.step))

    def evaluate(self, iterator, batches):
        self.evaluations.append(self.step)
        return {"loss": self.step / 100, "new_metric": 7.0, "confusion": [[1, 0], [0, 1]]}


class PreemptionNotice:
    """PreemptionCheckpointHandler as the Controller uses it: when `preempted()`, every worker
    saves at the current step and exits through `exit_fn`."""

    def __init__(self, save, current_step, exit_fn, preempted):
        self.save, self.current_step, self.exit_fn, self.preempted = save, current_step, exit_fn, preempted

    def save_checkpoint_if_preempted(self):
        if self.preempted():
            self.save(self.current_step())
            self.exit_fn()


class FakeCheckpointer:
    """Records the steps saved instead of writing checkpoints."""

    def __init__(self, run_dir, preempted=lambda: False):
        self.shared_dir = os.path.join(run_dir, "checkpoints")
        self.saved, self.preempted = [], preempted

    def save(self, step):
        self.saved.append(step)

    def latest(self):
        return os.path.join(self.shared_dir, f"ckpt-{self.saved[-1]}") if self.saved else None

    def preemption_handler(self, cluster_resolver, current_step, exit_fn):
        return PreemptionNotice(self.save, current_step, exit_fn, self.preempted)

    def close(self):
        pass


def controller_for(run_dir, trainer, worker=Worker(), checkpointer=None, resume_command=None, **train):
    """A Controller over `trainer` with train settings `train` (10 steps, evaluating every 4)."""
    config = small_config(train={"steps": 10, "eval_every": 4, "steps_per_loop": 100, **train}).train
    progress = Progress(config.steps, UNITS_PER_STEP, stream=io.StringIO())
    return Controller(trainer, checkpointer or FakeCheckpointer(str(run_dir)), config, UNITS_PER_STEP, str(run_dir),
                      worker, progress, resume_command=resume_command)


def run_loop(run_dir, trainer, elapsed_before_s=0.0, **kwargs):
    """Run the Controller `controller_for` makes; returns its checkpointer."""
    controller = controller_for(run_dir, trainer, **kwargs)
    controller.run(iter(()), iter(()), 2, None, elapsed_before_s)
    return controller.checkpointer


def test_host_calls_stop_at_every_evaluation_checkpoint_and_the_end(tmp_path):
    trainer = FakeTrainer()
    checkpointer = run_loop(tmp_path, trainer, checkpoint_every=3)
    assert trainer.loops == [(0, 3), (3, 1), (4, 2), (6, 2), (8, 1), (9, 1)]
    assert trainer.evaluations == [4, 8, 10]
    assert checkpointer.saved == [3, 6, 9, 10]


def test_checkpoints_come_with_evaluations_by_default_and_loops_are_at_most_steps_per_loop(tmp_path):
    trainer = FakeTrainer()
    checkpointer = run_loop(tmp_path, trainer, steps_per_loop=3)
    assert trainer.loops == [(0, 3), (3, 1), (4, 3), (7, 1), (8, 2)]
    assert trainer.evaluations == [4, 8, 10] and checkpointer.saved == [4, 8, 10]


def test_each_evaluation_appends_a_record_with_every_field_the_task_reports(tmp_path, capsys):
    run_loop(tmp_path, FakeTrainer())
    history = runs.read_history(str(tmp_path))
    assert [list(r) for r in history] == [["step", "tokens_seen", "elapsed_s", "loss", "val_loss", "val_new_metric",
                                           "tokens_per_sec"]] * 3
    assert [(r["step"], r["tokens_seen"], r["loss"], r["val_loss"], r["val_new_metric"]) for r in history] == [
        (4, 4 * UNITS_PER_STEP, 2.5, 0.04, 7.0), (8, 8 * UNITS_PER_STEP, 6.5, 0.08, 7.0),
        (10, 10 * UNITS_PER_STEP, 9.5, 0.1, 7.0)]  # the mean loss of the period's steps
    assert all(r["tokens_per_sec"] > 0 and r["elapsed_s"] >= 0 for r in history)
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:3] for line in out[:3]] == [
        ["step 4/10", "loss 2.5000", "val_loss 0.0400"], ["step 8/10", "loss 6.5000", "val_loss 0.0800"],
        ["step 10/10", "loss 9.5000", "val_loss 0.1000"]]
    assert all(line.endswith(" tok/s") for line in out[:3])
    assert out[3] == f"done: step 10; checkpoints in {tmp_path}/checkpoints"
    assert os.listdir(tmp_path / "tensorboard")


def test_a_resumed_loop_starts_at_the_restored_step_and_adds_the_time_before(tmp_path):
    trainer = FakeTrainer(step=6)
    checkpointer = run_loop(tmp_path, trainer, elapsed_before_s=1000.0)
    assert trainer.loops == [(6, 2), (8, 2)] and checkpointer.saved == [8, 10]
    history = runs.read_history(str(tmp_path))
    assert [r["step"] for r in history] == [8, 10] and history[0]["loss"] == 7.5
    assert all(r["elapsed_s"] >= 1000.0 for r in history)


def test_other_workers_train_alike_but_write_no_history(tmp_path, capsys):
    trainer = FakeTrainer()
    checkpointer = run_loop(tmp_path, trainer, worker=Worker(index=1, num_workers=2))
    assert trainer.evaluations == [4, 8, 10] and checkpointer.saved == [4, 8, 10]  # every worker saves, together
    assert os.listdir(tmp_path) == []
    assert capsys.readouterr().out.splitlines()[-1] == "done: step 10"


def test_skipped_non_finite_steps_warn_within_the_budget_and_stop_past_it_without_saving(tmp_path, capsys):
    trainer = FakeTrainer(nonfinite_at=(5, 7))
    checkpointer = FakeCheckpointer(str(tmp_path))
    with pytest.raises(Diverged) as stopped:
        run_loop(tmp_path, trainer, checkpointer=checkpointer, steps_per_loop=1, eval_every=2, max_nonfinite_steps=1)
    assert str(stopped.value) == (
        "the loss or gradient became NaN/inf at step 5 (2 such step(s), train.max_nonfinite_steps=1); stopped at "
        f"step 7 without saving; the last finite checkpoint is {tmp_path}/checkpoints/ckpt-6; lower "
        "train.learning_rate, or resume with a larger train.max_nonfinite_steps to skip the bad batches")
    assert checkpointer.saved == [2, 4, 6]
    assert [r["step"] for r in runs.read_history(str(tmp_path))] == [2, 4, 6]
    assert "warning: step 5: NaN/inf gradient, update skipped (1 of at most 1)" in capsys.readouterr().out.splitlines()


def test_a_run_started_without_a_run_dir_names_it_when_it_diverges(tmp_path):
    with pytest.raises(Diverged, match=re.escape(f"skip the bad batches (its run directory: {tmp_path})") + "$"):
        run_loop(tmp_path, FakeTrainer(nonfinite_at=(3,)), resume_command="python -m tflm.train --run-dir x")


def test_ctrl_c_saves_at_the_step_reached_and_says_how_to_resume(tmp_path, capsys):
    trainer = FakeTrainer()
    controller = controller_for(tmp_path, trainer, steps_per_loop=3)
    trainer.during_step = lambda step: step == 5 and controller._first_ctrl_c()  # as the signal's watcher does
    with pytest.raises(Interrupted) as stopped:
        controller.run(iter(()), iter(()), 2, None, 0.0)
    assert controller.checkpointer.saved == [4, 7] and trainer.step == 7  # the step its host call ended at
    assert str(stopped.value) == (f"Ctrl-C at step 7; checkpoint saved ({tmp_path}/checkpoints/ckpt-7); "
                                  "run the same command to resume")
    assert "Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)" in capsys.readouterr().out


def test_a_preemption_notice_saves_at_the_step_reached_on_every_worker(tmp_path):
    trainer = FakeTrainer()
    checkpointer = FakeCheckpointer(str(tmp_path), preempted=lambda: trainer.step >= 5)
    with pytest.raises(Preempted) as stopped:
        run_loop(tmp_path, trainer, checkpointer=checkpointer, steps_per_loop=3,
                 resume_command="tflm train --run-dir r")
    assert checkpointer.saved == [4, 7] and trainer.step == 7
    assert str(stopped.value) == ("SIGTERM received; checkpoint saved at step 7 on every worker; "
                                  "resume with: tflm train --run-dir r")
    assert [json.loads(line)["step"] for line in open(runs.history_path(str(tmp_path)))] == [4]
