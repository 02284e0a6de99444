"""How a training process ends: a second Ctrl-C stops it at once, even inside a long compiled call,
and an error's one line is the last line it prints."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_tflm, small_config
from tflm.runs import run_dir as runs
from tflm.training.train import train

pytestmark = pytest.mark.slow

# Host calls of 8,000 steps (15 s on a 2-core CI machine): after the first one (and its evaluation),
# the main thread spends seconds at a time inside one compiled call, where no Python code runs.
LONG_CALL_STEPS = 8000
LONG_CALLS = ["--set", "model.embed_dim=32", "--set", "model.num_layers=1", "--set", "model.num_heads=2",
              "--set", "model.ff_dim=64", "--set", "data.seq_len=32", "--set", "train.global_batch_size=8",
              "--set", "train.eval_batches=2", "--set", "train.steps=1000000",
              "--set", f"train.steps_per_loop={LONG_CALL_STEPS}", "--set", f"train.eval_every={LONG_CALL_STEPS}"]


def wait_for_first_evaluation(run_dir, proc, timeout_s=300):
    """Block until the run's first evaluation and checkpoint are written: the loop is traced and
    compiled, and the second host call begins."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        # The checkpoint after the evaluation: then the loop goes straight into its second host call.
        if os.path.exists(os.path.join(run_dir, "checkpoints", f"ckpt-{LONG_CALL_STEPS}.index")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no evaluation in {timeout_s}s")


def test_a_second_ctrl_c_stops_at_once_inside_a_long_step(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "tflm.train", *LONG_CALLS, "--run-dir", run_dir], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_for_first_evaluation(run_dir, proc)
        time.sleep(1.0)  # inside the second host call
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        second = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - second < 5, "the second Ctrl-C did not stop the process at once"
    assert proc.returncode == 130, err
    assert "Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)" in out
    assert err.strip().splitlines()[-1].startswith("tflm: interrupted: Ctrl-C again: stopped at once, without saving")
    assert "Traceback" not in err
    assert not os.path.exists(runs.lock_path(run_dir))  # released: the next command resumes without a warning


def test_the_error_line_is_the_last_line_after_a_failed_restore(tmp_path):
    run_dir = train(small_config("lstm", train={"steps": 2, "eval_every": 2}), str(tmp_path / "run"))
    config_path = os.path.join(run_dir, "config.yaml")
    text = open(config_path).read()
    open(config_path, "w").write(text.replace("lstm_units: 32 ", "lstm_units: 48 "))  # no longer the checkpoint's
    result = run_tflm("train", "--config", config_path, "--run-dir", run_dir)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"tflm: error: no checkpoint in {run_dir}/checkpoints can be restored"), lines[-5:]
    assert not [line for line in lines if "WARNING" in line], lines


CALLER = """
import sys
from tflm.config import load_config
from tflm.training.train import train
overrides = [o for o in sys.argv[2:] if o != "--set"]
try:
    train(load_config(None, overrides), sys.argv[1])
except KeyboardInterrupt:
    print("the caller caught KeyboardInterrupt", flush=True)
"""


def test_a_second_ctrl_c_under_a_python_caller_raises_keyboard_interrupt_and_keeps_the_process(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", CALLER, run_dir, *LONG_CALLS], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_for_first_evaluation(run_dir, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)  # raised once the main thread is back in Python
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "the caller caught KeyboardInterrupt" in out  # a notebook's kernel would live on
