"""Checkpoints of model, optimizer and step, written by the chief and restored by every task.

As in TensorFlow's multi-worker guide, every task saves (saving can involve collectives), but only
the chief saves into the run directory; the other tasks save into temporary directories that they
delete. Every task restores from the chief's directory, so it must be on a shared filesystem when
the tasks run on different hosts.

The checkpoint files themselves are the ledger, not CheckpointManager's `checkpoint` state file:
restoring lists `ckpt-N.index` files and takes the newest one that reads back whole and finite, so
a lost or truncated state file never turns a resume into a fresh start, and a damaged newest
checkpoint falls back to the one before it (moved aside, with a warning, never overwritten).
Nothing non-finite is ever saved.
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from tflm import atomic
from tflm.errors import Diverged, TflmError
from tflm.lazy import tf
from tflm.models.build import checkpointed
from tflm.runs import run_dir as runs

CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def checkpoint_dir(run_dir):
    """Where the chief keeps checkpoints."""
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(directory):
    """Checkpoint prefixes (".../ckpt-N") in `directory`, oldest first, from the files present."""
    numbered = [(int(m.group(1)), m.group(0)[: -len(".index")])
                for m in map(CHECKPOINT_INDEX.match, atomic.listdir(directory)) if m]
    return [os.path.join(directory, name) for _, name in sorted(numbered)]


def trained_checkpoints(run_dir, named=None):
    """The checkpoints of the run in `run_dir`, oldest first; a TflmError, naming the run as
    `named` (default: its path), if it is no run directory or has no checkpoint yet."""
    named = named or run_dir
    if not runs.is_run_dir(run_dir):
        raise TflmError(f"{named} is not a tflm run directory (no config.yaml and vocab.json)")
    checkpoints = list_checkpoints(checkpoint_dir(run_dir))
    if not checkpoints:
        raise TflmError(f"{named} has no checkpoint yet; train it first (python -m tflm.train --run-dir {run_dir})")
    return checkpoints


def checkpoint_step(path):
    """N of ".../ckpt-N"."""
    return int(path.rsplit("-", 1)[1])


def newest_usable(paths, problem_of):
    """The newest of `paths` (oldest first) in which `problem_of(path)` finds nothing wrong (None if
    there is none), and the [(path, problem)] of the newer ones, newest first."""
    problems = []
    for path in reversed(paths):
        problem = problem_of(path)
        if problem is None:
            return path, problems
        problems.append((path, problem))
    return None, problems


def file_problem(path):
    """None if every value in checkpoint `path` reads back whole and finite (read from the files,
    without a model), else what is wrong with it."""
    try:
        reader = tf.train.load_checkpoint(path)
        # Every value, not only those under "model/": a checkpoint keeps a variable under the first
        # path that reaches it, and some layers' weights are first reached through the optimizer.
        for name, dtype in reader.get_variable_to_dtype_map().items():
            value = reader.get_tensor(name)
            if dtype.is_floating and not np.isfinite(value).all():
                return "it holds non-finite weights"
    except Exception as error:  # a damaged file raises DataLossError, OutOfRange, IndexError, ...
        return first_line(error)
    return None


def first_line(error):
    """The first line of an exception's message (at most 300 characters), for a one-line warning."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def all_finite(variables):
    """Whether every value of `variables` is finite (a scalar bool tensor)."""
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in floats]) if floats else tf.constant(True)


WRITE_FAILURES = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|Permission denied"
                            r"|File too large", re.IGNORECASE)


def write_failure(error):
    """What stopped a checkpoint from being written (the line naming it), if `error` is a
    filesystem's (a full disk, no permission: OSError, or TensorFlow's ResourceExhaustedError
    and the like); None for anything else, such as a lost peer, which is reported elsewhere."""
    text = first_line(error)
    if isinstance(error, OSError):
        return error.strerror or text
    found = WRITE_FAILURES.search(text)
    if isinstance(error, (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)) or (
            isinstance(error, tf.errors.OpError) and found):
        return found.group(0) if found else text
    return None


class Checkpointer:
    """A tf.train.CheckpointManager per task over tf.train.Checkpoint(model, optimizer)."""

    def __init__(self, run_dir, task, model, optimizer, max_to_keep, extra=None, before_save=None):
        """`extra`: more {name: variable} to save beside the model and optimizer; a checkpoint
        written before one of them existed still restores (it keeps its initial value).
        `before_save()`: called first by every save (a model-parallel trainer gathers its shards)."""
        # Keras keeps dropout's RNG state in SeedGenerator variables that tf.train.Checkpoint does
        # not reach through the model; saving them makes a resumed run draw the same masks.
        rng_states = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
        saved = checkpointed(model)
        self._required = tf.train.Checkpoint(model=saved, optimizer=optimizer, rng_states=rng_states)
        self._optional = tf.train.Checkpoint(**(extra or {}))
        self.checkpoint = tf.train.Checkpoint(model=saved, optimizer=optimizer, rng_states=rng_states,
                                              **(extra or {}))
        self.variables = list(model.variables) + list(optimizer.variables)
        self.run_dir, self.shared_dir = run_dir, checkpoint_dir(run_dir)
        self.is_chief, self.max_to_keep = task.is_chief, max_to_keep
        self._handler_dir = None
        self._private_dir = None if task.is_chief else tempfile.mkdtemp(prefix=f"tflm-{task.type}{task.index}-")
        # No AutoGraph (plain Python): it cannot always find a lambda's source and warns about it.
        self._finite = tf.function(lambda: all_finite(self.variables), autograph=False)
        self._before_save = before_save or (lambda: None)
        self.manager = None

    def restore_latest(self):
        """Restore the newest checkpoint that reads back whole and finite; returns its path, or
        None when there is none. Newer damaged ones are moved aside with a warning; a TflmError
        if checkpoints exist and none of them can be read."""
        candidates = list_checkpoints(self.shared_dir)
        path, problems = newest_usable(candidates, self._try_restore)
        for damaged, problem in problems:
            print(f"tflm: warning: cannot restore {damaged}: {problem}", file=sys.stderr, flush=True)
        if path is not None:
            if self.is_chief:
                self._set_aside_newer_than(path, problems)
                self._point_state_at(path, candidates[: candidates.index(path) + 1])
            self._make_manager()
            return path
        if problems:
            newest, problem = problems[0]
            raise TflmError(f"no checkpoint in {self.shared_dir} can be restored (the newest, "
                            f"{os.path.basename(newest)}: {problem}); restore the files from a copy, "
                            "or start over with --restart")
        self._make_manager()
        return None

    def _try_restore(self, path):
        """None if `path` restored every variable with finite values, else what went wrong."""
        try:
            # expect_partial first: a status that fails its assertion would otherwise log a warning
            # per unrestored value when it is garbage-collected, after the error line.
            self._required.restore(path).expect_partial().assert_existing_objects_matched()
            self._optional.restore(path).expect_partial()
        except Exception as error:  # a damaged file raises DataLossError, OutOfRange, IndexError, ...
            return first_line(error)
        if not bool(self._finite()):
            return "it holds non-finite weights"
        return None

    def _set_aside_newer_than(self, restored, problems):
        """Move the files of damaged checkpoints newer than `restored` into checkpoints/damaged/."""
        damaged = [path for path, _ in problems if checkpoint_step(path) > checkpoint_step(restored)]
        if not damaged:
            return
        target = os.path.join(self.shared_dir, "damaged")
        atomic.makedirs(target)
        for path in damaged:
            prefix = os.path.basename(path)
            for name in atomic.listdir(self.shared_dir):
                if name == f"{prefix}.index" or name.startswith(f"{prefix}.data-"):
                    atomic.rename(os.path.join(self.shared_dir, name), os.path.join(target, name))
        print(f"tflm: warning: resuming from {os.path.basename(restored)}; moved "
              f"{', '.join(os.path.basename(p) for p in damaged)} to {target}", file=sys.stderr, flush=True)

    def _point_state_at(self, latest, paths):
        """Rewrite CheckpointManager's state file if it does not name `latest` (lost, damaged, or
        naming a checkpoint set aside), listing `paths` so they rotate out as usual."""
        try:
            state = tf.train.get_checkpoint_state(self.shared_dir)
        except Exception:  # a damaged state file is rewritten below
            state = None
        if state is not None and os.path.basename(state.model_checkpoint_path) == os.path.basename(latest):
            return
        tf.compat.v1.train.update_checkpoint_state(
            self.shared_dir, latest, all_model_checkpoint_paths=paths,
            all_model_checkpoint_timestamps=[tf.io.gfile.stat(f"{p}.index").mtime_nsec / 1e9 for p in paths],
            last_preserved_timestamp=0.0)

    def _make_manager(self):
        self.manager = tf.train.CheckpointManager(self.checkpoint, self._private_dir or self.shared_dir,
                                                  max_to_keep=self.max_to_keep)

    def save(self, step):
        """Save as checkpoint number `step` (every task must call this together); a Diverged
        error instead if any weight is not finite, so no NaN checkpoint rotates good ones out; a
        TflmError if the chief lost its run directory's lock, or the files cannot be written (a
        full disk): the checkpoints before it are kept, what it wrote of this one is removed."""
        self._before_save()
        if not bool(self._finite()):
            raise Diverged(f"the weights are not finite at step {step}; not saving a checkpoint "
                           f"(the last finite one is {self.latest() or 'none'})")
        if self.is_chief:
            runs.check_still_locked(self.run_dir)
        directory = self._private_dir or self.shared_dir
        before = set(atomic.listdir(directory))
        try:
            return self.manager.save(checkpoint_number=step)
        except Exception as error:
            reason = write_failure(error)
            if reason is None:
                raise
            self._remove_partial(directory, step, before)
            raise TflmError(f"cannot save checkpoint ckpt-{step} in {directory}: {reason}; the checkpoints "
                            f"before it are kept (the newest: {self.latest() or 'none'}); free some space "
                            "and resume") from None

    def _remove_partial(self, directory, step, before):
        """Remove the files a failed save of `step` left (a `ckpt-N_temp` directory, a partial
        `ckpt-N.index`), none that were there before it."""
        for name in set(atomic.listdir(directory)) - before:
            if re.match(rf"^ckpt-{step}(\.|_temp)", name):
                path = os.path.join(directory, name)
                with contextlib.suppress(Exception):  # best effort: the disk may still be full
                    if atomic.isdir(path):
                        tf.io.gfile.rmtree(path)
                    else:
                        tf.io.gfile.remove(path)

    def latest(self):
        """The newest checkpoint in the chief's directory, or None."""
        found = list_checkpoints(self.shared_dir)
        return found[-1] if found else None

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
