"""`tflm COMMAND [ARGS...]`: one console script for every command-line module."""

import importlib
import sys

from tflm.quiet import run_command

COMMANDS = {
    "train": "train (or resume) a model into a run directory",
    "launch": "run N multi-worker training processes on localhost",
    "score": "log-probability, NLL and perplexity of texts",
    "generate": "sample text from a trained run",
    "export": "write a SavedModel for TF Serving",
    "plot": "draw training curves from run directories",
}


def main(argv=None):
    """Dispatch `tflm COMMAND ARGS` to `python -m tflm.COMMAND ARGS` (quiet unless --verbose)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        lines = [f"  {name:<9} {summary}" for name, summary in COMMANDS.items()]
        print("usage: tflm COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines),
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return run_command(importlib.import_module(f"tflm.{argv[0]}").main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
