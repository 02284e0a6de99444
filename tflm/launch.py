"""`python -m tflm.launch --workers N [--port P] -- <train arguments>`: N training workers on localhost.

    python -m tflm.launch --workers 2 -- --config configs/char_transformer.yaml --run-dir runs/mw

Starts N `python -m tflm.train` processes, each with the TF_CONFIG of one task of a localhost
cluster, prefixes every line they print with their task, and exits with the first non-zero exit
code of any worker after stopping the rest; Ctrl-C or SIGTERM makes every worker checkpoint at the
same step (exit code 42). It starts TensorFlow's own multi-worker runtime; it is no scheduler.
How: tflm.training.launcher.
"""

import argparse

from tflm.cli import command
from tflm.errors import TflmError
from tflm.quiet import VERBOSE_HELP
from tflm.training.launcher import start_workers, supervise


def add_arguments(parser):
    """The command line: launcher options, then `--` and the train arguments."""
    parser.add_argument("--workers", type=int, required=True, help="number of worker processes")
    parser.add_argument("--port", type=int, default=0, help="first port (default: free ports)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then python -m tflm.train arguments")


def check_args(args):
    """The train arguments without their leading `--`; a TflmError for an impossible worker count or port."""
    if args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    if args.workers < 1:
        raise TflmError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.port <= 65535 - args.workers:
        raise TflmError(f"--port must leave room for {args.workers} ports below 65536, got {args.port}")
    return args


def run(args):
    """Run the workers until they are done; the exit code of the first that failed (else 0)."""
    args = check_args(args)
    procs, threads = start_workers(args.train_args, args.workers, args.port)
    code = supervise(procs)
    for thread in threads:
        thread.join(timeout=5)
    return 128 - code if code < 0 else code  # a worker killed by signal N exits as a shell reports it


main = command(__name__, add_arguments, run, verbose_help=VERBOSE_HELP + "; passed on to the workers")
