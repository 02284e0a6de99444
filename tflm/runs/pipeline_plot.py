"""A pipeline run's schedule as a timeline: the library half of `python -m tflm.plot --pipeline RUN`.

One traced step of RUN/pipeline_trace.jsonl (tflm.runs.pipeline_trace) is drawn with a row per
stage (stage 0 on top) and a box per piece of work, forward and backward in two colours, each box
holding its micro-batch's number; the pale band behind each row is the stage's idle time, the
bubble. The last traced step is drawn by default: the first one's boxes mostly time XLA and
tf.function compiling. `bubble_line` compares the measured bubble with GPipe's (S-1)/(M+S-1).

On logical CPUs the stages share the same cores: they work at once, and the measured bubble
follows GPipe's figure, but overlapping work takes longer; on GPUs each stage has its own device.
Builds a `matplotlib.figure.Figure` without pyplot, as tflm.runs.plot does.
"""

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from tflm.errors import TflmError
from tflm.runs.pipeline_trace import measured_bubble, read_traces, trace_path
from tflm.training.pipeline import BACKWARD, FORWARD, bubble_fraction

COLOURS = {FORWARD: "C0", BACKWARD: "C1"}
IDLE_COLOUR = "0.9"
BOX_HEIGHT = 0.7
RECORD_KEYS = ("step", "stages", "microbatches", "schedule", "events")
EVENT_KEYS = ("stage", "kind", "microbatch", "start_s", "end_s")


def plot_pipeline(run_dir, step=None):
    """(Figure of the timeline, its trace record) of traced step `step` of a pipeline run (default: the last)."""
    record = traced_step(run_dir, step)
    return draw_timeline(record), record


def traced_step(run_dir, step=None):
    """The trace record of `step` (default: the last traced step); a TflmError naming the traced
    steps if `step` is not one of them."""
    records = read_traces(run_dir)
    if not records:
        raise TflmError(f"{trace_path(run_dir)}: no traced steps (the file is empty)")
    for record in records:
        check_record(run_dir, record)
    if step is None:
        return records[-1]
    for record in records:
        if record["step"] == step:
            return record
    traced = ", ".join(str(record["step"]) for record in records)
    raise TflmError(f"step {step} of {run_dir} was not traced; traced steps: {traced}")


def check_record(run_dir, record):
    """Raise a TflmError naming the trace file unless `record` holds what a timeline needs."""
    where = f"{trace_path(run_dir)}: step {record.get('step', '?')}"
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise TflmError(f"{where}: no {missing[0]!r}")
    if not record["events"]:
        raise TflmError(f"{where}: no events")
    for event in record["events"]:
        missing = [key for key in EVENT_KEYS if key not in event]
        if missing or event["kind"] not in COLOURS or not 0 <= event["stage"] < record["stages"]:
            raise TflmError(f"{where}: malformed event {event}")


def bubble_line(record):
    """One line: the measured bubble fraction of a traced step beside GPipe's (S-1)/(M+S-1)."""
    stages, microbatches = record["stages"], record["microbatches"]
    return (f"bubble: measured {measured_bubble(record):.3f}, GPipe's (S-1)/(M+S-1) = "
            f"{bubble_fraction(stages, microbatches):.3f} ({describe(record)}, step {record['step']})")


def describe(record):
    """"2 stages, 8 micro-batches, gpipe"."""
    stages, microbatches = record["stages"], record["microbatches"]
    return (f"{stages} stage{'s' * (stages != 1)}, {microbatches} micro-batch{'es' * (microbatches != 1)}, "
            f"{record['schedule']}")


def draw_timeline(record):
    """A Figure with one row per stage and one box per forward or backward of a micro-batch."""
    stages, events = record["stages"], record["events"]
    origin = min(event["start_s"] for event in events)
    span = max(event["end_s"] for event in events) - origin
    figure = Figure(figsize=(min(14.0, 8.0 + 0.2 * len(events) / stages), 1.8 + 0.6 * stages),
                    layout="constrained")
    ax = figure.subplots()
    for k in range(stages):
        ax.add_patch(Rectangle((0, k - BOX_HEIGHT / 2), span, BOX_HEIGHT, facecolor=IDLE_COLOUR, gid="idle"))
    for event in events:
        draw_box(ax, event, event["start_s"] - origin, span)
    devices = record.get("devices") or [""] * stages
    ax.set_yticks(range(stages), [f"stage {k}\n{device}".strip() for k, device in enumerate(devices)])
    ax.set_ylim(stages - 0.5, -0.5)  # stage 0 on top
    ax.set_xlim(0, span * 1.01 or 1.0)
    ax.set_xlabel("time since the step's first work (s)")
    ax.set_title(f"Pipeline schedule of step {record['step']}: {describe(record)}\n"
                 f"stages idle {measured_bubble(record):.0%} of the step (GPipe's (S-1)/(M+S-1): "
                 f"{bubble_fraction(stages, record['microbatches']):.0%})", fontsize=10)
    figure.legend(handles=[Patch(color=COLOURS[FORWARD], label="forward"),
                           Patch(color=COLOURS[BACKWARD], label="backward"),
                           Patch(color=IDLE_COLOUR, label="idle (the bubble)")],
                  loc="outside lower center", ncols=3, frameon=False)
    return figure


def draw_box(ax, event, start, span):
    """One piece of work: a box in its kind's colour on its stage's row, its micro-batch's number inside."""
    width, row = event["end_s"] - event["start_s"], event["stage"]
    ax.add_patch(Rectangle((start, row - BOX_HEIGHT / 2), width, BOX_HEIGHT, facecolor=COLOURS[event["kind"]],
                           edgecolor="white", linewidth=0.5, gid=event["kind"]))
    fits = span > 0 and width / span > 0.012  # a number wider than its box would cover its neighbours
    ax.text(start + width / 2, row, str(event["microbatch"]), ha="center", va="center", color="white",
            fontsize=8 if fits else 5, clip_on=True)
