"""Curves from history.jsonl: one colour per run, train dashed, validation solid, units on the axes,
and a malformed history named by file and line."""

import json
import math
import os

import pytest
from matplotlib.image import imread

from conftest import run_tflm
from tflm.runs import plot
from tflm.errors import TflmError


def record(step, val_loss):
    """One history line as a language model's training writes it."""
    values = {"step": step, "tokens_seen": step * 768, "elapsed_s": step * 0.1, "loss": val_loss - 0.05,
              "accuracy": 0.6 - val_loss / 10, "val_loss": val_loss, "val_accuracy": 0.55 - val_loss / 10,
              "val_perplexity": math.exp(val_loss), "tokens_per_sec": 7680.0,
              "bits_per_byte": (val_loss - 0.05) / math.log(2) / 1.5, "val_bits_per_byte": val_loss / math.log(2) / 1.5}
    return values


def write_run(path, lines):
    """A run directory whose history.jsonl holds `lines` (dicts as JSON, strings verbatim)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "history.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


@pytest.fixture
def two_runs(tmp_path):
    lstm = write_run(tmp_path / "lstm", [record(s, 3.0 - s / 100) for s in (50, 100, 150)])
    transformer = write_run(tmp_path / "transformer", [record(s, 2.8 - s / 80) for s in (50, 100, 150)])
    return lstm, transformer


def test_each_run_has_one_colour_train_dashed_and_validation_solid(two_runs):
    figure = plot.plot_runs(two_runs, metrics=["accuracy"])
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["lstm train", "lstm validation", "transformer train", "transformer validation"]
    assert lines["lstm train"].get_color() == lines["lstm validation"].get_color()
    assert lines["lstm train"].get_color() != lines["transformer train"].get_color()
    assert lines["lstm train"].get_linestyle() == "--" and lines["lstm validation"].get_linestyle() == "-"
    assert list(lines["lstm validation"].get_ydata()) == pytest.approx([0.55 - v / 10 for v in (2.5, 2.0, 1.5)])
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()][:2] == ["lstm", "transformer"]
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "next-token accuracy (%)"


def test_metrics_are_side_by_side_with_units_and_perplexity_on_a_log_scale(two_runs):
    figure = plot.plot_runs(two_runs, metrics=["loss", "perplexity", "bits_per_char", "bits_per_byte"], x="tokens")
    loss, ppl, bpc, bpb = figure.axes
    assert loss.get_ylabel() == "cross-entropy loss (nats/token)" and loss.get_yscale() == "linear"
    assert ppl.get_yscale() == "log" and "perplexity" in ppl.get_ylabel()
    assert bpc.get_ylabel().startswith("cross-entropy (bits/token")
    assert bpb.get_ylabel() == "bits per UTF-8 byte (compares tokenizers)"
    lstm_bpb = next(line for line in bpb.get_lines() if line.get_label() == "lstm validation")
    assert list(lstm_bpb.get_ydata()) == pytest.approx([v / math.log(2) / 1.5 for v in (2.5, 2.0, 1.5)])
    assert {ax.get_xlabel() for ax in figure.axes} == {"tokens seen"}
    lstm_val = next(line for line in ppl.get_lines() if line.get_label() == "lstm validation")
    assert list(lstm_val.get_xdata()) == [50 * 768, 100 * 768, 150 * 768]
    assert list(lstm_val.get_ydata()) == pytest.approx([math.exp(v) for v in (2.5, 2.0, 1.5)])
    lstm_bpc = next(line for line in bpc.get_lines() if line.get_label() == "lstm validation")
    assert list(lstm_bpc.get_ydata()) == pytest.approx([v / math.log(2) for v in (2.5, 2.0, 1.5)])


def test_cli_writes_a_png_with_panels_side_by_side(two_runs, tmp_path):
    out = tmp_path / "plots" / "curves.png"
    result = run_tflm("plot", *two_runs, "--metric", "accuracy", "--metric", "loss", "--x", "time",
                      "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    height, width, _ = imread(out).shape
    assert width > 2 * height * 0.9  # two panels in a row, legend below


def test_runs_with_the_same_directory_name_get_distinct_legend_names(tmp_path):
    a = write_run(tmp_path / "a" / "run", [record(10, 2.0)])
    b = write_run(tmp_path / "b" / "run", [record(10, 2.1)])
    figure = plot.plot_runs([a, b])
    assert [t.get_text() for t in figure.legends[0].get_texts()][:2] == [a, b]
    named = plot.plot_runs([a, b], names=["default", "mirrored"])
    assert [t.get_text() for t in named.legends[0].get_texts()][:2] == ["default", "mirrored"]


@pytest.mark.parametrize("bad_line, message", [
    ('{"step": 100, "loss": 2.0', "not valid JSON"),
    ('[1, 2]', "expected a JSON object, found list"),
    ("missing val_loss", "no 'val_loss'"),
    ("string loss", "'loss' must be a number, got '2.0'"),
])
def test_malformed_history_line_is_named_by_file_and_line(tmp_path, bad_line, message):
    broken = {"missing val_loss": json.dumps({k: v for k, v in record(100, 2.0).items() if k != "val_loss"}),
              "string loss": json.dumps({**record(100, 2.0), "loss": "2.0"})}.get(bad_line, bad_line)
    run = write_run(tmp_path / "run", [record(50, 2.5), "", broken])
    with pytest.raises(TflmError) as error:
        plot.plot_runs([run], metrics=["loss"])
    assert str(error.value).startswith(f"{os.path.join(run, 'history.jsonl')}:3: ")
    assert message in str(error.value)


def test_missing_or_empty_history_says_which_file(tmp_path):
    (tmp_path / "fresh").mkdir()
    with pytest.raises(TflmError, match=r"fresh/history.jsonl: missing"):
        plot.plot_runs([str(tmp_path / "fresh")])
    empty = write_run(tmp_path / "empty", [])
    with pytest.raises(TflmError, match=r"empty/history.jsonl: no evaluations yet"):
        plot.plot_runs([empty])
    with pytest.raises(TflmError, match=r"nowhere: no such run directory"):
        plot.plot_runs([str(tmp_path / "nowhere")])


def test_cli_malformed_history_is_one_line_and_exit_2(tmp_path):
    run = write_run(tmp_path / "run", [record(50, 2.5), "not json"])
    out = tmp_path / "curves.png"
    result = run_tflm("plot", run, "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"tflm: error: {run}/history.jsonl:2: not valid JSON "
                                     f"(Expecting value): 'not json'")
    assert not out.exists()


def test_token_ticks_have_the_decimals_that_tell_them_apart(tmp_path):
    records = [{**record(s, 2.0), "tokens_seen": 1_000_000 + s * 1000} for s in range(0, 401, 50)]
    figure = plot.plot_runs([write_run(tmp_path / "run", records)], metrics=["loss"], x="tokens")
    figure.canvas.draw()
    ax = figure.axes[0]
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert len(set(labels)) == len(labels) > 2 and {"1M", "1.2M", "1.25M"} <= set(labels)
    scale = {"k": 1e3, "M": 1e6}
    assert [float(label[:-1]) * scale[label[-1]] for label in labels] == pytest.approx(list(ax.get_xticks()))
    wide = plot.plot_runs([write_run(tmp_path / "wide", [record(s, 2.0) for s in (0, 1000, 2000)])],
                          metrics=["loss"], x="tokens")
    wide.canvas.draw()
    assert "1M" in [label.get_text() for label in wide.axes[0].get_xticklabels()]  # no decimals when none is needed


def test_a_nan_validation_loss_is_a_gap_in_the_curve_and_a_warning(tmp_path):
    records = [record(s, 3.0 - s / 100) for s in (50, 100, 150, 200)]
    records[1]["val_loss"] = float("nan")
    records[2]["val_loss"] = float("inf")
    run = write_run(tmp_path / "run", records)
    warnings = []
    figure = plot.plot_runs([run], metrics=["loss", "perplexity"], warn=warnings.append)
    for ax in figure.axes:
        validation = next(line for line in ax.get_lines() if line.get_label() == "run validation")
        values = list(validation.get_ydata())
        assert math.isnan(values[1]) and math.isnan(values[2]) and all(map(math.isfinite, values[::3]))
    assert warnings == [f"{run}/history.jsonl: val_loss is NaN or infinite at 2 of 4 evaluations (step 100, 150); "
                        "drawn as gaps in the curve"]
    result = run_tflm("plot", run, "--metric", "loss", "-o", str(tmp_path / "curves.png"))
    assert result.returncode == 0 and (tmp_path / "curves.png").exists()
    assert result.stderr.strip() == f"tflm.plot: warning: {warnings[0]}"


def test_any_metric_the_history_holds_is_plotted_without_a_table_entry(tmp_path):
    run = write_run(tmp_path / "run", [{**record(s, 2.0), "grad_norm": s / 10, "val_grad_norm": s / 20}
                                       for s in (50, 100)])
    figure = plot.plot_runs([run], metrics=["grad_norm", "tokens_per_sec"])
    norm, speed = figure.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in norm.get_lines()}
    assert lines == {"run train": [5.0, 10.0], "run validation": [2.5, 5.0]}
    assert norm.get_ylabel() == "grad_norm"
    assert [line.get_label() for line in speed.get_lines()] == ["run train"]  # no val_tokens_per_sec: no curve


def test_an_unknown_metric_is_one_line_naming_what_every_run_holds(tmp_path):
    lm = write_run(tmp_path / "lm", [record(50, 2.0)])
    classifier = write_run(tmp_path / "classifier", [{"step": 5, "examples_seen": 80, "elapsed_s": 1.0, "loss": 0.7,
                                                      "accuracy": 0.5, "macro_f1": 0.4, "val_loss": 0.6,
                                                      "val_accuracy": 0.6, "val_macro_f1": 0.5}])
    with pytest.raises(TflmError) as error:
        plot.plot_runs([lm, classifier], metrics=["macro_f1"])
    assert str(error.value) == ("metric must be one of accuracy, loss, perplexity, bits_per_char (what the history "
                                "of every run given holds), got 'macro_f1'")
    out = tmp_path / "curves.png"
    result = run_tflm("plot", lm, "--metric", "gradnorm", "-o", str(out))
    assert result.returncode == 2 and not out.exists()
    assert result.stderr == ("tflm: error: metric must be one of accuracy, loss, perplexity, bits_per_char, "
                             "bits_per_byte, tokens_per_sec (what the run's history holds), got 'gradnorm'\n")
