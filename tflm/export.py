"""TODO docstring."""

import argparse
import sys
from tflm.atomic import check_persistent
from tflm.errors import exit_on_user_error
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.serving.export import export_run


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.export", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--base", default="saved_models", help="TF Serving model base (default: saved_models)")
    parser.add_argument("--name", help="model name (default: the run directory's name)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                        help=f"texts, prompts or rows a request may hold (default: {MAX_BATCH_SIZE})")
    parser.add_argument("--max-request-chars", type=int, default=MAX_REQUEST_CHARS,
                        help=f"characters of all texts or prompts of a request, token ids of all its rows "
                             f"(default: {MAX_REQUEST_CHARS}; the cost of a request grows with them)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.export`: prints the new version directory."""
    args = parse_args(argv)
    check_persistent(args.base, "--base")
    print(export_run(args.run_dir, args.base, args.name, args.max_batch_size, args.max_request_chars), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
