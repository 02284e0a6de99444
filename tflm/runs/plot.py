"""`python -m tflm.plot`: training and validation curves of runs, from their history.jsonl.

    python -m tflm.plot runs/lstm runs/transformer -o curves.png
    python -m tflm.plot runs/lstm --metric loss --metric perplexity --x tokens -o curves.png
    python -m tflm.plot runs/classifier --metric accuracy --metric macro_f1 -o classifier.png

Each run gets one colour; its training curve is dashed and its validation curve solid. The
training value at an evaluation is the mean over the steps since the previous one, so it lags
the validation value by half an interval. Several `--metric`s are drawn side by side. A NaN or
infinite value (a run that diverged) is a gap in its curve, and a warning line on stderr names
the run, the history key and the steps.

The functions work without pyplot (they build a `matplotlib.figure.Figure`), so notebooks import
them and scripts never open a window: `plot_runs(...)` returns the figure, `save_figure` writes it.
"""

import dataclasses
import json
import math
import os
import re
import sys

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogFormatter, PercentFormatter

from tflm.errors import TflmError

# As tflm.run_dir.history_path; not imported from there, which would load TensorFlow (seconds) to draw a plot.
HISTORY_FILE = "history.jsonl"


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


def nats_to_bits(nats):
    return nats / math.log(2)


def perplexity(nats):
    return math.exp(min(nats, 50.0))  # as tflm.trainer: exp(50) is "diverged", not an overflow


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
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as error:
        raise TflmError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TflmError(f"{where}: not valid JSON ({error.msg}): {line.strip()[:60]!r}") from None
        if not isinstance(record, dict):
            raise TflmError(f"{where}: expected a JSON object, found {type(record).__name__}")
        for key in keys:
            if key not in record:
                raise TflmError(f"{where}: no {key!r} (has {', '.join(sorted(record)) or 'no keys'})")
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TflmError(f"{where}: {key!r} must be a number, got {value!r}")
        records.append(record)
    if not records:
        raise TflmError(f"{path}: no evaluations yet (the file is empty)")
    return records


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
    keys = (X_AXES[x][0],) + tuple(k for m in metrics for k in (METRICS[m].train_key, METRICS[m].val_key))
    return [Run(name, find_history(run), load_history(run, keys)) for run, name in zip(runs, names)]


def check_choice(what, value, choices):
    if value not in choices:
        raise TflmError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def check_metrics(metrics):
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise TflmError("give at least one metric")
    for metric in metrics:
        check_choice("metric", metric, METRICS)
    return metrics


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
    for key in (spec.train_key, spec.val_key):
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
    spec, (x_key, x_label) = METRICS[metric], X_AXES[x]
    warnings = []
    for i, run in enumerate(runs):
        xs = [r[x_key] for r in run.records]
        warnings += non_finite_warnings(run, spec)
        for part, style in (("train", "--"), ("validation", "-")):
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
