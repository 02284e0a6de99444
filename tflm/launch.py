"""TODO docstring."""

import argparse
import sys
from tflm.errors import TflmError, exit_on_user_error
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.training.launcher import start_workers
from tflm.training.launcher import supervise


def parse_args(argv):
    """The command line: launcher options, then `--` and the train arguments."""
    parser = argparse.ArgumentParser(prog="python -m tflm.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, required=True, help="number of worker processes")
    parser.add_argument("--port", type=int, default=0, help="first port (default: free ports)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP + "; passed on to the workers")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then python -m tflm.train arguments")
    args = parser.parse_args(argv)
    if args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    if args.workers < 1:
        raise TflmError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.port <= 65535 - args.workers:
        raise TflmError(f"--port must leave room for {args.workers} ports below 65536, got {args.port}")
    return args


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.launch`."""
    args = parse_args(argv)
    procs, threads = start_workers(args)
    code = supervise(procs)
    for thread in threads:
        thread.join(timeout=5)
    return 128 - code if code < 0 else code  # a worker killed by signal N exits as a shell reports it


if __name__ == "__main__":
    sys.exit(run_command(main))
