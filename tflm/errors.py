"""The one exception type for problems a user can fix, and the CLI wrapper that prints it."""

import functools
import logging
import sys

from tflm.quiet import flush_native_logs

EXIT_USER_ERROR = 2  # bad input: config, TF_CONFIG, data, arguments, a run directory in use
EXIT_CLUSTER_ERROR = 3  # a peer was lost or never came up; relaunch to resume
EXIT_DIVERGED = 4  # the loss or gradient became NaN/inf; the last finite checkpoint is kept
EXIT_PREEMPTED = 42  # SIGTERM: every worker checkpointed at the same step; relaunch to resume
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): a checkpoint was saved if training had started; rerun to resume


class TflmError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""

    exit_code = EXIT_USER_ERROR
    label = "error"


class ClusterError(TflmError):
    """A multi-worker cluster failed (lost or missing peer): one line, exit code 3."""

    exit_code = EXIT_CLUSTER_ERROR


class Diverged(TflmError):
    """The loss or gradient norm became non-finite: one line, exit code 4; nothing was saved after it."""

    exit_code = EXIT_DIVERGED
    label = "diverged"


class Interrupted(TflmError):
    """SIGINT arrived: one line, exit code 130 (a checkpoint was saved if training had started)."""

    exit_code = EXIT_INTERRUPTED
    label = "interrupted"


class Preempted(TflmError):
    """SIGTERM arrived; a checkpoint was saved: one line, exit code 42 (relaunch to resume)."""

    exit_code = EXIT_PREEMPTED
    label = "preempted"


def exit_on_user_error(main):
    """Wrap a command-line `main` so a TflmError prints one line and exits with its code, and
    Ctrl-C before anything was started prints one line and exits 130 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        global _in_command
        _in_command = True
        try:
            return main(*args, **kwargs)
        except TflmError as error:
            flush_native_logs()  # so that this line comes last
            quiet_python_warnings()
            print(f"tflm: {error.label}: {error}", file=sys.stderr, flush=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            flush_native_logs()
            print("tflm: interrupted", file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


_in_command = False  # whether this process runs a command (exit_on_user_error) rather than user code


def in_command():
    """Whether a command's `main` runs in this process: it may end the process itself (os._exit);
    called from Python (a notebook, user code), tflm raises instead."""
    return _in_command


def quiet_python_warnings():
    """Hide TensorFlow's Python-logged warnings from here on: objects collected as the process ends
    (checkpoint restore statuses, for one) would log them after the error line, which must come last."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
