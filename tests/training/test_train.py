"""The foundation: training lowers validation loss, resume equals uninterrupted, errors are clear."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO, max_weight_difference, run_tflm, small_config, write_config
from tflm.runs import run_dir as runs
from tflm.config import Config, load_config, updated
from tflm.serving.export import export_run
from tflm.train import main
from tflm.training.precision import resolve_precision
from tflm.training.train import resume_command, train


@pytest.mark.slow
def test_training_lowers_validation_loss_and_fills_the_run_dir(tmp_path):
    config = small_config(train={"steps": 150, "eval_every": 50, "learning_rate": 0.01})
    run_dir = train(config, str(tmp_path / "run"))
    history = runs.read_history(run_dir)
    assert [r["step"] for r in history] == [50, 100, 150]
    assert list(history[0]) == ["step", "tokens_seen", "elapsed_s", "loss", "accuracy", "val_loss", "val_accuracy",
                                "val_perplexity", "bits_per_byte", "val_bits_per_byte", "tokens_per_sec"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.2
    assert history[-1]["val_accuracy"] > history[0]["val_accuracy"]
    assert history[-1]["tokens_seen"] == 150 * 8 * 32
    assert load_config(os.path.join(run_dir, "config.yaml")) == config
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-150.index"))
    assert os.listdir(os.path.join(run_dir, "tensorboard"))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "auto"])
def test_mixed_precision_resumes_exactly_and_exports_float32_signatures(tmp_path, capsys, precision):
    config = small_config(train={"steps": 6, "eval_every": 3, "checkpoint_every": 3, "eval_batches": 1},
                          runtime={"precision": precision, "jit_compile": False})  # XLA: test_trainer.py
    uninterrupted = train(config, str(tmp_path / "uninterrupted"))
    resumed = train(updated(config, train={"steps": 3}), str(tmp_path / "resumed"))
    train(config, resumed)
    assert max_weight_difference(resumed, uninterrupted) == 0.0
    if precision == "auto":  # the choice is printed and saved in the run's config
        chosen, _ = resolve_precision(config.runtime, config.model, {"CPU"})
        assert f"runtime.precision=auto: {chosen} (" in capsys.readouterr().out
        assert load_config(os.path.join(resumed, "config.yaml")).runtime.precision == chosen
        return  # the export builds the model in float32 whatever the run's precision: once is enough
    served = tf.saved_model.load(export_run(resumed, base=str(tmp_path / "saved_models"), name="m"))
    dtypes = {t.dtype for signature in served.signatures.values()
              for t in [*signature.structured_input_signature[1].values(), *signature.structured_outputs.values()]}
    assert tf.float32 in dtypes and not {tf.float16, tf.bfloat16} & dtypes


@pytest.mark.slow
def test_a_resumed_run_loads_its_compiled_programs_instead_of_compiling_them(tmp_path):
    config = write_config(tmp_path / "config.yaml", small_config("lstm", train={"eval_every": 1, "eval_batches": 1}))
    cache = tmp_path / "cache"
    env = {"TFLM_COMPILE_CACHE": str(cache), "TFLM_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "0",
           "TF_CPP_VMODULE": "device_executable_persistor=2"}  # TensorFlow logs each entry saved or loaded
    logs = [run_tflm("train", "--config", config, "--run-dir", str(tmp_path / "run"), "--set", f"train.steps={steps}",
                     env=env).stderr for steps in (1, 2, 3)]
    saved = [log.count("XlaSerializedCacheEntry saved") for log in logs]
    loaded = [log.count("Loading cached entry for") for log in logs]
    # A new run traces its data preparation first, so its programs are numbered apart from a
    # resumption's: the first resumption compiles, every later one loads and compiles nothing.
    assert saved[0] >= 2 and saved[1] >= 2 and (saved[2], loaded[2]) == (0, saved[1])
    assert len(os.listdir(cache)) == 1  # one directory: this TensorFlow on this CPU


@pytest.mark.slow
def test_finished_run_does_nothing_and_says_so(tmp_path, capsys):
    config = small_config(train={"steps": 4, "eval_every": 2})
    run_dir = train(config, str(tmp_path / "run"))
    before = open(runs.history_path(run_dir)).read()
    train(config, run_dir)
    assert "run already finished: step 4" in capsys.readouterr().out
    assert open(runs.history_path(run_dir)).read() == before


STOPS = {  # signal: (exit code, what the last line says, pattern of the saved step)
    signal.SIGTERM: (42, "tflm: preempted: SIGTERM received; checkpoint saved at step ", r"saved at step (\d+)"),
    signal.SIGINT: (130, "tflm: interrupted: Ctrl-C at step ", r"Ctrl-C at step (\d+); checkpoint saved"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", list(STOPS), ids=lambda s: s.name)
def test_resume_after_a_stop_signal_matches_uninterrupted_run(tmp_path, stop_signal):
    # dropout > 0 so the resumed run must also restore the dropout RNG stream position.
    config = small_config("lstm", model={"dropout": 0.1},
                          train={"steps": 80, "eval_every": 5, "checkpoint_every": 5})  # still running when signalled
    config_path = write_config(tmp_path / "config.yaml", config)
    interrupted = str(tmp_path / "interrupted")
    proc = subprocess.Popen([sys.executable, "-m", "tflm.train", "--config", config_path, "--run-dir", interrupted],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_history(interrupted, step=10, proc=proc)
    proc.send_signal(stop_signal)
    _, err = proc.communicate(timeout=60)
    code, line, step_pattern = STOPS[stop_signal]
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(line) and "Traceback" not in err
    stopped_at = int(re.search(step_pattern, err).group(1))
    assert 10 <= stopped_at < 80
    assert os.path.exists(os.path.join(interrupted, "checkpoints", f"ckpt-{stopped_at}.index"))

    resumed = run_tflm("train", "--config", config_path, "--run-dir", interrupted)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and f"at step {stopped_at}" in resumed.stdout
    uninterrupted = train(load_config(config_path), str(tmp_path / "uninterrupted"))
    assert max_weight_difference(interrupted, uninterrupted) <= 1e-5
    steps = [r["step"] for r in runs.read_history(interrupted)]
    assert steps == sorted(set(steps)) and steps[-1] == 80


def wait_for_history(run_dir, step, proc, timeout_s=120):
    """Block until history.jsonl has a record at `step` or later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if os.path.exists(runs.history_path(run_dir)) and any(
                r["step"] >= step for r in runs.read_history(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no history at step {step} in {timeout_s}s")


# (arguments, what the one-line error says): a table of cases, whose rows `duplicates` lists as same-shape lines.
CONFIG_ERRORS = [
    (["--set", "train.stpes=5"], "unknown key 'train.stpes'; did you mean 'train.steps'?"),
    (["--set", "model.tpye=lstm"], "did you mean 'model.type'?"),
    (["--set", "train.steps=-5"], "train.steps must be positive, got -5"),
    (["--set", "train.steps=ten"], "train.steps must be int, got 'ten'"),
    (["--set", "model.type=gru"], "model.type must be one of transformer, lstm, preset, got 'gru'"),
    (["--set", "steps=5"], "--set expects section.key=value"),
    (["--set", "data.seq_len=1000000"], "data.seq_len=1000000 is larger than the training split"),
    (["--config", "/nonexistent.yaml"], "cannot read config /nonexistent.yaml"),
    # Values that passed the old checks and crashed (or trained NaN) after the run directory existed:
    (["--set", "train.seed=4294967296"], "train.seed must be at most 2147483647, got 4294967296"),
    (["--set", f"data.vocab_size={2**63}"], "data.vocab_size must be at most 2147483647"),
    (["--set", "data.shuffle_buffer=100"], "data.shuffle_buffer no longer exists: windows are shuffled over"),
    (["--set", "data.max_vocab_size=100"], "data.max_vocab_size is now data.vocab_size"),
    (["--set", "data.tokenizer=bpe"], "data.tokenizer must be one of char, byte, wordpiece, sentencepiece"),
    (["--set", "train.learning_rate=nan"], "train.learning_rate must be a finite number, got nan"),
    (["--set", "train.learning_rate=inf"], "train.learning_rate must be a finite number, got inf"),
    (["--set", "train.clip_norm=nan"], "train.clip_norm must be a finite number, got nan"),
    (["--set", "train.weight_decay=.nan"], "train.weight_decay must be a finite number, got nan"),
    (["--set", "train.min_learning_rate_ratio=nan"], "train.min_learning_rate_ratio must be a finite number"),
    (["--set", "model.dropout=-0.5"], "model.dropout must not be negative, got -0.5"),
]


@pytest.mark.parametrize("args,message", CONFIG_ERRORS)
def test_config_errors_are_one_line_exit_2_and_create_nothing(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("tflm: error: ") and err.count("\n") == 1 and message in err
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []  # no reservation, no store prepared beside it


@pytest.mark.slow
def test_errors_leave_an_existing_run_dir_untouched(tmp_path, capsys):
    config = small_config(train={"steps": 2, "eval_every": 2})
    config_path = write_config(tmp_path / "config.yaml", config)
    run_dir = train(config, str(tmp_path / "run"))
    snapshot = {p: open(os.path.join(d, p), "rb").read() for d, _, files in os.walk(run_dir) for p in files}
    cases = [("model.num_layers=3", "the run directory was trained with model.num_layers=1, not 3"),
             ("train.global_batch_size=7", "trained with train.global_batch_size=8, not 7"),
             ("train.steps=0", "train.steps must be positive, got 0")]
    for override, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", config_path, "--set", override, "--run-dir", run_dir])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    after = {p: open(os.path.join(d, p), "rb").read() for d, _, files in os.walk(run_dir) for p in files}
    assert after == snapshot


@pytest.mark.slow
def test_indivisible_global_batch_is_one_line_exit_2_in_a_fresh_process(tmp_path):
    result = run_tflm("train", "--set", "train.global_batch_size=3", "--strategy", "mirrored",
                      "--set", "runtime.logical_cpus=2", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tflm: error: train.global_batch_size=3 is not divisible by the 2 replicas")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_trains(tmp_path):
    config = small_config(train={"steps": 30, "eval_every": 10, "learning_rate": 0.01},
                          runtime={"strategy": "mirrored", "logical_cpus": 2})
    run_dir = str(tmp_path / "run")
    result = run_tflm("train", "--config", write_config(tmp_path / "c.yaml", config), "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr
    assert "MirroredStrategy, 2 replica(s)" in result.stdout
    history = runs.read_history(run_dir)
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_default_config_file_is_the_built_in_default():
    assert load_config(os.path.join(REPO, "configs", "char_transformer.yaml")) == Config()
    assert load_config(os.path.join(REPO, "configs", "char_lstm.yaml")).model.type == "lstm"


def test_the_resume_hint_names_the_run_dir_the_command_chose():
    command = ["python", "-m", "tflm.train", "--set", "train.steps=9", "--set", "data.paths=['a b.txt']"]
    assert resume_command(command, "runs/x", chosen=False, restart=False) is None  # the same command resumes
    assert resume_command(command, "runs/x-1", chosen=True, restart=False) == (
        "python -m tflm.train --set train.steps=9 --set 'data.paths=['\"'\"'a b.txt'\"'\"']' --run-dir runs/x-1")
    assert resume_command([*command, "--restart", "--run-dir", "r"], "r", chosen=False, restart=True) == (
        "python -m tflm.train --set train.steps=9 --set 'data.paths=['\"'\"'a b.txt'\"'\"']' --run-dir r")
    assert resume_command(None, "runs/x-2", chosen=True, restart=False) == "train(config, run_dir='runs/x-2')"
    assert resume_command([*command, "--rest", "--run-dir", "r"], "r", chosen=False, restart=True) == (
        "python -m tflm.train --set train.steps=9 --set 'data.paths=['\"'\"'a b.txt'\"'\"']' --run-dir r")  # argparse's prefix
    assert resume_command([*command, "--restart", "--run-dir", "r"], "r", chosen=False, restart=True, workers=2) == (
        "the same command on every worker, without --restart")  # a worker's own command lacks its TF_CONFIG


@pytest.mark.slow
def test_ctrl_c_without_run_dir_prints_the_command_that_resumes(tmp_path):
    config_path = write_config(tmp_path / "config.yaml", small_config("lstm", train={"steps": 100000, "eval_every": 5}))
    proc = subprocess.Popen([sys.executable, "-m", "tflm.train", "--config", config_path], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    while not run_dirs(tmp_path / "runs"):  # renamed into place from its reservation, .tflm-new-NAME
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    run_dir = os.path.join("runs", run_dirs(tmp_path / "runs")[0])
    wait_for_history(str(tmp_path / run_dir), step=5, proc=proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"; resume with: python -m tflm.train --config {config_path} --run-dir {run_dir}"), last
    stopped_at = int(re.search(r"Ctrl-C at step (\d+)", last).group(1))

    command = last.split("resume with: ")[1].split() + ["--set", f"train.steps={stopped_at + 5}"]
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {os.path.join(run_dir, 'checkpoints', f'ckpt-{stopped_at}')} at step {stopped_at}" in (
        resumed.stdout)
    assert os.listdir(tmp_path / "runs") == [os.path.basename(run_dir)]


def run_dirs(parent):
    """The names of the visible directories in `parent` (none if it does not exist)."""
    return [name for name in os.listdir(parent) if not name.startswith(".")] if os.path.isdir(parent) else []


@pytest.mark.parametrize("command,args,message", [
    ("train", ["--run-dir", "ram://runs/x"], "--run-dir ram://runs/x: ram:// is in this process's memory"),
    ("train", ["--set", "data.store=ram://stores/x", "--run-dir", "RUN"], "data.store ram://stores/x: ram://"),
    ("export", ["--run-dir", "RUN", "--base", "ram://models"], "--base ram://models: ram:// is in this process's"),
    ("prepare", ["--store", "ram://stores/x"], "--store ram://stores/x: ram:// is in this process's memory"),
])
def test_the_command_line_refuses_in_memory_paths(tmp_path, capsys, command, args, message):
    import importlib

    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"tflm.{command}").main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("tflm: error: ") and err.count("\n") == 1
    assert message in err and "gone when the command exits" in err
    assert list(tmp_path.iterdir()) == []
