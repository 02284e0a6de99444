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
from tflm.runs import run_dir as runs
from tflm.runs import lock as run_lock

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


# --- one trainer at a time, from the first moment of a new run directory ---------------------

def train_command(config_path, run_dir, *more):
    """The argv of `python -m tflm.train` on `run_dir`."""
    return [sys.executable, "-m", "tflm.train", "--config", config_path, "--run-dir", run_dir, *more]


@pytest.mark.slow
def test_two_trainers_started_together_on_a_new_run_dir_train_it_once(tmp_path):
    config = small_config("lstm", train={"steps": 40, "eval_every": 10, "eval_batches": 1})
    config_path = write_config(tmp_path / "config.yaml", config)
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    trainers = [subprocess.Popen(train_command(config_path, run_dir), cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in trainers]
    assert sorted(p.returncode for p, _, _ in results) == [0, 2], [err[-2000:] for _, _, err in results]
    (winner, _, _), = [r for r in results if r[0].returncode == 0]
    (_, loser_out, loser_err), = [r for r in results if r[0].returncode == 2]
    assert one_line_error(subprocess.CompletedProcess([], 2, loser_out, loser_err)).startswith(
        f"tflm: error: {run_dir} is in use by pid {winner.pid} on ")
    assert "delete" not in loser_err
    assert [r["step"] for r in runs.read_history(run_dir)] == [10, 20, 30, 40]
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "run"]  # no second store, no staging left
    assert not os.path.exists(runs.lock_path(run_dir))


@pytest.mark.slow
def test_a_deleted_lock_is_taken_again_and_one_another_trainer_took_stops_this_one(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    first = subprocess.Popen(train_command(trained[0], run_dir, "--set", "train.steps=100000",
                                           "--set", "train.eval_every=10"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(r["step"] > STEPS for r in runs.read_history(run_dir)), first)
        os.remove(runs.lock_path(run_dir))
        wait_until(lambda: (runs.read_lock(runs.lock_path(run_dir)) or {}).get("pid") == first.pid, first)
        stolen = {"owner": "elsewhere:1:x", "pid": os.getpid(), "host": "another-host", "refreshed": time.time()}
        os.remove(runs.lock_path(run_dir))
        with open(runs.lock_path(run_dir), "w", encoding="utf-8") as f:
            json.dump(stolen, f)
        steps_then = len(runs.read_history(run_dir))
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 2, err[-2000:]
    assert "was deleted while this trainer held it; took it again" in err
    last = one_line_error(subprocess.CompletedProcess([], 2, "", err))
    assert last.startswith(f"tflm: error: {run_dir}: its lock was deleted while this trainer held it, and pid "
                           f"{os.getpid()} on another-host took it; stopped")
    assert len(runs.read_history(run_dir)) <= steps_then + 1  # at most the record being written then
    assert runs.read_lock(runs.lock_path(run_dir)) == stolen  # the other trainer's lock is left alone


def wait_until(condition, proc, timeout_s=120):
    """Poll `condition` while `proc` runs."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_lock_refresh_takes_a_deleted_lock_again_and_stops_on_a_lock_another_took(tmp_path, monkeypatch, capsys):
    stops = []
    monkeypatch.setattr(run_lock, "_exit_lost", stops.append)
    run_dir = str(tmp_path)
    path = runs.lock_path(run_dir)
    runs.acquire_lock(run_dir)
    try:
        os.remove(path)
        assert run_lock._refresh_held_locks()  # what the refresh thread does every LOCK_REFRESH_S
        assert runs.read_lock(path)["owner"] == runs.OWNER
        assert "was deleted while this trainer held it; took it again" in capsys.readouterr().err
        runs.check_still_locked(run_dir)  # held: nothing to say

        with monkeypatch.context() as patched:  # a read that fails (NFS, an object store): not a lost lock
            patched.setattr(run_lock, "read_lock", lambda path: None)
            assert run_lock._refresh_held_locks()
            runs.check_still_locked(run_dir)
        assert stops == []

        os.remove(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"owner": "other", "pid": 1, "host": "h"}, f)
        with pytest.raises(runs.TflmError, match="its lock was deleted while this trainer held it, and pid 1 on h"):
            runs.check_still_locked(run_dir)
        run_lock._refresh_held_locks()
        assert len(stops) == 1 and "pid 1 on h took it; stopped" in str(stops[0])
        assert runs.read_lock(path)["owner"] == "other"  # never written over
    finally:
        runs.release_lock(run_dir)
    assert runs.read_lock(path)["owner"] == "other"


def test_a_reservation_names_its_holder_and_a_stale_one_is_swept(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    staging = runs.reservation_path(run_dir)
    assert staging == str(tmp_path / ".tflm-new-run")
    assert runs.reserve(run_dir)
    try:
        with open(runs.lock_path(staging), encoding="utf-8") as f:
            assert json.load(f)["owner"] == runs.OWNER
        code = "import sys; from tflm.runs import run_dir as r; r.reserve(sys.argv[1])"
        other = subprocess.run([sys.executable, "-c", code, run_dir], cwd=REPO, capture_output=True, text=True,
                               timeout=60)
        assert other.returncode == 1 and f"{run_dir} is in use by pid {os.getpid()} on " in other.stderr
    finally:
        runs.release_lock(run_dir)
    assert os.listdir(tmp_path) == []

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for left in (staging, str(tmp_path / ".tflm-new-runs-20261206-1a2b3c")):  # what starts killed while preparing left
        os.makedirs(os.path.join(left, "store", "train"))
        with open(runs.lock_path(left), "w", encoding="utf-8") as f:
            json.dump({"owner": "gone", "pid": int(dead.stdout), "host": runs.socket.gethostname()}, f)
    assert runs.reserve(run_dir)
    try:
        assert os.listdir(tmp_path) == [".tflm-new-run"] and os.listdir(staging) == [runs.LOCK_FILE]
        assert runs.read_lock(runs.lock_path(staging))["owner"] == runs.OWNER
        assert capsys.readouterr().err.count("removing what a start that was stopped left") == 2
    finally:
        runs.release_lock(run_dir)
    assert os.listdir(tmp_path) == []


def test_sigterm_while_a_new_run_dir_is_assembled_removes_it(tmp_path):
    run_dir = str(tmp_path / "run")
    code = ("import os, signal, sys, time; from tflm.runs import run_dir as r; r.reserve(sys.argv[1]); "
            "os.makedirs(os.path.join(r.reservation_path(sys.argv[1]), 'store')); print('ready', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, run_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    assert os.listdir(tmp_path) == [".tflm-new-run"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert os.listdir(tmp_path) == []


class NamedTokenizer:
    """Just enough of a tokenizer for `runs.create`."""

    def save(self, directory):
        runs.write_text(runs.vocab_path(directory), "{}")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_dirs_and_staging_dirs_honour_the_umask(tmp_path, umask):
    from tflm.atomic import staging_dir
    from tflm.config import Config

    previous = os.umask(umask)
    try:
        run_dir = str(tmp_path / "run")
        runs.create(run_dir, Config(), NamedTokenizer())
        runs.release_lock(run_dir)
        staging = staging_dir(str(tmp_path / "models"), ".tflm-export-", "test")
    finally:
        os.umask(previous)
    assert os.stat(run_dir).st_mode & 0o777 == 0o777 & ~umask
    assert os.stat(runs.config_path(run_dir)).st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(staging).st_mode & 0o777 == 0o777 & ~umask


def test_a_failed_checkpoint_save_is_one_line_and_keeps_the_previous_checkpoints(tmp_path):
    import errno

    import keras
    import tensorflow as tf

    from tflm.runs.checkpoint import Checkpointer, list_checkpoints
    from tflm.training.cluster import Worker

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    checkpointer = Checkpointer(str(tmp_path), Worker(), model, optimizer, 2)
    checkpointer.restore_latest()
    checkpointer.save(1)
    checkpointer.save(2)
    before = files_of(str(tmp_path))
    real_save = checkpointer.manager.save

    def full_disk(error):
        def save(checkpoint_number):
            os.makedirs(os.path.join(checkpointer.shared_dir, f"ckpt-{checkpoint_number}_temp"))
            raise error
        return save

    for error, reason in [
            (tf.errors.ResourceExhaustedError(None, None, "ckpt-3_temp/part-0.data; No space left on device"),
             "No space left on device"),
            (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
            (tf.errors.UnknownError(None, None, "write failed: Disk quota exceeded"), "Disk quota exceeded")]:
        checkpointer.manager.save = full_disk(error)
        with pytest.raises(runs.TflmError) as raised:
            checkpointer.save(3)
        message = str(raised.value)
        assert message.startswith(f"cannot save checkpoint ckpt-3 in {checkpointer.shared_dir}: {reason}; ")
        assert "\n" not in message and message.endswith("(the newest: " + os.path.join(
            checkpointer.shared_dir, "ckpt-2") + "); free some space and resume")
        assert files_of(str(tmp_path)) == before  # ckpt-1 and ckpt-2 intact, nothing of ckpt-3 left
    checkpointer.manager.save = full_disk(tf.errors.UnavailableError(None, None, "peer gone"))
    with pytest.raises(tf.errors.UnavailableError):  # a lost peer is reported as one, elsewhere
        checkpointer.save(3)
    checkpointer.manager.save = real_save
    checkpointer.save(3)
    assert [os.path.basename(p) for p in list_checkpoints(checkpointer.shared_dir)] == ["ckpt-2", "ckpt-3"]
    checkpointer.close()


def test_a_missing_run_dir_is_reported_as_missing(tmp_path):
    from tflm.serving.loading import load_run

    with pytest.raises(runs.TflmError, match=f"^{tmp_path}/nope: no such run directory$"):
        load_run(str(tmp_path / "nope"))
    with pytest.raises(runs.TflmError, match="is not a tflm run directory"):
        load_run(str(tmp_path))


def test_a_full_disk_while_appending_history_is_one_line(tmp_path, monkeypatch):
    import errno

    def full(path, line):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.atomic, "append_line", full)
    with pytest.raises(runs.TflmError, match=f"^cannot write {tmp_path}/history.jsonl: No space left on device; "):
        runs.append_history(str(tmp_path), {"step": 1, "loss": 0.0})


@pytest.mark.slow
def test_what_a_killed_start_left_is_removed_by_the_next_start(tmp_path):
    config_path = write_config(tmp_path / "config.yaml", small_config("lstm", train={"steps": 4, "eval_every": 2}))
    run_dir = str(tmp_path / "run")
    first = subprocess.Popen(train_command(config_path, run_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        # Killed once it has written more than its lock (its store's staging): a start killed
        # between taking the lock and writing anything left only the lock, a stale lock, not leftovers.
        reservation = runs.reservation_path(run_dir)
        wait_until(lambda: os.path.exists(runs.lock_path(reservation)) and len(os.listdir(reservation)) > 1, first)
    finally:
        first.kill()
        first.wait()
    assert sorted(os.listdir(tmp_path)) == [".tflm-new-run", "config.yaml"]
    second = run_tflm("train", "--config", config_path, "--run-dir", run_dir)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "removing what a start that was stopped left" in second.stderr
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "run"]
    assert [r["step"] for r in runs.read_history(run_dir)] == [2, 4]
