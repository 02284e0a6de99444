"""`tflm.plot --pipeline RUN`: a traced step as a timeline (a row per stage, a box per forward and
backward), the measured bubble beside GPipe's, and bad input as one line with nothing written."""

import json

import pytest
from matplotlib.image import imread

from conftest import run_tflm
from tflm import plot as plot_command
from tflm.runs.pipeline_plot import plot_pipeline
from tflm.training.pipeline import stage_orders


def sequential_events(stages, microbatches, schedule="gpipe", seconds=1.0):
    """A step's events as logical CPUs give them: one piece of work at a time, each `seconds` long,
    in pipeline order (a stage's work waits for the previous stage's forward, the next one's backward)."""
    orders, done, clock, events = stage_orders(schedule, stages, microbatches), set(), 0.0, []
    while any(orders):
        for k, order in enumerate(orders):
            if order and ready(order[0], k, stages, done):
                kind, m = order.pop(0)
                events.append({"stage": k, "kind": kind, "microbatch": m, "start_s": clock, "end_s": clock + seconds})
                done.add((k, kind, m))
                clock += seconds
                break
    return events


def ready(work, k, stages, done):
    """Whether stage k can do `work` (kind, micro-batch) now."""
    kind, m = work
    if kind == "forward":
        return k == 0 or (k - 1, "forward", m) in done
    return (k, "forward", m) in done and (k == stages - 1 or (k + 1, "backward", m) in done)


def write_trace(run_dir, records):
    """A run directory holding pipeline_trace.jsonl with `records` (dicts as JSON lines, strings verbatim)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    (run_dir / "pipeline_trace.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(run_dir)


def trace_record(step, stages=2, microbatches=2, schedule="gpipe", seconds=1.0):
    """A traced step as the pipeline trainer writes it."""
    return {"step": step, "time": 1.7e9 + step, "stages": stages, "microbatches": microbatches,
            "schedule": schedule, "devices": [f"/device:CPU:{k}" for k in range(stages)],
            "device_bytes": [1000] * stages, "events": sequential_events(stages, microbatches, schedule, seconds)}


@pytest.fixture
def traced_run(tmp_path):
    """A 2-stage, 2-micro-batch gpipe run with 3 traced steps; the first one (compiling) 10 times slower."""
    return write_trace(tmp_path / "run", [trace_record(1, seconds=10.0), trace_record(2), trace_record(3)])


def boxes(figure, kind):
    """The work boxes of `kind` ("forward" or "backward") in a timeline."""
    return [patch for patch in figure.axes[0].patches if patch.get_gid() == kind]


def test_the_timeline_has_a_row_per_stage_and_a_box_per_piece_of_work(tmp_path):
    run = write_trace(tmp_path / "run", [trace_record(1, stages=3, microbatches=4, schedule="1f1b")])
    figure, record = plot_pipeline(run)
    (ax,) = figure.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == [f"stage {k}\n/device:CPU:{k}" for k in range(3)]
    forward, backward = boxes(figure, "forward"), boxes(figure, "backward")
    assert len(forward) == len(backward) == 3 * 4
    assert forward[0].get_facecolor() != backward[0].get_facecolor()
    for patch, event in zip(sorted(forward + backward, key=lambda p: (p.get_x(), p.get_y())), record["events"]):
        assert patch.get_x() == event["start_s"] and patch.get_width() == event["end_s"] - event["start_s"]
        assert patch.get_y() + patch.get_height() / 2 == pytest.approx(event["stage"])  # on its stage's row
    numbers = sorted(int(text.get_text()) for text in ax.texts)
    assert numbers == sorted(list(range(4)) * 6)  # each micro-batch's number in its 6 boxes
    assert "3 stages, 4 micro-batches, 1f1b" in ax.get_title()
    assert [patch.get_gid() for patch in ax.patches].count("idle") == 3  # the bubble behind each row


def test_the_last_traced_step_is_drawn_unless_another_is_chosen(traced_run):
    assert plot_pipeline(traced_run)[1]["step"] == 3
    figure, record = plot_pipeline(traced_run, step=1)
    assert record["step"] == 1 and max(patch.get_x() for patch in boxes(figure, "backward")) == 70.0


def test_cli_prints_the_measured_bubble_beside_gpipes_and_writes_the_image(traced_run, tmp_path):
    out = tmp_path / "plots" / "timeline.png"
    result = run_tflm("plot", "--pipeline", traced_run, "-o", str(out))
    assert result.returncode == 0, result.stderr
    # 8 one-second pieces of work, one at a time on 2 stages: busy 8 of 2 x 8 stage-seconds
    assert result.stdout.splitlines() == [
        "bubble: measured 0.500, GPipe's (S-1)/(M+S-1) = 0.333 (2 stages, 2 micro-batches, gpipe, step 3)", str(out)]
    height, width, _ = imread(out).shape
    assert width > 2 * height


def plot_main(capsys, *argv):
    """(exit code, stdout, stderr) of `python -m tflm.plot argv...`, run in this process."""
    try:
        code = plot_command.main(list(argv))
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_step_chooses_a_traced_step(traced_run, tmp_path, capsys):
    code, out, _ = plot_main(capsys, "--pipeline", traced_run, "--step", "2", "-o", str(tmp_path / "t.png"))
    assert code == 0 and out.splitlines()[0].endswith("(2 stages, 2 micro-batches, gpipe, step 2)")


@pytest.mark.parametrize("case", ["no trace", "step not traced", "empty trace", "record without events",
                                  "runs and --pipeline", "nothing to draw", "--step without --pipeline",
                                  "--metric with --pipeline"])
def test_bad_input_is_one_line_exit_2_and_no_image(case, traced_run, tmp_path, capsys):
    untraced = tmp_path / "untraced"
    untraced.mkdir()
    without_events = {key: value for key, value in trace_record(1).items() if key != "events"}
    args, message = {
        "no trace": (["--pipeline", str(untraced)], f"{untraced} has no pipeline trace (pipeline_trace.jsonl); "
                     "train it with runtime.pipeline_stages >= 2 and runtime.pipeline_trace_steps >= 1"),
        "step not traced": (["--pipeline", traced_run, "--step", "4"],
                            f"step 4 of {traced_run} was not traced; traced steps: 1, 2, 3"),
        "empty trace": (["--pipeline", write_trace(tmp_path / "empty", [])],
                        f"{tmp_path}/empty/pipeline_trace.jsonl: no traced steps (the file is empty)"),
        "record without events": (["--pipeline", write_trace(tmp_path / "bad", [without_events])],
                                  f"{tmp_path}/bad/pipeline_trace.jsonl: step 1: no 'events'"),
        "runs and --pipeline": ([traced_run, "--pipeline", traced_run],
                                "give RUN_DIRs (curves) or --pipeline RUN (a timeline), not both"),
        "nothing to draw": ([], "give at least one RUN_DIR (or --pipeline RUN)"),
        "--step without --pipeline": ([traced_run, "--step", "1"],
                                      "--step chooses a traced step of --pipeline RUN; give --pipeline too"),
        "--metric with --pipeline": (["--pipeline", traced_run, "--metric", "loss"],
                                     "--metric, --x, --name and --title draw curves; --pipeline draws a timeline "
                                     "without them"),
    }[case]
    out = tmp_path / "timeline.png"
    code, stdout, stderr = plot_main(capsys, *args, "-o", str(out))
    assert (code, stdout, stderr) == (2, "", f"tflm: error: {message}\n")
    assert not out.exists()
