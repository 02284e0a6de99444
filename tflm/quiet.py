"""Quiet commands: TensorFlow's native start-up log lines hidden, everything else as it was.

TensorFlow's C++ code logs through absl straight to file descriptor 2, and some of it before
TF_CPP_MIN_LOG_LEVEL is read: on a machine without a GPU every command would start with

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1700000000.123456   12345 cudart_stub.cc:31] Could not find cuda drivers ...
    E0000 00:00:1700000000.123456   12345 cuda_platform.cc:52] failed call to cuInit: ...

So each command-line entry point (`tflm ...`, `python -m tflm.<command>`, and so the workers
`tflm.launch` starts) sends descriptor 2 through a filter process that leaves out such lines
(`is_noise`) and copies every other line unchanged. Python's `sys.stderr` keeps writing to the
real stderr directly, so tflm's own messages are never held up, even when the process ends with
`os._exit`. The filter is a separate process that ends when the last writer of the pipe is gone,
so a fatal `F` line, or a crash report written as the process dies, still gets through. A few
of TensorFlow's Python-logged warnings that say nothing to a user (PYTHON_NOISE) are left out too.

`--verbose` on a command, or TFLM_VERBOSE=1, shows everything (and is passed on to the processes
a command starts). Importing tflm as a library changes nothing: notebooks and user code keep
their stderr as it is.
"""

import atexit
import logging
import os
import re
import select
import signal
import sys

VERBOSE_ENV = "TFLM_VERBOSE"
VERBOSE_HELP = "show TensorFlow's own log lines too (hidden by default; or set TFLM_VERBOSE=1)"

# An absl/glog line and its severity: "I0000 00:00:1700000000.123456   12345 file.cc:31] message"
# (TF >= 2.16) or "2024-01-01 10:00:00.123456: I tensorflow/.../file.cc:31] message" (older TF).
LOG_LINE = re.compile(r"(?:([IWEF])\d{4} [\d:.]+ +\d+|\d{4}-\d\d-\d\d [\d:.]+: ([IWEF])) \S+:\d+\] ")
# Lines of no use to a user that are not INFO or WARNING log lines.
NOISE = re.compile("|".join([
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    # ERROR lines that only say "no GPU here" or "this CUDA library registered twice":
    r".*\] failed call to cuInit: ",
    r".*\] Unable to register cu(DNN|FFT|BLAS) factory: ",
    r".*\] computation placer already registered",
    r".*\] could not open file to read NUMA node: ",
    r".*\] Delay kernel timed out: measured time has sub-optimal accuracy",
    # ERROR lines of TensorFlow's persistent XLA cache loading an entry it wrote (tflm keys its
    # directory by CPU, tflm/training/compile_cache.py): a text parse before the binary one, and
    # tuning hints the loading CPU "does not support":
    r".*\] Error parsing text-format tensorflow\.XlaSerializedCacheEntry: ",
    r".*\] Loading XLA:CPU AOT result\. Target machine feature \+prefer-no-(scatter|gather) is not +supported ",
    # sentencepiece's own INFO and WARNING lines ("normalizer.cc(51) LOG(INFO) ..."), e.g. from the
    # copy inside tensorflow-text, whose log level Python cannot set:
    r"\S+\.cc\(\d+\) LOG\((INFO|WARNING)\) ",
    # What Apache Beam's direct-runner workers (tflm.prepare --beam-options) print as they start:
    # BigQuery's client, which tflm does not use, and flags Beam passes its own workers.
    r"WARNING:root:apitools not found, and bigquery client libraries are not available ",
    r"INFO:__main__:Logging handler created\.$",
    r"WARNING:__main__:No semi_persistent_directory found: ",
    r"WARNING:apache_beam\.options\.pipeline_options:Discarding unparseable args: "
    r"\[('--(direct_runner_use_stacked_bundle|pipeline_type_check)'(, )?)+\]$",
]))
# A line naming one task alone: how a multi-line INFO line ("Example stragglers:") goes on.
TASK_LINE = re.compile(r"/job:\w+/replica:\d+/task:\d+$")
# TensorFlow's Python-logged warnings of no use to a user of the commands:
PYTHON_NOISE = re.compile("|".join([
    r"not packing values due to the unknown or inconsistent shape",  # one all-reduce on its own: harmless
    r"From .*: PreemptionCheckpointHandler\.total_run_calls .* is deprecated",  # TensorFlow's own use of it
]))
FLUSH_REQUEST = b"\0tflm: flush native logs\0"  # see `flush_native_logs`
FLUSH_TIMEOUT_S = 1.0

_acks = None  # once the filter runs: the descriptor on which it acknowledges flush requests


def is_noise(line):
    """Whether a line written to descriptor 2 is TensorFlow noise: an INFO or WARNING log line
    (what TF_CPP_MIN_LOG_LEVEL=2 hides, when it is read in time) or a known harmless one.
    ERROR and FATAL lines and everything else stay."""
    log = LOG_LINE.match(line)
    severity = log and (log.group(1) or log.group(2))
    return severity in ("I", "W") or NOISE.match(line) is not None


def verbose_requested(argv):
    """Whether TFLM_VERBOSE or `--verbose` (before any `--`, or an abbreviation argparse accepts)
    asks for TensorFlow's own log lines."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(len(option) >= 3 and "--verbose".startswith(option) for option in options)


def run_command(main, argv=None):
    """Run a command's `main(argv)` as the entry point of this process: quiet unless asked."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if verbose_requested(argv):
        os.environ[VERBOSE_ENV] = "1"  # for the processes this one starts, e.g. tflm.launch's workers
    else:
        hide_native_noise()
        logging.getLogger("tensorflow").addFilter(lambda record: not PYTHON_NOISE.match(record.getMessage()))
    return main(argv)


def hide_native_noise():
    """Route descriptor 2 through a filter process (see the module docstring); sys.stderr keeps
    the real stderr. Call before TensorFlow is imported; once per process."""
    global _acks
    if _acks is not None or not hasattr(os, "fork"):
        return
    try:
        sys.stderr.flush()
        real_stderr = os.dup(2)
    except (AttributeError, OSError):  # no stderr at all: nothing to keep quiet
        return
    source, sink = os.pipe()
    ack_read, ack_write = os.pipe()
    if os.fork() == 0:
        run_filter(source, real_stderr, ack_write)
    os.close(source)
    os.close(ack_write)
    os.dup2(sink, 2)
    os.close(sink)
    sys.stderr = open(real_stderr, "w", encoding=sys.stderr.encoding, errors=sys.stderr.errors, buffering=1)
    _acks = ack_read
    # Where this process is PID 1 of a container, the filter is killed the moment it exits.
    atexit.register(flush_native_logs)


def run_filter(source, target, ack):
    """The filter process: copy `source` to `target` without the noise until the last writer is
    gone, then exit. Signals meant for the command (Ctrl-C, SIGTERM) are left to it."""
    try:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)
        keep = sorted({source, target, ack})
        for low, high in zip([-1] + keep, keep + [os.sysconf("SC_OPEN_MAX")]):
            os.closerange(low + 1, high)  # the command's other files (stdout, sockets, ...)
        filter_lines(source, target, ack)
    finally:
        os._exit(0)


def filter_lines(source, target, ack=None):
    """Copy the lines read from descriptor `source` to `target` until end of file, leaving out
    noise; answer each FLUSH_REQUEST line with a byte on `ack`. Reads on if `target` fails, so
    writers never block."""
    pending, dropping = b"", False
    while True:
        try:
            chunk = os.read(source, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.endswith(FLUSH_REQUEST):
                target = write_all(target, line[:-len(FLUSH_REQUEST)])
                ack = write_all(ack, b".")
                continue
            text = line.decode("utf-8", "replace")
            dropping = is_noise(text) or (dropping and TASK_LINE.match(text) is not None)
            if not dropping:
                target = write_all(target, line + b"\n")
    write_all(target, pending)


def write_all(fd, data):
    """Write all of `data` to `fd`; returns `fd`, or None if writing failed (and for `fd` None)."""
    try:
        while data and fd is not None:
            data = data[os.write(fd, data):]
        return fd
    except OSError:
        return None


def flush_native_logs(timeout_s=FLUSH_TIMEOUT_S):
    """Wait (up to `timeout_s`) until the filter has passed on everything written to descriptor 2
    so far, so that a last line printed to sys.stderr comes after it. No-op without the filter."""
    if _acks is None:
        return
    try:
        os.write(2, FLUSH_REQUEST + b"\n")
        if select.select([_acks], [], [], timeout_s)[0]:
            os.read(_acks, 1)
    except OSError:
        pass
