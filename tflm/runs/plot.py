"""Training and validation curves of runs, from their history.jsonl: the library half of
`python -m tflm.plot` (tflm/plot.py), and `tflm.plot_runs`.

A metric is any key a run's history holds: NAME draws the key NAME (the training value) and
val_NAME (the validation value), whichever the runs have, so a new key a task writes to the
history is plotted with no edit here. METRICS gives the usual ones a label, units and scale, and
adds metrics derived from a key (perplexity and bits_per_char, from the loss).

Each run gets one colour; its training curve is dashed and its validation curve solid. The
training value at an evaluation is the mean over the steps since the previous one, so it lags
the validation value by half an interval. Several metrics are drawn side by side. A NaN or
infinite value (a run that diverged) is a gap in its curve, and a warning line on stderr names
the run, the history key and the steps.

The functions work without pyplot (they build a `matplotlib.figure.Figure`), so notebooks import
them and scripts never open a window: `plot_runs(...)` returns the figure, `save_figure` writes it.
"""

import dataclasses
import math
import os
import re
import sys

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogFormatter, PercentFormatter

from tflm.errors import TflmError
from tflm.jsonl import BadLine, json_objects

HISTORY_FILE = "history.jsonl"  # as tflm.runs.run_dir.history_path names it


@dataclasses.dataclass(frozen=True)
class Metric:
    """How to draw one metric: the history keys of its training and validation values."""

    label: str  # y-axis label, with units
    train_key: str
    val_key: str
    convert: object = None  # value read -> value drawn (e.g. nats -> bits)
    log_scale: bool = False
    percent: bool = False

    def values(self, records, part):
        """The train or validation values of `records`, converted; NaN (a gap) where one is not finite."""
        key = self.train_key if part == "train" else self.val_key
        convert = self.convert or (lambda value: value)
        return [convert(r[key]) if math.isfinite(r[key]) else math.nan for r in records]

    def parts(self, records):
        """[(part, history key)] of the parts ("train", "validation") whose key `records` hold (the first one)."""
        return [(part, key) for part, key in (("train", self.train_key), ("validation", self.val_key))
                if key in records[0]]


def nats_to_bits(nats):
    """A loss in nats as bits."""
    return nats / math.log(2)


def perplexity(nats):
    """The perplexity of a loss in nats."""
    return math.exp(min(nats, 50.0))  # as tflm.tasks.lm's: exp(50) is "diverged", not an overflow


# The metrics drawn with a label and scale of their own (any other history key is drawn as it is).
METRICS = {
    "accuracy": Metric("next-token accuracy (%)", "accuracy", "val_accuracy", percent=True),
    "macro_f1": Metric("macro-F1 over the labels (%)", "macro_f1", "val_macro_f1", percent=True),
    "loss": Metric("cross-entropy loss (nats/token)", "loss", "val_loss"),
    "perplexity": Metric("perplexity per token (log scale)", "loss", "val_loss", perplexity, log_scale=True),
    "bits_per_char": Metric("cross-entropy (bits/token; per character for char runs)", "loss", "val_loss",
                            nats_to_bits),
    "bits_per_byte": Metric("bits per UTF-8 byte (compares tokenizers)", "bits_per_byte", "val_bits_per_byte"),
}

# x-axis name -> (history key, axis label)
X_AXES = {
    "step": ("step", "optimizer step"),
    "tokens": ("tokens_seen", "tokens seen"),
    "examples": ("examples_seen", "examples seen (classifiers)"),
    "time": ("elapsed_s", "wall-clock time since start (s)"),
}


@dataclasses.dataclass
class Run:
    """A run's name in the legend, its history file and its evaluation records."""

    name: str
    path: str
    records: list


def find_history(run):
    """The history.jsonl of a run directory (or `run` itself if it is that file)."""
    if os.path.isfile(run):
        return run
    if not os.path.isdir(run):
        raise TflmError(f"{run}: no such run directory")
    path = os.path.join(run, HISTORY_FILE)
    if not os.path.isfile(path):
        raise TflmError(f"{path}: missing; the run has not finished an evaluation yet "
                        f"(train.eval_every steps), or {run} is not a tflm run directory")
    return path


def load_history(run, keys=("step", "loss", "val_loss")):
    """The records of a run's history.jsonl, each checked to hold a number under every key in `keys`.

    A blank line is skipped; anything else that is not such a JSON object is a TflmError
    naming the file and line, e.g. "runs/a/history.jsonl:3: no 'val_loss'".
    """
    path = find_history(run)
    numbered = read_records(path)
    for number, record in numbered:
        check_numbers(f"{path}:{number}", record, keys)
    return [record for _, record in numbered]


def read_records(path):
    """[(line number, JSON object)] of a history file (at least one); a TflmError naming the file
    and the line that is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise TflmError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    try:
        numbered = json_objects(text)
    except BadLine as bad:
        shown = f": {bad.line.strip()[:60]!r}" if bad.reason.startswith("not valid JSON") else ""
        raise TflmError(f"{path}:{bad.number}: {bad.reason}{shown}") from None
    if not numbered:
        raise TflmError(f"{path}: no evaluations yet (the file is empty)")
    return numbered


def check_numbers(where, record, keys):
    """Raise a TflmError naming `where` unless `record` holds a number under every key in `keys`."""
    for key in keys:
        if key not in record:
            raise TflmError(f"{where}: no {key!r} (has {', '.join(sorted(record)) or 'no keys'})")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TflmError(f"{where}: {key!r} must be a number, got {value!r}")


def run_names(runs):
    """Legend names: each run directory's basename, or its whole path where basenames clash."""
    bases = [os.path.basename(os.path.normpath(r)) for r in runs]
    bases = [os.path.basename(os.path.dirname(os.path.normpath(r))) if b == HISTORY_FILE else b
             for r, b in zip(runs, bases)]
    return [b if bases.count(b) == 1 else os.path.normpath(r) for r, b in zip(runs, bases)]


def load_runs(runs, metrics=("accuracy",), x="step", names=None):
    """A Run for each run directory, its history checked for what `metrics` and `x` need."""
    metrics = check_metrics(metrics)
    check_choice("x", x, X_AXES)
    runs = [os.fspath(r) for r in runs]
    if not runs:
        raise TflmError("give at least one run directory")
    names = list(names) if names is not None else run_names(runs)
    if len(names) != len(runs):
        raise TflmError(f"{len(names)} names for {len(runs)} runs; give one name per run")
    paths = [find_history(run) for run in runs]
    numbered = [read_records(path) for path in paths]
    loaded = [Run(name, path, [record for _, record in lines]) for name, path, lines in zip(names, paths, numbered)]
    specs = [metric_spec(metric, loaded) for metric in metrics]
    for run, lines in zip(loaded, numbered):
        keys = (X_AXES[x][0],) + tuple(key for spec in specs for _, key in spec.parts(run.records))
        for number, record in lines:
            check_numbers(f"{run.path}:{number}", record, keys)
    return loaded


def check_choice(what, value, choices):
    """Raise a TflmError naming `choices` unless `value` is one of them."""
    if value not in choices:
        raise TflmError(f"{what} must be one of {', '.join(choices) or 'none'}, got {value!r}")


def check_metrics(metrics):
    """`metrics` (a name or names) as a tuple of at least one name."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise TflmError("give at least one metric")
    return metrics


def available_metrics(runs):
    """The metrics every run's history holds: those of METRICS whose keys it has, then each other
    numeric key (less its "val_"), except the x axes."""
    x_keys = {key for key, _ in X_AXES.values()}

    def names(records):
        keys = {key[4:] if key.startswith("val_") else key for key, value in records[0].items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
        return {name for name, spec in METRICS.items() if spec.parts(records)} | (keys - x_keys)

    common = set.intersection(*(names(run.records) for run in runs))
    return [name for name in METRICS if name in common] + sorted(common - set(METRICS))


def metric_spec(metric, runs):
    """How to draw `metric` for `runs`: its METRICS entry, or the history keys METRIC and val_METRIC.
    A TflmError naming the metrics every run's history holds if it is not one of them."""
    choices = available_metrics(runs)
    if metric not in choices:
        holder = "the run's history holds" if len(runs) == 1 else "the history of every run given holds"
        raise TflmError(f"metric must be one of {', '.join(choices) or 'none'} (what {holder}), got {metric!r}")
    return METRICS.get(metric) or Metric(metric, metric, f"val_{metric}")


class TickFormatter(EngFormatter):
    """Engineering notation with the decimals each tick needs: 800k, 1M, 1.2M, 1.25M (EngFormatter
    with a fixed number of places labels 1.0M, 1.2M and 1.4M all "1M", or 800k as "800.0k")."""

    def __init__(self, places=3):
        super().__init__(places=places, sep="")

    def __call__(self, x, pos=None):
        """EngFormatter's label without trailing zeros after the decimal point."""
        label = super().__call__(x, pos)
        match = re.fullmatch(r"(.*\.\d*?)0*(\D*)", label)
        return match.group(1).rstrip(".") + match.group(2) if match else label

    def format_ticks(self, values):
        """The tick labels, with more places if ticks so close that 3 decimals cannot tell them apart."""
        labels = super().format_ticks(values)
        while len(set(labels)) < len(labels) and self.places < 9:
            self.places += 1
            labels = super().format_ticks(values)
        return labels


MAX_LISTED_STEPS = 5  # steps named in a warning about non-finite values


def non_finite_warnings(run, spec):
    """One line per history key of `spec` that holds NaN or infinite values in `run`, naming the steps."""
    lines = []
    for _, key in spec.parts(run.records):
        bad = [r.get("step", "?") for r in run.records if not math.isfinite(r[key])]
        if bad:
            listed = ", ".join(str(step) for step in bad[:MAX_LISTED_STEPS])
            listed += ", ..." if len(bad) > MAX_LISTED_STEPS else ""
            lines.append(f"{run.path}: {key} is NaN or infinite at {len(bad)} of {len(run.records)} evaluations "
                         f"(step {listed}); drawn as gaps in the curve")
    return lines


def draw_metric(ax, runs, metric, x="step"):
    """Draw `metric` of every run on `ax`: colour C0, C1, ... per run; train dashed, validation solid.
    A NaN or infinite value is a gap in its curve; returns a warning line per history key that has one."""
    spec, (x_key, x_label) = metric_spec(metric, runs), X_AXES[x]
    warnings = []
    for i, run in enumerate(runs):
        xs = [r[x_key] for r in run.records]
        warnings += non_finite_warnings(run, spec)
        for part, _ in spec.parts(run.records):
            style = "--" if part == "train" else "-"
            ax.plot(xs, spec.values(run.records, part), linestyle=style, color=f"C{i}", marker="o",
                    markersize=3, linewidth=1.6 if part == "validation" else 1.2,
                    alpha=1.0 if part == "validation" else 0.8, label=f"{run.name} {part}")
    ax.set_xlabel(x_label)
    classifiers = all("val_macro_f1" in run.records[0] for run in runs)
    ax.set_ylabel("accuracy of the predicted labels (%)" if metric == "accuracy" and classifiers else spec.label)
    if spec.log_scale:
        ax.set_yscale("log")
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))  # 20, not 2x10^1
        ax.grid(True, which="minor", alpha=0.12)
    if spec.percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    if x in ("tokens", "examples"):
        ax.xaxis.set_major_formatter(TickFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(x=0.02)
    return warnings


def legend_handles(runs):
    """One entry per run in its colour, then what dashed and solid mean."""
    handles = [Line2D([], [], color=f"C{i}", linewidth=2.5, label=run.name) for i, run in enumerate(runs)]
    return handles + [Line2D([], [], color="0.35", linestyle="--", label="train (mean since last eval)"),
                      Line2D([], [], color="0.35", linestyle="-", label="validation")]


def print_warning(line):
    """The default `warn` of plot_runs: the line on stderr."""
    print(f"tflm.plot: warning: {line}", file=sys.stderr, flush=True)


def plot_runs(runs, metrics=("accuracy",), x="step", names=None, title=None, warn=print_warning):
    """A Figure with one panel per metric (side by side) comparing `runs` (run directories).

    Each panel has 2 lines per run, labelled "<name> train" and "<name> validation"; the figure
    legend names each run once. Raises TflmError for a missing or malformed history. NaN or
    infinite values (a diverged run) are gaps in their curves, each history key that has them
    reported once through `warn` (a line naming the run, the key and the steps).
    """
    metrics = check_metrics(metrics)
    loaded = load_runs(runs, metrics, x, names)
    figure = Figure(figsize=(5.2 * len(metrics) + (1.6 if len(metrics) == 1 else 0), 4.2), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    warnings = []
    for ax, metric in zip(axes, metrics):
        warnings += [line for line in draw_metric(ax, loaded, metric, x) if line not in warnings]
    for line in warnings:
        warn(line)
    handles = legend_handles(loaded)
    if len(metrics) == 1:  # beside the panel: below it there is no room for a row of entries
        figure.legend(handles=handles, loc="outside right upper", frameon=False)
    else:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure, path, dpi=150):
    """Write `figure` to `path` (format from the extension, e.g. .png or .svg); returns `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    except OSError as error:
        raise TflmError(f"cannot write {path}: {error.strerror}") from None
    except ValueError as error:  # an unknown extension
        raise TflmError(f"cannot write {path}: {error}") from None
    return path
