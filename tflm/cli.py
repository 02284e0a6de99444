"""`tflm COMMAND [ARGS...]`: one console script for every command-line module."""

import importlib
import sys

from tflm import __version__
from tflm.quiet import run_command

COMMANDS = {
    "prepare": "tokenize a corpus once into a token store",
    "train": "train (or resume) a model into a run directory",
    "launch": "run N multi-worker training processes on localhost",
    "score": "log-probability, NLL and perplexity of texts",
    "classify": "labels of texts from a trained classifier",
    "generate": "sample text from a trained run",
    "export": "write a SavedModel for TF Serving",
    "plot": "draw training curves from run directories",
}
USAGE = """usage: tflm COMMAND [ARGS...]    (tflm COMMAND --help for its arguments)
       tflm --version

commands:
{commands}

Every command hides TensorFlow's own log lines unless given --verbose (or TFLM_VERBOSE=1)."""


def main(argv=None):
    """The `tflm` console script (and `python -m tflm`): run `tflm.COMMAND`'s main with ARGS, as
    `python -m tflm.COMMAND ARGS` does."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(f"tflm {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        commands = "\n".join(f"  {name:<9} {summary}" for name, summary in COMMANDS.items())
        print(USAGE.format(commands=commands), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return run_command(importlib.import_module(f"tflm.{argv[0]}").main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
