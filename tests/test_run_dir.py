"""A run directory is a ledger: damaged parts are repaired or reported, never silently restarted,
and only one trainer writes it at a time."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_tflm, small_config, write_config
from tflm import run_dir as runs

STEPS = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, a run directory trained to STEPS with checkpoints at 10 and 20); copy it."""
    tmp = tmp_path_factory.mktemp("ledger")
    config = small_config("lstm", train={"steps": STEPS, "eval_every": 10, "eval_batches": 1})
    config_path = write_config(tmp / "config.yaml", config)
    result = run_tflm("train", "--config", config_path, "--run-dir", str(tmp / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    return config_path, str(tmp / "run")


def copy_run(trained, tmp_path):
    """A private copy of the trained run directory."""
    target = str(tmp_path / "run")
    shutil.copytree(trained[1], target)
    return target


def files_of(run_dir):
    """{relative path: bytes} of every file, the lock excepted."""
    return {os.path.relpath(os.path.join(d, f), run_dir): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(run_dir) for f in names if f != runs.LOCK_FILE}


def resume(config_path, run_dir, *more):
    """Train the run on to 30 steps; the CompletedProcess."""
    return run_tflm("train", "--config", config_path, "--run-dir", run_dir, "--set", "train.steps=30", *more)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_checkpoint_state_file_resumes_instead_of_starting_over(trained, tmp_path, damage):
    run_dir = copy_run(trained, tmp_path)
    before = files_of(run_dir)
    state = os.path.join(run_dir, "checkpoints", "checkpoint")
    os.remove(state) if damage == "deleted" else open(state, "w").close()

    result = resume(trained[0], run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ckpt-20 at step 20" in result.stdout
    after = files_of(run_dir)
    for name in ("checkpoints/ckpt-20.index", "checkpoints/ckpt-20.data-00000-of-00001"):
        assert after[name] == before[name]
    history = runs.read_history(run_dir)
    assert [r["step"] for r in history] == [10, 20, 30]
    assert history[:2] == [json.loads(line) for line in before["history.jsonl"].decode().splitlines()]


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_and_is_kept_aside(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    data = os.path.join(run_dir, "checkpoints", "ckpt-20.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)

    result = resume(trained[0], run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: cannot restore" in result.stderr and "ckpt-20" in result.stderr
    assert "ckpt-10 at step 10" in result.stdout
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints", "damaged"))) == [
        "ckpt-20.data-00000-of-00001", "ckpt-20.index"]
    assert [r["step"] for r in runs.read_history(run_dir)] == [10, 20, 30]


@pytest.mark.slow
def test_unreadable_checkpoints_are_an_error_never_a_fresh_start(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    for name in os.listdir(os.path.join(run_dir, "checkpoints")):
        if name.endswith(".index"):
            open(os.path.join(run_dir, "checkpoints", name), "w").close()
    before = files_of(run_dir)
    result = resume(trained[0], run_dir)
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"tflm: error: no checkpoint in {run_dir}/checkpoints can be restored")
    assert "ckpt-20" in one_line_error(result) and "--restart" in one_line_error(result)
    assert files_of(run_dir) == before

    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    result = resume(trained[0], run_dir)
    assert result.returncode == 2 and "has training history but no checkpoint" in one_line_error(result)


@pytest.mark.slow
def test_a_partial_last_history_line_is_repaired_on_resume(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    with open(runs.history_path(run_dir), "a", encoding="utf-8") as f:
        f.write('{"step": 25, "tokens_seen": 12')  # a crash while appending
    assert [r["step"] for r in runs.read_history(run_dir)] == [10, 20]
    result = resume(trained[0], run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["step"] for r in runs.read_history(run_dir)] == [10, 20, 30]


@pytest.mark.slow
def test_a_damaged_config_is_one_line_and_nothing_changes(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    path = runs.config_path(run_dir)
    text = open(path, encoding="utf-8").read()
    for damaged in (text[: len(text) // 2], text[: text.index("train:")], "data: [1, 2\n"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(damaged)
        before = files_of(run_dir)
        result = resume(trained[0], run_dir)
        assert result.returncode == 2, result.stderr[-2000:]
        assert one_line_error(result).startswith("tflm: error: ") and "config.yaml" in one_line_error(result)
        assert files_of(run_dir) == before


@pytest.mark.slow
def test_a_run_dir_that_never_trained_takes_a_new_config(trained, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "vocab.json"):  # what a run that crashed before its first checkpoint leaves
        shutil.copy(os.path.join(trained[1], name), run_dir / name)
    config_path = write_config(tmp_path / "c.yaml", small_config("transformer", train={"steps": 4, "eval_every": 2}))
    result = run_tflm("train", "--config", config_path, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert runs.read_config(str(run_dir)).model.type == "transformer"


@pytest.mark.slow
def test_restart_moves_the_old_run_aside_and_starts_over(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    before = files_of(run_dir)
    result = run_tflm("train", "--config", trained[0], "--run-dir", run_dir, "--set", "train.steps=10", "--restart")
    assert result.returncode == 0, result.stderr[-2000:]
    (moved,) = [p for p in os.listdir(tmp_path) if p.startswith("run.replaced-")]
    assert files_of(str(tmp_path / moved)) == before
    assert [r["step"] for r in runs.read_history(run_dir)] == [10]


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    command = [sys.executable, "-m", "tflm.train", "--config", trained[0], "--run-dir", run_dir,
               "--set", "train.steps=100000", "--set", "train.eval_every=10"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(r["step"] > STEPS for r in runs.read_history(run_dir)):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.3)
        second = resume(trained[0], run_dir, "--set", "train.steps=100000", "--set", "train.eval_every=10")
        assert second.returncode == 2
        assert one_line_error(second).startswith(f"tflm: error: {run_dir} is in use by pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(runs.lock_path(run_dir))  # a killed trainer leaves its lock behind
    third = run_tflm("train", "--config", trained[0], "--run-dir", run_dir, "--set", "train.eval_every=10",
                     "--set", "train.steps=40")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "removing the stale lock" in third.stderr
    assert not os.path.exists(runs.lock_path(run_dir))


def test_default_run_dirs_started_in_the_same_second_differ():
    config = small_config()
    names = {runs.default_run_dir(config) for _ in range(200)}
    assert len(names) == 200


def test_a_lock_held_by_this_live_process_is_not_taken(tmp_path):
    run_dir = str(tmp_path)
    runs.acquire_lock(run_dir)
    try:
        with pytest.raises(Exception, match=f"in use by pid {os.getpid()}"):
            runs.acquire_lock(run_dir)
    finally:
        runs.release_lock(run_dir)
    assert not os.path.exists(runs.lock_path(run_dir))


def one_line_error(result):
    """The last line of stderr, asserting the command printed no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]
