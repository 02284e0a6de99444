"""Data parallelism that is provably correct and survives losing a worker.

The core claim: with the same seed and global batch, 2-replica MirroredStrategy and 2-worker
MultiWorkerMirroredStrategy compute the same training run as one device.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, max_weight_difference, run_tflm, small_config, write_config
from tflm.runs import run_dir as runs
from tflm.config import updated
from tflm.training.launcher import reserve_ports, tf_configs
from tflm.training.train import train

pytestmark = pytest.mark.slow  # every test here starts worker processes

COMPARED_STEPS = 20


def run_config(model_type):
    """With dropout: replicas must draw the masks one device would. The Transformer is evaluated
    (on one batch) after every step, so history holds per-step losses, and runs longer because
    the fault-tolerance test interrupts it twice; the LSTM runs 5 steps per host call
    (train.steps_per_loop) and is evaluated after each."""
    if model_type == "transformer":
        train = {"steps": 40, "eval_every": 1, "eval_batches": 1, "checkpoint_every": 10}
    else:
        train = {"steps": COMPARED_STEPS, "eval_every": 5, "steps_per_loop": 5, "eval_batches": 1,
                 "checkpoint_every": 10}
    return small_config(model_type, model={"dropout": 0.2}, train=train)


@pytest.fixture(scope="module")
def two_worker_runs(tmp_path_factory):
    """Uninterrupted 2-worker runs of run_config(model_type), made once per model type."""
    made = {}

    def get(model_type):
        if model_type not in made:
            tmp = tmp_path_factory.mktemp(f"two_workers_{model_type}")
            config_path = write_config(tmp / "config.yaml", run_config(model_type))
            result = run_tflm("launch", "--workers", "2", "--", "--config", config_path, "--run-dir", str(tmp / "run"))
            assert result.returncode == 0, result.stdout[-3000:]
            assert "[worker 1] " in result.stdout and "CollectiveAllReduceStrategy, 2 replica(s)" in result.stdout
            assert "absl::InitializeLog" not in result.stdout  # the workers are quiet (tflm.quiet)
            made[model_type] = str(tmp / "run")
        return made[model_type]

    return get


def assert_same_run(run_dir, reference):
    """Training losses over the first COMPARED_STEPS (per evaluation) and final weights agree to 1e-4."""
    losses = [r["loss"] for r in runs.read_history(run_dir) if r["step"] <= COMPARED_STEPS]
    expected = [r["loss"] for r in runs.read_history(reference) if r["step"] <= COMPARED_STEPS]
    assert len(losses) == len(expected) > 0
    for step, (a, b) in enumerate(zip(losses, expected), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"evaluation {step}: {a} vs {b}"
    assert max_weight_difference(run_dir, reference) <= 1e-4


@pytest.mark.parametrize("model_type", ["transformer", "lstm"])
def test_mirrored_and_two_workers_match_one_device(tmp_path, model_type, two_worker_runs):
    config = run_config(model_type)
    reference = train(config, str(tmp_path / "one_device"))

    mirrored = updated(config, runtime={"strategy": "mirrored", "logical_cpus": 2})
    result = run_tflm("train", "--config", write_config(tmp_path / "m.yaml", mirrored),
                      "--run-dir", str(tmp_path / "mirrored"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(str(tmp_path / "mirrored"), reference)
    assert_same_run(two_worker_runs(model_type), reference)


def start_worker(tf_config, args):
    """One `python -m tflm.train` worker process with its TF_CONFIG."""
    env = {**os.environ, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "tflm.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_cluster(args):
    return [start_worker(c, args) for c in tf_configs(reserve_ports(0, 2))]


def wait_for_step(run_dir, step, procs, timeout_s=180):
    """Until the chief's history reaches `step`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        if any(r["step"] >= step for r in runs.read_history(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def finish(proc, timeout_s):
    """(exit code, stderr) of a process that must end within `timeout_s`."""
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err


def test_preempted_then_killed_workers_resume_to_the_uninterrupted_weights(tmp_path, two_worker_runs):
    config_path = write_config(tmp_path / "c.yaml", run_config("transformer"))
    run_dir = str(tmp_path / "run")
    args = ["--config", config_path, "--run-dir", run_dir]

    # SIGTERM to one worker: every worker saves at the same step and exits with the restart code.
    procs = start_cluster(args)
    wait_for_step(run_dir, 10, procs)
    procs[1].send_signal(signal.SIGTERM)
    (code0, err0), (code1, err1) = finish(procs[0], 60), finish(procs[1], 60)
    assert (code0, code1) == (42, 42), err0[-2000:] + err1[-2000:]
    saved = {int(e.split("checkpoint saved at step ")[1].split()[0]) for e in (err0, err1)}
    assert len(saved) == 1
    preempted_at = saved.pop()
    assert os.path.exists(os.path.join(run_dir, "checkpoints", f"ckpt-{preempted_at}.index"))

    # SIGKILL of the chief: the survivor does not hang; it names the lost peer and exits 3.
    procs = start_cluster(args)
    wait_for_step(run_dir, preempted_at + 12, procs)
    procs[0].kill()
    killed_at = time.monotonic()
    code1, err1 = finish(procs[1], 60)
    assert time.monotonic() - killed_at < 60
    assert code1 == 3, err1[-3000:]
    last_line = err1.strip().splitlines()[-1]
    assert "tflm: error: lost worker 0 at step" in last_line and "relaunch" in last_line

    # Relaunching the same command resumes from the last checkpoint and ends where an
    # uninterrupted run ends.
    result = run_tflm("launch", "--workers", "2", "--", *args)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "resuming from" in result.stdout
    assert max_weight_difference(run_dir, two_worker_runs("transformer")) <= 1e-5
    assert [r["step"] for r in runs.read_history(run_dir)] == list(range(1, 41))


def test_cluster_errors_are_one_line_nonzero_and_leave_the_run_dir_untouched(tmp_path):
    config = small_config(train={"steps": 2, "eval_every": 2, "eval_batches": 1},
                          runtime={"cluster_timeout_s": 8})
    config_path = write_config(tmp_path / "c.yaml", config)
    run_dir = train(config, str(tmp_path / "run"))
    snapshot = {p: open(os.path.join(d, p), "rb").read() for d, _, fs in os.walk(run_dir) for p in fs}
    args = ["--config", config_path, "--run-dir", run_dir]
    ports = reserve_ports(0, 2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}

    def train_with(tf_config, *extra):
        env = {"TF_CONFIG": tf_config if isinstance(tf_config, str) else json.dumps(tf_config)}
        started = time.monotonic()
        result = run_tflm("train", *args, *extra, env=env, timeout=90)
        return result, time.monotonic() - started

    result, _ = train_with('{"cluster": {"worker": ["localhost:1"]')
    assert result.returncode == 2 and last_line(result) .startswith("tflm: error: TF_CONFIG is not valid JSON")

    result, _ = train_with({"cluster": cluster, "task": {"type": "worker", "index": 2}})
    assert result.returncode == 2
    assert last_line(result) == "tflm: error: TF_CONFIG task index 2 is outside cluster['worker'] (0..1)"

    result, elapsed = train_with({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert result.returncode == 3 and elapsed < 60
    assert f"waiting for the cluster; not reachable: worker 1 (localhost:{ports[1]})" in last_line(result)

    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_tflm("launch", "--workers", "2", "--port", str(port), "--", *args)
        assert result.returncode == 2 and last_line(result) == f"tflm: error: port {port} is already in use"
        occupied = {"cluster": {"worker": [f"localhost:{port}", f"localhost:{ports[1]}"]},
                    "task": {"type": "worker", "index": 0}}
        result, _ = train_with(occupied)
        assert result.returncode == 2
        assert last_line(result) == f"tflm: error: worker 0's address localhost:{port} is already in use"

    fresh_dir = tmp_path / "fresh"
    result = run_tflm("launch", "--workers", "2", "--", "--config", config_path, "--run-dir", str(fresh_dir),
                      "--set", "train.global_batch_size=3", "--set", "runtime.cluster_timeout_s=60")
    assert result.returncode == 2
    assert "tflm: error: train.global_batch_size=3 is not divisible by the 2 replicas" in result.stdout
    assert not fresh_dir.exists()

    after = {p: open(os.path.join(d, p), "rb").read() for d, _, fs in os.walk(run_dir) for p in fs}
    assert after == snapshot


def last_line(result):
    return (result.stderr.strip().splitlines() or [""])[-1]


def test_cluster_descriptions_that_would_hang_or_split_the_run_are_one_line_exit_2(tmp_path):
    config_path = write_config(tmp_path / "c.yaml", small_config(train={"steps": 2, "eval_every": 2}))
    port = reserve_ports(0, 1)[0]
    same_address = {"cluster": {"worker": [f"localhost:{port}", f"localhost:{port}"]},
                    "task": {"type": "worker", "index": 0}}
    result = run_tflm("train", "--config", config_path, "--run-dir", str(tmp_path / "run"),
                      env={"TF_CONFIG": json.dumps(same_address)}, timeout=90)
    assert result.returncode == 2
    assert last_line(result) == (f"tflm: error: TF_CONFIG gives worker 0 and worker 1 the same address "
                                 f"localhost:{port}; every task needs its own host:port")

    result = run_tflm("launch", "--workers", "2", "--", "--config", config_path, "--run-dir", str(tmp_path / "run"),
                      "--strategy", "default")
    assert result.returncode == 2
    assert ("tflm: error: TF_CONFIG describes a cluster of 2 workers, but runtime.strategy=default would train "
            "each of them alone") in result.stdout
    assert not (tmp_path / "run").exists()


SLOW_DATA_ON_WORKER_1 = """
import json, os
if json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index") == 1:
    import time
    import tflm.data

    def slow_load_corpus(*args, _load=tflm.data.load_corpus, **kwargs):
        time.sleep(float(os.environ["TFLM_TEST_DATA_DELAY_S"]))
        return _load(*args, **kwargs)

    tflm.data.load_corpus = slow_load_corpus
"""


def test_reading_data_has_no_deadline_even_when_one_worker_is_much_slower(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_DATA_ON_WORKER_1)
    config = small_config(train={"steps": 4, "eval_every": 2, "eval_batches": 1}, runtime={"cluster_timeout_s": 4})
    config_path = write_config(tmp_path / "c.yaml", config)
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), REPO]), "TFLM_TEST_DATA_DELAY_S": "15"}
    result = run_tflm("launch", "--workers", "2", "--", "--config", config_path, "--run-dir", str(tmp_path / "run"),
                      env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert [r["step"] for r in runs.read_history(str(tmp_path / "run"))] == [2, 4]


def test_a_peer_that_answers_but_never_starts_tensorflow_ends_in_one_line(tmp_path):
    config_path = write_config(tmp_path / "c.yaml", small_config(runtime={"cluster_timeout_s": 5}))
    with socket.socket() as fake_peer:  # passes the rendezvous, then never speaks TensorFlow's protocol
        fake_peer.bind(("localhost", 0))
        fake_peer.listen()
        cluster = {"worker": [f"localhost:{reserve_ports(0, 1)[0]}", f"localhost:{fake_peer.getsockname()[1]}"]}
        started = time.monotonic()
        result = run_tflm("train", "--config", config_path, "--run-dir", str(tmp_path / "run"), timeout=120,
                          env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})})
    assert result.returncode == -signal.SIGKILL and time.monotonic() - started < 90
    assert last_line(result) == (
        "[worker 0] tflm: error: TensorFlow did not start the cluster within runtime.cluster_timeout_s=5s "
        "(a peer went away after the rendezvous?); relaunch the same command on every worker")
    assert not (tmp_path / "run").exists()


def tiny_fast_config(steps, eval_every):
    """Steps of a few milliseconds, each with its all-reduces across the workers."""
    return small_config(model={"embed_dim": 8, "num_heads": 1, "ff_dim": 16}, data={"seq_len": 8},
                        train={"steps": steps, "eval_every": eval_every, "global_batch_size": 4, "eval_batches": 1})


# What tflm itself prints through tflm.launch: its messages, progress lines, the launcher's own.
OWN_LINE = re.compile(r"(\[worker \d+\] )?(tflm(\.\w+)?: |step \d+/\d+  loss |done: step \d+)|tflm\.launch: ")


def start_launch(tmp_path, config, *extra):
    """`python -m tflm.launch --workers 2` in a session of its own, as a terminal runs it."""
    args = ["--workers", "2", "--", "--config", write_config(tmp_path / "c.yaml", config),
            "--run-dir", str(tmp_path / "run"), *extra]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    return subprocess.Popen([sys.executable, "-m", "tflm.launch", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def worker_pids(launcher):
    """The process ids of the tflm.train workers a launcher started."""
    children = open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()
    return [int(pid) for pid in children if b"tflm.train" in open(f"/proc/{pid}/cmdline", "rb").read()]


def thread_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return None


def test_thread_counts_stay_flat_over_2400_fast_steps_and_the_output_is_tflm_s_own(tmp_path):
    launcher = start_launch(tmp_path, tiny_fast_config(steps=2400, eval_every=400))
    lines, samples = [], []  # samples: (evaluations seen so far, thread count of each worker)

    def sample():
        while launcher.poll() is None:
            pids = worker_pids(launcher)
            counts = [thread_count(pid) for pid in pids]
            if len(pids) == 2 and None not in counts:
                samples.append((sum(" step " in line for line in lines), counts))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines.extend(launcher.stdout)
    assert launcher.wait(timeout=600) == 0, "".join(lines)[-3000:]
    sampler.join()
    trained = [counts for evaluations, counts in samples if evaluations >= 2]  # from step 800 on
    assert len(trained) >= 4, samples
    print("threads per worker, sampled from step 800 on:", trained)
    for worker in (0, 1):
        series = [counts[worker] for counts in trained]
        # Before the fix: +700 threads a second, one per collective for its timeout, until one aborted.
        assert max(series[len(series) // 2:]) <= series[0] + 20, series
    assert [line for line in lines if not OWN_LINE.match(line)] == []
    assert [line for line in lines if "checkpoints in" in line] == [
        f"[worker 0] done: step 2400; checkpoints in {tmp_path / 'run' / 'checkpoints'}\n"]
    assert "[worker 1] done: step 2400\n" in lines
    assert [r["step"] for r in runs.read_history(str(tmp_path / "run"))] == [400, 800, 1200, 1600, 2000, 2400]


def test_ctrl_c_on_launch_checkpoints_every_worker_and_exits_42_soon_with_only_tflm_s_lines(tmp_path):
    launcher = start_launch(tmp_path, tiny_fast_config(steps=10**6, eval_every=100))
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith("[worker 0] step 100/"):
            break
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C reaches the launcher and the workers
    signalled = time.monotonic()
    lines.extend(launcher.stdout)
    assert launcher.wait(timeout=120) == 42, "".join(lines)[-3000:]
    assert time.monotonic() - signalled < 30  # was 50 s: TensorFlow's teardown waiting on the other worker
    assert [line for line in lines if not OWN_LINE.match(line)] == []
    preempted = [line for line in lines if "tflm: preempted: SIGTERM received; checkpoint saved at step" in line]
    assert sorted(line[:10] for line in preempted) == ["[worker 0]", "[worker 1]"]
    saved = int(preempted[0].split("checkpoint saved at step ")[1].split()[0])
    assert os.path.exists(tmp_path / "run" / "checkpoints" / f"ckpt-{saved}.index")
