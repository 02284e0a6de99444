"""The outer training loop: steps, evaluations, history, checkpoints, and every way a run stops.

As in Orbit, the Controller owns the loop and the Trainer (tflm.training.trainer) owns the compiled steps.
The step counter is the optimizer's `iterations` variable, restored with the checkpoint. Between
steps the Controller checks, in order: a preemption notice (SIGTERM: every worker saves at the
same step, exit 42), Ctrl-C (single process: save, exit 130), and divergence (a NaN/inf gradient
beyond train.max_nonfinite_steps: stop without saving, exit 4).
"""

import _thread
import contextlib
import os
import signal
import threading
import time

from tflm.errors import EXIT_INTERRUPTED, Diverged, Interrupted, Preempted, in_command
from tflm.lazy import tf
from tflm.runs import run_dir as runs
from tflm.training.strategy import exit_now


class Controller:
    """Runs a Trainer to train.steps with evaluations, history, TensorBoard and checkpoints."""

    def __init__(self, trainer, checkpointer, train_config, units_per_step, run_dir, worker, progress,
                 resume_command=None):
        """`resume_command`: what resumes this run, printed when it stops early, if that is not the
        command that started it (which chose its run directory, or had --restart)."""
        self.trainer, self.checkpointer, self.config = trainer, checkpointer, train_config
        self.resume_command = resume_command
        self.units_per_step, self.run_dir, self.worker, self.progress = units_per_step, run_dir, worker, progress
        self.checkpoint_every = train_config.checkpoint_every or train_config.eval_every
        self.writer = (tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard")) if worker.is_chief
                       else tf.summary.create_noop_writer())
        self._sigint = False
        self._interrupt = False  # a second Ctrl-C under a Python caller: raise KeyboardInterrupt
        self._saved_step = None
        self._nonfinite_seen = int(trainer.nonfinite_steps.numpy())

    def run(self, train_iterator, eval_iterator, eval_batches, cluster_resolver, elapsed_before_s):
        """Train from the restored step to train.steps."""
        t, trainer, progress = self.config, self.trainer, self.progress
        step = trainer.step
        preemption = self.checkpointer.preemption_handler(
            cluster_resolver, lambda: trainer.step, lambda: self._preempted(trainer.step))
        trainer.train_metrics.reset()
        start = period_start = time.perf_counter()
        period_start_step = step
        progress.start(step)
        with self._ctrl_c_saves():
            while step < t.steps:
                self._stop_if_asked(preemption, step)
                trainer.train_steps(train_iterator, self._loop_length(step))
                step = trainer.step
                self._check_divergence(step)
                progress.update(step, lambda: trainer.train_metrics.result()["loss"])
                if step % t.eval_every == 0 or step == t.steps:
                    train_metrics = trainer.train_metrics.result()  # waits for the last step to finish
                    train_time_s = time.perf_counter() - period_start
                    val = trainer.evaluate(eval_iterator, eval_batches)
                    unit = trainer.task.unit
                    record = {
                        "step": step, f"{unit}_seen": step * self.units_per_step,
                        "elapsed_s": round(elapsed_before_s + time.perf_counter() - start, 3),
                        **trainer.task.history_fields(train_metrics, val),
                        f"{unit}_per_sec": (step - period_start_step) * self.units_per_step / train_time_s,
                    }
                    self._report(record, train_metrics, val)
                    trainer.train_metrics.reset()
                if step % self.checkpoint_every == 0 or step == t.steps:
                    self._save(step)
                if step % t.eval_every == 0:  # the next period's speed counts training steps only
                    period_start, period_start_step = time.perf_counter(), step
        # Only the chief writes the run directory's checkpoints; the others' copies are temporary.
        where = f"; checkpoints in {self.checkpointer.shared_dir}" if self.worker.is_chief else ""
        progress.log(f"done: step {step}{where}")

    def _loop_length(self, step):
        """Steps to run in the next host call: train.steps_per_loop, cut at the next evaluation,
        checkpoint or the end, which happen between loops."""
        t = self.config
        return min(t.steps_per_loop, t.steps - step, t.eval_every - step % t.eval_every,
                   self.checkpoint_every - step % self.checkpoint_every)

    def _save(self, step):
        if self._saved_step != step:
            self.checkpointer.save(step)
            self._saved_step = step

    def _stop_if_asked(self, preemption, step):
        preemption.save_checkpoint_if_preempted()
        if self._sigint:
            self._save(step)
            raise Interrupted(f"Ctrl-C at step {step}; checkpoint saved ({self.checkpointer.latest()}); "
                              f"{self._how_to_resume()}")

    def _preempted(self, step):
        """PreemptionCheckpointHandler's exit: the checkpoint at `step` is saved on every worker."""
        raise Preempted(f"SIGTERM received; checkpoint saved at step {step} on every worker; "
                        f"{self._how_to_resume('relaunch')}")

    def _how_to_resume(self, verb="run"):
        """'run the same command to resume', or the command that does."""
        return f"resume with: {self.resume_command}" if self.resume_command else f"{verb} the same command to resume"

    def _check_divergence(self, step):
        """Stop past train.max_nonfinite_steps skipped steps; warn about each one skipped."""
        count = int(self.trainer.nonfinite_steps.numpy())
        if count == self._nonfinite_seen:
            return
        self._nonfinite_seen = count
        allowed, first = self.config.max_nonfinite_steps, int(self.trainer.first_nonfinite_step.numpy())
        if count > allowed:
            raise Diverged(
                f"the loss or gradient became NaN/inf at step {first} ({count} such step(s), "
                f"train.max_nonfinite_steps={allowed}); stopped at step {step} without saving; the last "
                f"finite checkpoint is {self.checkpointer.latest() or 'none'}; lower train.learning_rate, "
                "or resume with a larger train.max_nonfinite_steps to skip the bad batches"
                + (f" (its run directory: {self.run_dir})" if self.resume_command else ""))
        self.progress.log(f"warning: step {step}: NaN/inf gradient, update skipped ({count} of at most {allowed})")

    @contextlib.contextmanager
    def _ctrl_c_saves(self):
        """While training alone, Ctrl-C asks the loop to checkpoint and stop; in a cluster it becomes
        SIGTERM, which checkpoints every worker at the same step. A second Ctrl-C ends the process
        at once. Python runs a signal handler only when the main thread is back in Python, which a
        long compiled call (many steps, an evaluation) delays, so a thread acts instead: it reads
        the signal wakeup descriptor, which the C-level handler writes to the moment a signal comes."""
        if not _in_main_thread():
            yield
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # as set_wakeup_fd requires
        previous_handler = signal.signal(signal.SIGINT, self._on_sigint)  # the thread acts
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        watcher = threading.Thread(target=self._watch_ctrl_c, args=(read_fd, previous_fd), name="tflm-ctrl-c",
                                   daemon=True)
        watcher.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGINT, previous_handler)
            os.close(write_fd)  # the watcher reads end of file and returns
            watcher.join()
            os.close(read_fd)

    def _watch_ctrl_c(self, read_fd, forward_fd):
        """_ctrl_c_saves's thread: the first SIGINT asks for a checkpoint, the second ends the
        process; other signals' wakeup bytes go on to `forward_fd` (the one set before, if any)."""
        count = 0
        while True:
            try:
                numbers = os.read(read_fd, 512)
            except OSError:
                return
            if not numbers:
                return
            if forward_fd >= 0 and numbers.replace(bytes([signal.SIGINT]), b""):
                with contextlib.suppress(OSError):
                    os.write(forward_fd, numbers.replace(bytes([signal.SIGINT]), b""))
            for _ in range(numbers.count(signal.SIGINT)):
                count += 1
                if count == 1:
                    self._first_ctrl_c()
                else:
                    self._stop_at_once()

    def _first_ctrl_c(self):
        """Ask the loop to checkpoint and stop after this step (in a cluster: SIGTERM, so every worker does)."""
        if self.worker.num_workers > 1:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._sigint = True
            self.progress.log("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def _on_sigint(self, signum, frame):
        """The main thread's SIGINT handler: the watcher thread acts on Ctrl-C, except for raising
        KeyboardInterrupt in a caller's Python (see _stop_at_once)."""
        if self._interrupt:
            raise KeyboardInterrupt

    def _stop_at_once(self):
        """End the process now (a second Ctrl-C), whatever the main thread is doing: one line, exit
        130. Called from Python (a notebook), KeyboardInterrupt in the main thread instead, as
        Python's own Ctrl-C does: ending the process would lose the caller's state."""
        if not in_command():
            self._interrupt = True
            _thread.interrupt_main()  # runs _on_sigint in the main thread once it is back in Python
            return
        latest = None
        try:
            latest = self.checkpointer.latest()
            if self.worker.is_chief:
                runs.release_lock(self.run_dir)
            self.checkpointer.close()
        finally:
            exit_now(f"{self.progress.prefix}tflm: interrupted: Ctrl-C again: stopped at once, without saving; "
                     f"the newest checkpoint is {latest or 'none'}; {self._how_to_resume()}", EXIT_INTERRUPTED)

    def _report(self, record, train_metrics, val):
        """Log an evaluation, append it to history.jsonl (chief) and TensorBoard."""
        task = self.trainer.task
        speed = f"{task.unit}_per_sec"
        self.progress.log(f"step {record['step']}/{self.config.steps}  {task.log_text(record)}  "
                          f"{record[speed]:.0f} {task.unit_shown}/s")
        if self.worker.is_chief:
            runs.append_history(self.run_dir, record)
        with self.writer.as_default(step=record["step"]):
            for name, value in {**{f"train/{k}": v for k, v in train_metrics.items()},
                                **{f"validation/{k}": v for k, v in val.items()},
                                speed: record[speed]}.items():
                if isinstance(value, (int, float)):  # not the confusion matrix
                    tf.summary.scalar(name, value)
        self.writer.flush()


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()
