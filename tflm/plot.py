"""`python -m tflm.plot`: training and validation curves of runs, from their history.jsonl (or a pipeline's timeline).

    python -m tflm.plot runs/lstm runs/transformer -o curves.png
    python -m tflm.plot runs/lstm --metric loss --metric perplexity --x tokens -o curves.png
    python -m tflm.plot runs/classifier --metric accuracy --metric macro_f1 -o classifier.png
    python -m tflm.plot --pipeline runs/pipeline -o timeline.png

--metric is any key of the runs' history (NAME draws NAME and val_NAME), or perplexity or
bits_per_char (from the loss); several are drawn side by side. Each run gets one colour, its
training curve dashed and its validation curve solid. Writes the image (format from the
extension) and prints its path. How: tflm.runs.plot (`tflm.plot_runs` in Python).

--pipeline RUN draws instead a traced step of a pipeline run (runtime.pipeline_trace_steps) as a
timeline, a row per stage, and prints its measured bubble fraction beside GPipe's (S-1)/(M+S-1)
before the image's path. How: tflm.runs.pipeline_plot.
"""

from tflm.cli import command
from tflm.errors import TflmError
from tflm.runs.pipeline_plot import bubble_line, plot_pipeline
from tflm.runs.plot import X_AXES, plot_runs, save_figure


def add_arguments(parser):
    """The command line."""
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories (or history.jsonl files)")
    parser.add_argument("--metric", action="append",
                        help="what to plot: a key of the runs' history (NAME draws NAME and val_NAME), perplexity "
                             "or bits_per_char (repeat for panels side by side; default: accuracy)")
    parser.add_argument("--x", default="step", choices=tuple(X_AXES), help="x axis (default: step)")
    parser.add_argument("--name", action="append", help="legend name of each run, in order (default: directory names)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--pipeline", metavar="RUN", help="draw a pipeline run's traced step as a timeline instead")
    parser.add_argument("--step", type=int, metavar="N", help="with --pipeline: the traced step (default: the last)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write")


def run(args):
    """Write the image and print its path."""
    check_what_to_draw(args)
    if args.pipeline:
        figure, record = plot_pipeline(args.pipeline, args.step)
        print(bubble_line(record), flush=True)
    else:
        figure = plot_runs(args.runs, args.metric or ["accuracy"], args.x, args.name, args.title)
    print(save_figure(figure, args.output), flush=True)
    return 0


def check_what_to_draw(args):
    """Raise a TflmError unless the arguments ask for curves of RUN_DIRs or for one --pipeline timeline."""
    if args.pipeline and args.runs:
        raise TflmError("give RUN_DIRs (curves) or --pipeline RUN (a timeline), not both")
    if not args.pipeline and not args.runs:
        raise TflmError("give at least one RUN_DIR (or --pipeline RUN)")
    if not args.pipeline and args.step is not None:
        raise TflmError("--step chooses a traced step of --pipeline RUN; give --pipeline too")
    if args.pipeline and (args.metric or args.name or args.x != "step" or args.title):
        raise TflmError("--metric, --x, --name and --title draw curves; --pipeline draws a timeline without them")


main = command(__name__, add_arguments, run)
