"""TODO docstring."""

import argparse
import sys
from tflm.errors import exit_on_user_error
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.runs.plot import METRICS
from tflm.runs.plot import X_AXES
from tflm.runs.plot import plot_runs
from tflm.runs.plot import save_figure


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or history.jsonl files)")
    parser.add_argument("--metric", action="append", choices=tuple(METRICS),
                        help="what to plot (repeat for panels side by side; default: accuracy)")
    parser.add_argument("--x", default="step", choices=tuple(X_AXES), help="x axis (default: step)")
    parser.add_argument("--name", action="append", help="legend name of each run, in order (default: directory names)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.plot`: writes the image and prints its path."""
    args = parse_args(argv)
    figure = plot_runs(args.runs, args.metric or ["accuracy"], args.x, args.name, args.title)
    print(save_figure(figure, args.output), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
