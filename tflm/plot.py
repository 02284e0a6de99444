"""`python -m tflm.plot`: training and validation curves of runs, from their history.jsonl.

    python -m tflm.plot runs/lstm runs/transformer -o curves.png
    python -m tflm.plot runs/lstm --metric loss --metric perplexity --x tokens -o curves.png
    python -m tflm.plot runs/classifier --metric accuracy --metric macro_f1 -o classifier.png

--metric is any key of the runs' history (NAME draws NAME and val_NAME), or perplexity or
bits_per_char (from the loss); several are drawn side by side. Each run gets one colour, its
training curve dashed and its validation curve solid. Writes the image (format from the
extension) and prints its path. How: tflm.runs.plot (`tflm.plot_runs` in Python).
"""

from tflm.cli import command
from tflm.runs.plot import X_AXES, plot_runs, save_figure


def add_arguments(parser):
    """The command line."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or history.jsonl files)")
    parser.add_argument("--metric", action="append",
                        help="what to plot: a key of the runs' history (NAME draws NAME and val_NAME), perplexity "
                             "or bits_per_char (repeat for panels side by side; default: accuracy)")
    parser.add_argument("--x", default="step", choices=tuple(X_AXES), help="x axis (default: step)")
    parser.add_argument("--name", action="append", help="legend name of each run, in order (default: directory names)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write")


def run(args):
    """Write the image and print its path."""
    figure = plot_runs(args.runs, args.metric or ["accuracy"], args.x, args.name, args.title)
    print(save_figure(figure, args.output), flush=True)
    return 0


main = command(__name__, add_arguments, run)
