"""Pretrain -> fine-tune -> serve: --init-from starts a new run from another's weights, a classifier
trains alike under every strategy, its export classifies as tflm does, and bad input is one line."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import (GROUPS, checkpointless_run, labelled_rows, max_weight_difference, run_tflm, small_config,
                      write_config, write_csv, write_jsonl)
from tflm.runs import run_dir as runs
from tflm.tasks.classify import macro_f1
from tflm.config import updated
from tflm.train import main
from tflm.training.train import train

COMPARED_STEPS = 8
TAB = "\t"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Training CSV and validation JSONL files of the three-label task."""
    tmp = tmp_path_factory.mktemp("labelled")
    return write_csv(tmp / "train.csv", labelled_rows(200, 0)), write_jsonl(tmp / "val.jsonl", labelled_rows(30, 1))


def classify_config(train_path, val_path, **sections):
    """A small LSTM classifier with dropout, a frozen start and balanced class weights."""
    config = small_config("lstm", model={"dropout": 0.1},
                          data={"source": "files", "paths": [train_path], "validation_paths": [val_path]},
                          train={"steps": COMPARED_STEPS, "eval_every": 2, "learning_rate": 0.01},
                          task={"type": "classify", "pooling": "mean", "freeze_backbone_steps": 3,
                                "class_weights": "balanced"})
    return updated(config, **sections)


@pytest.fixture(scope="module")
def source_lm(tmp_path_factory):
    """A language model run (the embedded manual) to start from."""
    run_dir = str(tmp_path_factory.mktemp("source") / "lm")
    return train(small_config("lstm", train={"steps": 6, "eval_every": 6}), run_dir)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, labelled):
    """The one-device classifier run the other strategies are compared with."""
    return train(classify_config(*labelled), str(tmp_path_factory.mktemp("one_device") / "run"))


def test_macro_f1_is_the_mean_over_classes_that_occur():
    assert macro_f1([[2, 0], [0, 2]]) == 1.0
    assert macro_f1([[1, 1], [0, 0]]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1([[0, 0, 0], [0, 3, 0], [0, 0, 0]]) == 1.0  # classes absent in truth and prediction


@pytest.mark.parametrize("label,shown", [("true", "true"), ("NaN", "NaN"), ("1e400", "Infinity"),
                                         ("0.5", "0.5"), ('" "', "' '"), ("[1]", "[1]")])
def test_a_jsonl_label_that_is_no_string_or_integer_is_one_line_naming_file_and_line(tmp_path, label, shown):
    from tflm.errors import TflmError
    from tflm.data.labelled import read_labelled

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "abc", "label": "a"}\n{"text": "def", "label": %s}\n' % label, encoding="utf-8")
    config = updated(small_config(), data={"source": "files", "paths": [str(path)]}, task={"type": "classify"})
    with pytest.raises(TflmError) as error:
        read_labelled(config.data, config.task)
    assert str(error.value) == (f"{path}:2: the label 'label' must be a non-empty string or an integer, got {shown}")


def test_integer_labels_written_as_floats_are_the_same_class(tmp_path):
    from tflm.data.labelled import read_labelled

    rows = [{"text": f"text {i}", "label": label} for i, label in enumerate([1, 1.0, 2, 2.0, " 1 ", "2"] * 2)]
    config = updated(small_config(), data={"source": "files", "paths": [write_jsonl(tmp_path / "t.jsonl", rows)],
                                           "validation_fraction": 0.5}, task={"type": "classify"})
    data = read_labelled(config.data, config.task)
    assert data.labels == ("1", "2") and len(data.train) + len(data.validation) == 12


@pytest.mark.slow
def test_init_from_reproduces_the_source_weights_then_trains_on_new_data(tmp_path, source_lm):
    from tflm.serving.loading import load_run
    from tflm.runs.init_from import check_source, restore_source
    from tflm.models.build import build_model

    new_text = tmp_path / "new.txt"
    new_text.write_text("".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(600)), encoding="utf-8")
    config = small_config("lstm", data={"source": "files", "paths": [str(new_text)]},
                          train={"steps": 12, "eval_every": 4, "init_from": source_lm, "learning_rate": 0.01})
    source = check_source(config, str(tmp_path / "new"), resuming=False)
    model = build_model(config.model, load_run(source_lm).tokenizer.vocabulary_size, config.data.seq_len, seed=7)
    restore_source(model, source)  # what a new run does at step 0
    expected = load_run(source_lm).model.weights
    assert len(model.weights) == len(expected)
    for got, want in zip(model.weights, expected):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

    run_dir = train(config, str(tmp_path / "new"))
    record = json.load(open(os.path.join(run_dir, "init_from.json")))
    assert record["step"] == 6 and record["checkpoint"].endswith("ckpt-6")
    assert runs.load_tokenizer(run_dir).fingerprint() == record["tokenizer_fingerprint"]
    history = runs.read_history(run_dir)
    assert history[-1]["loss"] < history[0]["loss"]
    # Resuming it resumes it, not the source.
    resumed = train(updated(config, train={"steps": 16}), run_dir)
    assert [r["step"] for r in runs.read_history(resumed)] == [4, 8, 12, 16]


@pytest.mark.slow
def test_classifier_trains_alike_on_one_device_two_cpus_and_two_workers(tmp_path, labelled, classifier_run):
    history = runs.read_history(classifier_run)
    assert list(history[0]) == ["step", "examples_seen", "elapsed_s", "loss", "accuracy", "macro_f1", "val_loss",
                                "val_accuracy", "val_macro_f1", "val_confusion", "examples_per_sec"]
    assert history[-1]["val_accuracy"] > 0.5 and history[-1]["loss"] < history[0]["loss"]
    assert np.sum(history[-1]["val_confusion"]) == 30
    assert json.load(open(os.path.join(classifier_run, "labels.json")))["labels"] == sorted(GROUPS)

    config = classify_config(*labelled)
    mirrored = updated(config, runtime={"strategy": "mirrored", "logical_cpus": 2})
    result = run_tflm("train", "--config", write_config(tmp_path / "m.yaml", mirrored),
                      "--run-dir", str(tmp_path / "mirrored"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(str(tmp_path / "mirrored"), classifier_run)

    result = run_tflm("launch", "--workers", "2", "--", "--config", write_config(tmp_path / "c.yaml", config),
                      "--run-dir", str(tmp_path / "workers"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "CollectiveAllReduceStrategy, 2 replica(s)" in result.stdout
    assert_same_run(str(tmp_path / "workers"), classifier_run)


def assert_same_run(run_dir, reference):
    """Training losses at every evaluation and the final weights agree to 1e-4."""
    losses = [r["loss"] for r in runs.read_history(run_dir)]
    expected = [r["loss"] for r in runs.read_history(reference)]
    assert len(losses) == len(expected) == COMPARED_STEPS // 2
    for a, b in zip(losses, expected):
        assert abs(a - b) <= 1e-4 * abs(b), (losses, expected)
    assert max_weight_difference(run_dir, reference) <= 1e-4


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    texts, path = json.loads(sys.argv[1])
    out = tf.saved_model.load(path).signatures["classify"](texts=tf.constant(texts))
    print(json.dumps({"labels": [x.decode() for x in out["labels"].numpy()],
                      "label_ids": out["label_ids"].numpy().tolist(),
                      "probabilities": out["probabilities"].numpy().tolist(),
                      "modules": sorted({m.split(".")[0] for m in sys.modules} & {"keras_nlp", "keras_hub", "tflm"})}))
""")


@pytest.mark.slow
def test_exported_classify_signature_matches_tflm_classify(tmp_path, classifier_run):
    from tflm.serving.classifying import classify_texts
    from tflm.serving.export import export_run
    from tflm.serving.loading import load_run
    from tflm.serving.warmup import read_warmup_requests

    path = export_run(classifier_run, str(tmp_path / "models"), "clf")
    assert os.path.basename(path) == "1"
    assert [name for name, _ in read_warmup_requests(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))] \
        == ["classify", "serving_default"]
    texts = ["abc dea", "fgh ij", "klmno " * 40, "zzz", ""]  # one longer than seq_len, one empty
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps([texts, path])], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["modules"] == []
    expected = classify_texts(load_run(classifier_run), texts)
    assert served["labels"] == [r["label"] for r in expected]
    assert served["label_ids"] == [r["label_id"] for r in expected]
    np.testing.assert_allclose(served["probabilities"], [list(r["probabilities"].values()) for r in expected],
                               atol=1e-5)

    result = run_tflm("classify", "--run-dir", classifier_run, "--json", "abc dea")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] == expected[0]["label"]


CLASSIFY_ARGS = ["--set", "task.type=classify", "--set", "data.source=files", "--set", "data.seq_len=32"] + [
    arg for key, value in small_config("lstm").to_dict()["model"].items()  # the source run's model
    for arg in ("--set", f"model.{key}={value}")]


def bad_input_cases(tmp, labelled):
    """(args, message) of inputs that must fail before anything is written."""
    train_path, val_path = labelled
    rows = labelled_rows(40, 2)
    no_checkpoint = checkpointless_run(tmp / "no_checkpoint", small_config("lstm"))
    unseen = write_jsonl(tmp / "unseen.jsonl", rows[:3] + [{"text": "abc", "label": "delta"}])
    empty = write_csv(tmp / "empty.csv", rows[:5] + [{"text": "  ", "label": "alpha"}] + rows[5:])
    return [
        ([*CLASSIFY_ARGS, "--set", f"data.paths={write_csv(tmp / 'cols.csv', rows, ('body', 'label'))}",
          "--set", "task.text_field=text"], "cols.csv:2: no text column 'text' (task.text_field; it has: body, label)"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={write_csv(tmp / 'nolabel.tsv', rows, ('text',), TAB)}"],
         "nolabel.tsv:2: no label column 'label'"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={train_path}", "--set", f"data.validation_paths={unseen}"],
         "unseen.jsonl:4: label 'delta' is in validation but never in training"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={write_csv(tmp / 'one.csv', [dict(r, label='x') for r in rows])}"],
         "the training split has a single class ('x')"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={empty}"], "empty.csv:7: empty text"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={train_path}", "--init-from", str(tmp / "nowhere")],
         "is not a tflm run directory"),
        ([*CLASSIFY_ARGS, "--set", f"data.paths={train_path}", "--init-from", no_checkpoint],
         "has no checkpoint yet; train it first"),
        (["--set", "task.type=classify"], "task.type=classify needs labelled data"),
    ]


def assert_refused(tmp_path, capsys, args, message):
    """`python -m tflm.train args --run-dir tmp_path/run` prints one line with `message`, exits 2
    and writes nothing."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (args, err)
    assert err.startswith("tflm: error: ") and err.count("\n") == 1 and message in err, (message, err)
    assert not run_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tflm-new")]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, labelled):
    for args, message in bad_input_cases(tmp_path, labelled):
        assert_refused(tmp_path, capsys, args, message)


@pytest.mark.slow
def test_a_source_run_of_another_model_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, labelled, source_lm):
    assert_refused(tmp_path, capsys, [*CLASSIFY_ARGS, "--set", f"data.paths={labelled[0]}", "--set",
                                      "model.lstm_units=16", "--init-from", source_lm],
                   "the source run has model.lstm_units=32, this run 16")


@pytest.mark.slow
def test_init_from_the_run_being_resumed_is_refused(capsys, source_lm):
    before = open(runs.history_path(source_lm)).read()
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", "model.type=lstm", "--init-from", source_lm, "--run-dir", source_lm])
    assert exit_info.value.code == 2
    assert "is the run directory itself" in capsys.readouterr().err
    assert open(runs.history_path(source_lm)).read() == before


def copy_checkpoint(run_dir, step, new_step, values=lambda name, value: value):
    """Write ckpt-`new_step` of a run: ckpt-`step`'s values under the same names, changed by `values`."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints", f"ckpt-{step}"))
    names = sorted(reader.get_variable_to_dtype_map())
    tf.raw_ops.SaveV2(prefix=os.path.join(run_dir, "checkpoints", f"ckpt-{new_step}"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=[values(n, reader.get_tensor(n)) for n in names])


@pytest.fixture(scope="module")
def damaged_source(tmp_path_factory, source_lm):
    """source_lm as trained with data.vocab_size=500 (its character tokenizer has fewer ids than
    either 500 or the default, so training with 500 gives this same run), with two newer
    checkpoints that cannot be used: ckpt-9 holds NaN weights, ckpt-12 has a truncated data file."""
    run_dir = str(tmp_path_factory.mktemp("damaged") / "source")
    shutil.copytree(source_lm, run_dir, ignore=shutil.ignore_patterns("lock"))
    config = open(os.path.join(run_dir, "config.yaml")).read()
    open(os.path.join(run_dir, "config.yaml"), "w").write(config.replace("vocab_size: 1000 ", "vocab_size: 500  "))
    assert runs.read_config(run_dir).data.vocab_size == 500
    nan = lambda name, value: np.full_like(value, np.nan) if np.asarray(value).dtype.kind == "f" else value  # noqa: E731
    copy_checkpoint(run_dir, 6, 9, nan)
    copy_checkpoint(run_dir, 6, 12)
    data = os.path.join(run_dir, "checkpoints", "ckpt-12.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    return run_dir


TINY_RUN = ["--set", "data.seq_len=32", "--set", "train.steps=2", "--set", "train.eval_every=2",
            "--set", "train.global_batch_size=8", "--set", "train.eval_batches=2"]


@pytest.mark.slow
def test_init_from_takes_what_it_is_not_given_from_the_source_and_skips_unusable_checkpoints(
        tmp_path, capsys, damaged_source):
    run_dir = str(tmp_path / "new")
    assert main([*TINY_RUN, "--init-from", damaged_source, "--run-dir", run_dir]) == 0
    out, err = capsys.readouterr()
    assert (f"tflm: --init-from: took model.type='lstm', model.embed_dim=32, model.num_layers=1, model.num_heads=2, "
            f"model.ff_dim=64, model.lstm_units=32, data.vocab_size=500 from the source run {damaged_source}\n") in out
    assert err == (f"tflm: warning: --init-from {damaged_source}: starting from ckpt-6, its newest usable checkpoint; "
                   "skipped ckpt-12: Read less bytes than requested; ckpt-9: it holds non-finite weights\n")
    assert json.load(open(os.path.join(run_dir, "init_from.json")))["checkpoint"].endswith("ckpt-6")
    source_config, config = runs.read_config(damaged_source), runs.read_config(run_dir)
    assert config.model == source_config.model and config.data.vocab_size == 500

    # The same command resumes it (with the settings it took), not a conflict with the defaults.
    assert main([*TINY_RUN, "--set", "train.steps=4", "--init-from", damaged_source, "--run-dir", run_dir]) == 0
    assert [r["step"] for r in runs.read_history(run_dir)] == [2, 4]

    # A value given explicitly that differs from the source's is an error.
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_RUN, "--set", "data.vocab_size=1000", "--init-from", damaged_source,
              "--run-dir", str(tmp_path / "conflict")])
    assert exit_info.value.code == 2 and not (tmp_path / "conflict").exists()
    assert capsys.readouterr().err == (f"tflm: error: --init-from {damaged_source}: the source run has "
                                       "data.vocab_size=500, this run 1000; leave data.vocab_size out (of --set "
                                       "and the --config file) to take the source run's\n")


@pytest.mark.slow
def test_init_from_a_source_without_a_usable_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                                      damaged_source):
    source = str(tmp_path / "source")
    shutil.copytree(damaged_source, source)
    for name in os.listdir(os.path.join(source, "checkpoints")):
        if name.startswith("ckpt-6."):
            os.remove(os.path.join(source, "checkpoints", name))
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_RUN, "--init-from", source, "--run-dir", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == (f"tflm: error: --init-from {source}: none of its 2 checkpoint(s) can be used (the newest, "
                   "ckpt-12: Read less bytes than requested)\n")
    assert sorted(os.listdir(tmp_path)) == ["source"]

@pytest.mark.slow
def test_resumed_classifier_matches_the_uninterrupted_run(tmp_path, labelled, classifier_run):
    run_dir = str(tmp_path / "resumed")
    shutil.copytree(classifier_run, run_dir, ignore=shutil.ignore_patterns("lock"))
    checkpoints = os.path.join(run_dir, "checkpoints")
    for name in os.listdir(checkpoints):  # back to step 4: inside the frozen start's aftermath
        if name.startswith(("ckpt-6", "ckpt-8", "checkpoint")):
            os.remove(os.path.join(checkpoints, name))
    train(classify_config(*labelled), run_dir)
    assert [r["step"] for r in runs.read_history(run_dir)] == [2, 4, 6, 8]
    assert max_weight_difference(run_dir, classifier_run) <= 1e-6
