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
        # Keras keeps dropout's RNG state in SeedGenerator variables that tf.train.Checkpoint does
        # not reach through the model; saving them makes a resumed run draw the same masks.
        rng_states = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, rng_states=rng_states)
        self.shared_dir = checkpoint_dir(run_dir)
        self._handler_dir = None
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

    def preemption_handler(self, cluster_resolver, current_step, exit_fn):
        """A PreemptionCheckpointHandler: on SIGTERM to any worker, every worker saves through
        this Checkpointer at the same step (`current_step()`), then calls `exit_fn`.

        The handler is given an empty checkpoint of its own to manage. It restores its run
        counter from the checkpoint it manages, and a counter restored on the chief but not on
        the other workers (whose write directories are temporary) would make them disagree on the
        step to save at. Counting from zero in every process keeps them in step, because every
        process starts from the same restored step.
        """
        self._handler_dir = tempfile.mkdtemp(prefix="tflm-preemption-")
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(), self._handler_dir, max_to_keep=1)
        return tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver, manager,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=exit_fn, save_fn=lambda *_, **__: self.save(current_step())
            ),
        )

    def close(self):
        """Remove the temporary directories (a non-chief task's checkpoints, the handler's)."""
        for directory in (self._private_dir, self._handler_dir):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        self._private_dir = self._handler_dir = None
