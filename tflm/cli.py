"""The command line: the `tflm COMMAND [ARGS...]` console script, and `command`, the helper every
command module (tflm/<command>.py) is built with.

A command module holds only its command line: its docstring (usage; the first line is its --help
description), `add_arguments(parser)`, `run(args)` and, as its last statement,
`main = command(__name__, add_arguments, run)`. A new command is such a module plus its line in
COMMANDS. Nothing here loads TensorFlow, so every `--help` answers at once.
"""

import argparse
import importlib
import sys

from tflm import __version__
from tflm.errors import exit_on_user_error
from tflm.quiet import VERBOSE_HELP, run_command

COMMANDS = {
    "prepare": "tokenize a corpus once into a token store",
    "train": "train (or resume) a model into a run directory",
    "launch": "run N multi-worker training processes on localhost",
    "score": "log-probability, NLL and perplexity of texts",
    "classify": "labels of texts from a trained classifier",
    "generate": "sample text from a trained run",
    "export": "write a SavedModel for TF Serving",
    "plot": "draw training curves from run directories, or a pipeline run's timeline",
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


def command(module, add_arguments, run, verbose_help=VERBOSE_HELP, around=None):
    """The `main(argv=None)` of the command module named `module` (its `__name__`).

    main parses `argv` (default: sys.argv[1:]) with a parser for `python -m tflm.NAME` described
    by the first line of the module's docstring, with the arguments `add_arguments(parser)` adds
    and --verbose (`verbose_help`), then returns `run(args)`, the exit code; `args.argv` is the
    list parsed. A TflmError prints one line and exits with its code (tflm.errors). `around`, if
    given, wraps that main (tflm.train's leaves a cluster at once). When the module runs as
    `python -m tflm.NAME` (`module` is "__main__"), main runs now, quiet unless --verbose
    (tflm.quiet.run_command), and the process exits: make this the module's last statement.
    """
    source = sys.modules[module]
    prog = f"python -m {source.__spec__.name if source.__spec__ else module}"  # under -m, `module` is __main__

    @exit_on_user_error
    def command_main(argv=None):
        """Entry point of the command: parse `argv`, run, return the exit code."""
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = argparse.ArgumentParser(prog=prog, description=source.__doc__.splitlines()[0])
        add_arguments(parser)
        parser.add_argument("--verbose", action="store_true", help=verbose_help)
        args = parser.parse_args(argv)
        args.argv = argv
        return run(args)

    command_main = around(command_main) if around else command_main
    if module == "__main__":
        sys.exit(run_command(command_main))
    return command_main


if __name__ == "__main__":
    sys.exit(main())
