"""Checkpoints, in seconds on a tiny Keras model: the files present are the ledger (listed by step,
whatever the state file says), a damaged or non-finite newest checkpoint falls back to the one
before it and is moved aside (never overwritten), and when none can be restored the run is an
error, never a fresh start. (Resuming real runs: tests/runs/test_run_dir.py.)"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.errors import TflmError
from tflm.runs.checkpoint import Checkpointer, checkpoint_step, file_problem, list_checkpoints, newest_usable
from tflm.training.cluster import Worker

STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's


def touch(directory, *names):
    """Create empty files `names` in `directory`."""
    for name in names:
        open(os.path.join(directory, name), "w").close()


def test_checkpoints_are_listed_by_step_from_their_index_files(tmp_path):
    touch(tmp_path, "ckpt-10.index", "ckpt-2.index", "ckpt-1.index", "ckpt-10.data-00000-of-00001",
          "ckpt-3.data-00000-of-00001", "ckpt-x.index", "ckpt-4.index.tmp", "my-ckpt-5.index", STATE_FILE)
    (tmp_path / "ckpt-6_temp").mkdir()  # what an interrupted save leaves
    assert list_checkpoints(str(tmp_path)) == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 10)]
    assert [checkpoint_step(p) for p in list_checkpoints(str(tmp_path))] == [1, 2, 10]
    assert checkpoint_step("/runs/my-run-7/checkpoints/ckpt-120") == 120
    assert list_checkpoints(str(tmp_path / "missing")) == []


def test_newest_usable_is_the_newest_without_a_problem_and_names_the_newer_ones():
    paths = ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    problems = {"ckpt-4": "truncated", "ckpt-3": "it holds non-finite weights"}
    assert newest_usable(paths, problems.get) == ("ckpt-2", [("ckpt-4", "truncated"),
                                                             ("ckpt-3", "it holds non-finite weights")])
    assert newest_usable(paths, lambda path: None) == ("ckpt-4", [])
    assert newest_usable(paths[2:], problems.get) == (None, [("ckpt-4", "truncated"),
                                                             ("ckpt-3", "it holds non-finite weights")])
    assert newest_usable([], problems.get) == (None, [])
    asked = []
    newest_usable(paths, lambda path: asked.append(path) or problems.get(path))
    assert asked == ["ckpt-4", "ckpt-3", "ckpt-2"]  # older ones are never read


def truncate_half(prefix):
    """Cut a checkpoint's data file in half, as a crash or a full disk would."""
    data = f"{prefix}.data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)


def test_file_problem_reads_every_value_back(tmp_path):
    weights, step = tf.Variable([1.0, 2.0]), tf.Variable(3, dtype=tf.int64)
    good = tf.train.Checkpoint(weights=weights, step=step).write(str(tmp_path / "good"))
    assert file_problem(good) is None
    weights.assign([1.0, np.inf])
    assert file_problem(tf.train.Checkpoint(weights=weights, step=step).write(str(tmp_path / "inf"))) == \
        "it holds non-finite weights"
    weights.assign([1.0, 2.0])
    damaged = tf.train.Checkpoint(weights=weights, step=step).write(str(tmp_path / "damaged"))
    truncate_half(damaged)
    for path in (damaged, str(tmp_path / "missing")):
        problem = file_problem(path)
        assert problem and "\n" not in problem and len(problem) <= 300


def tiny_checkpointer(run_dir, worker=Worker()):
    """(a Checkpointer of `run_dir` over a freshly initialised tiny model and optimizer, the model)."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return Checkpointer(str(run_dir), worker, model, optimizer, max_to_keep=5), model


class Saved:
    """A run directory whose tiny model was saved at steps 1, 2 and 3, its kernel filled with the
    step number: restoring tells which checkpoint it came from."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        checkpointer, model = tiny_checkpointer(run_dir)
        checkpointer.restore_latest()
        for step in (1, 2, 3):
            model.layers[0].kernel.assign(np.full((3, 2), step, np.float32))
            checkpointer.save(step)
        checkpointer.close()
        self.directory = checkpointer.shared_dir

    def restore(self, worker=Worker()):
        """(the path restored, the kernel value it restored) by a new Checkpointer for `worker`."""
        checkpointer, model = tiny_checkpointer(self.run_dir, worker)
        try:
            path = checkpointer.restore_latest()
            return path, float(model.layers[0].kernel.numpy()[0, 0])
        finally:
            checkpointer.close()

    def files(self):
        """The relative paths of the files under the checkpoint directory."""
        return sorted(os.path.relpath(os.path.join(d, f), self.directory)
                      for d, _, names in os.walk(self.directory) for f in names)


def test_the_newest_checkpoint_is_restored(tmp_path, capsys):
    saved = Saved(tmp_path)
    assert saved.restore() == (os.path.join(saved.directory, "ckpt-3"), 3.0)
    assert capsys.readouterr().err == ""


def test_a_damaged_newest_checkpoint_falls_back_and_is_moved_aside(tmp_path, capsys):
    saved = Saved(tmp_path)
    truncate_half(os.path.join(saved.directory, "ckpt-3"))
    capsys.readouterr()
    assert saved.restore() == (os.path.join(saved.directory, "ckpt-2"), 2.0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"tflm: warning: cannot restore {saved.directory}/ckpt-3: ")
    assert err[1] == f"tflm: warning: resuming from ckpt-2; moved ckpt-3 to {saved.directory}/damaged"
    assert sorted(os.listdir(os.path.join(saved.directory, "damaged"))) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert [os.path.basename(p) for p in list_checkpoints(saved.directory)] == ["ckpt-1", "ckpt-2"]
    assert tf.train.latest_checkpoint(saved.directory) == os.path.join(saved.directory, "ckpt-2")
    assert saved.restore() == (os.path.join(saved.directory, "ckpt-2"), 2.0)  # and again, without warnings
    assert capsys.readouterr().err == ""


def test_a_checkpoint_with_non_finite_weights_is_never_restored(tmp_path, capsys):
    saved = Saved(tmp_path)
    nan = tf.train.load_checkpoint(os.path.join(saved.directory, "ckpt-3"))
    names = sorted(nan.get_variable_to_dtype_map())
    values = [np.full_like(v, np.nan) if np.asarray(v).dtype.kind == "f" else v for v in map(nan.get_tensor, names)]
    tf.raw_ops.SaveV2(prefix=os.path.join(saved.directory, "ckpt-4"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=values)  # beside the others, as a save would
    capsys.readouterr()
    assert saved.restore() == (os.path.join(saved.directory, "ckpt-3"), 3.0)
    assert f"cannot restore {saved.directory}/ckpt-4: it holds non-finite weights" in capsys.readouterr().err
    assert "ckpt-4.index" in os.listdir(os.path.join(saved.directory, "damaged"))


def test_a_lost_state_file_still_restores_the_newest(tmp_path):
    saved = Saved(tmp_path)
    os.remove(os.path.join(saved.directory, STATE_FILE))
    assert saved.restore() == (os.path.join(saved.directory, "ckpt-3"), 3.0)
    assert tf.train.latest_checkpoint(saved.directory) == os.path.join(saved.directory, "ckpt-3")


def test_another_worker_falls_back_too_but_moves_nothing(tmp_path, capsys):
    saved = Saved(tmp_path)
    truncate_half(os.path.join(saved.directory, "ckpt-3"))
    before = saved.files()
    assert saved.restore(Worker(index=1, num_workers=2)) == (os.path.join(saved.directory, "ckpt-2"), 2.0)
    assert "cannot restore" in capsys.readouterr().err
    assert saved.files() == before  # only the chief changes the run directory


def test_when_no_checkpoint_can_be_restored_it_is_an_error_and_nothing_moves(tmp_path):
    saved = Saved(tmp_path)
    for step in (1, 2, 3):
        truncate_half(os.path.join(saved.directory, f"ckpt-{step}"))
    before = saved.files()
    with pytest.raises(TflmError) as raised:
        saved.restore()
    message = str(raised.value)
    assert message.startswith(f"no checkpoint in {saved.directory} can be restored (the newest, ckpt-3: ")
    assert message.endswith("restore the files from a copy, or start over with --restart") and "\n" not in message
    assert saved.files() == before


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    checkpointer, _ = tiny_checkpointer(tmp_path)
    assert checkpointer.restore_latest() is None
    checkpointer.save(1)
    assert checkpointer.latest() == str(tmp_path / "checkpoints" / "ckpt-1")
    checkpointer.close()
