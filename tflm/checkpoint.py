"""Checkpoints of model, optimizer and step, written by the chief and restored by every task.

As in TensorFlow's multi-worker guide, every task saves (saving can involve collectives), but only
the chief saves into the run directory; the other tasks save into temporary directories that they
delete. Every task restores from the chief's directory, so it must be on a shared filesystem when
the tasks run on different hosts.
"""

import os
import shutil
import tempfile

import tensorflow as tf


def checkpoint_dir(run_dir):
    """Where the chief keeps checkpoints."""
    return os.path.join(run_dir, "checkpoints")


class Checkpointer:
    """A tf.train.CheckpointManager per task over tf.train.Checkpoint(model, optimizer)."""

    def __init__(self, run_dir, task, model, optimizer, max_to_keep):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.shared_dir = checkpoint_dir(run_dir)
        self._private_dir = None if task.is_chief else tempfile.mkdtemp(prefix=f"tflm-{task.type}{task.index}-")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._private_dir or self.shared_dir, max_to_keep=max_to_keep
        )

    def restore_latest(self):
        """Restore the chief's latest checkpoint; returns its path, or None to start fresh."""
        path = tf.train.latest_checkpoint(self.shared_dir)
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self, step):
        """Save as checkpoint number `step` (every task must call this together)."""
        return self.manager.save(checkpoint_number=step)

    def close(self):
        """Remove a non-chief task's temporary checkpoint directory."""
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
