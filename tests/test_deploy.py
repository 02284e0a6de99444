"""What can be checked of deploy/ without a cluster: Slurm's TF_CONFIG, the retry codes of the
Kubeflow and Slurm recipes, and that every manifest names real config keys, files, ports and
versions."""

import json
import os
import subprocess

import pytest

from tflm.cluster import SLURM_PORT_BASE, slurm_tf_config, use_cluster
from tflm.config import RuntimeConfig, load_config
from tflm.errors import TflmError
from tflm.strategy import parse_tf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
SBATCH = os.path.join(DEPLOY, "slurm", "train.sbatch")


# --- Slurm: TF_CONFIG from srun's variables -------------------------------------------------------

# (SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE, tasks in Slurm's order as (node, local id),
#  the TF_CONFIG cluster a user would write for the same hosts)
SLURM_STEPS = [
    ("node[1-3]", "1(x3)", [("node1", 0), ("node2", 0), ("node3", 0)],
     ["node1:8888", "node2:8888", "node3:8888"]),
    # Names that sort differently from Slurm's order: the resolver lists node10 first.
    ("node[9-10]", "1(x2)", [("node9", 0), ("node10", 0)], ["node10:8888", "node9:8888"]),
    ("cpu[01-02],gpu1", "2(x2),1", [("cpu01", 0), ("cpu01", 1), ("cpu02", 0), ("cpu02", 1), ("gpu1", 0)],
     ["cpu01:8888", "cpu01:8889", "cpu02:8888", "cpu02:8889", "gpu1:8888"]),
]


def set_slurm_task(monkeypatch, nodelist, tasks_per_node, tasks, procid):
    """The environment srun gives task `procid` of a step."""
    node, local_id = tasks[procid]
    for name, value in {"SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
                        "SLURM_STEP_NUM_TASKS": str(len(tasks)), "SLURM_PROCID": str(procid),
                        "SLURM_LOCALID": str(local_id), "SLURMD_NODENAME": node}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def no_commands(monkeypatch, tmp_path):
    """PATH with nothing on it: building TF_CONFIG must not need scontrol or nvidia-smi."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.mark.parametrize("nodelist, tasks_per_node, tasks, workers", SLURM_STEPS)
def test_every_slurm_task_gets_the_tf_config_a_user_would_write(monkeypatch, no_commands, nodelist,
                                                                 tasks_per_node, tasks, workers):
    indices = []
    for procid, (node, local_id) in enumerate(tasks):
        set_slurm_task(monkeypatch, nodelist, tasks_per_node, tasks, procid)
        own = f"{node}:{SLURM_PORT_BASE + local_id}"
        written = json.dumps({"cluster": {"worker": workers},
                              "task": {"type": "worker", "index": workers.index(own)}})
        task = parse_tf_config(slurm_tf_config())
        assert task == parse_tf_config(written)
        assert dict(task.addresses)[task.name] == own  # it listens on its own node
        indices.append(task.index)
    assert sorted(indices) == list(range(len(tasks)))  # one chief, no index twice


@pytest.mark.parametrize("change, message", [
    ({"SLURM_STEP_NODELIST": None}, "runtime.cluster=slurm needs SLURM_STEP_NODELIST: start python -m "
                                    "tflm.train with srun inside a Slurm allocation"),
    ({"SLURM_LOCALID": "first"}, "runtime.cluster=slurm: SLURM_LOCALID must be a number, got 'first'"),
    ({"SLURM_STEP_NODELIST": "node[1-2"}, 'runtime.cluster=slurm: Invalid hostlist format "node[1-2": '
                                          'Invalid part: node[1-2'),
    ({"SLURM_STEP_NUM_TASKS": "3"}, "runtime.cluster=slurm: Requested 3 tasks but only 2 were assigned."),
    ({"SLURMD_NODENAME": "login1"}, "runtime.cluster=slurm: this task (login1:8888, from SLURMD_NODENAME and "
                                    "SLURM_LOCALID) is not one of the 2 tasks of SLURM_STEP_NODELIST=node[1-2] "
                                    "with SLURM_STEP_TASKS_PER_NODE=1(x2)"),
])
def test_a_missing_or_inconsistent_slurm_environment_is_one_line(monkeypatch, no_commands, change, message):
    set_slurm_task(monkeypatch, "node[1-2]", "1(x2)", [("node1", 0), ("node2", 0)], 0)
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(TflmError) as error:
        slurm_tf_config()
    assert str(error.value) == message


def test_runtime_cluster_slurm_sets_tf_config_and_refuses_a_different_one(monkeypatch, no_commands):
    set_slurm_task(monkeypatch, "node[1-2]", "1(x2)", [("node1", 0), ("node2", 0)], 1)
    slurm = load_config(None, ["runtime.cluster=slurm"]).runtime
    use_cluster(slurm)
    assert parse_tf_config(os.environ["TF_CONFIG"]).name == "worker 1"
    use_cluster(slurm)  # the same process may train twice
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(TflmError, match="unset the TF_CONFIG this process was given"):
        use_cluster(slurm)
    use_cluster(RuntimeConfig())  # the default, tf_config, reads TF_CONFIG as it is
    assert json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"] == ["a:1", "b:1"]


@pytest.mark.parametrize("code, requeued", [(0, False), (2, False), (3, True), (4, False), (42, True)])
def test_sbatch_requeues_after_a_lost_peer_or_preemption_only(tmp_path, code, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": f'echo "$@" > "{tmp_path}/srun"\nexit {code}',
                       "scontrol": f'echo "$@" >> "{tmp_path}/scontrol"'}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "77",
           "SLURM_JOB_NAME": "tflm"}
    result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == code
    assert "--set runtime.cluster=slurm" in (tmp_path / "srun").read_text()
    assert (tmp_path / "scontrol").exists() == requeued
    if requeued:
        assert (tmp_path / "scontrol").read_text() == "requeue 77\n"
        retried_enough = subprocess.run(["bash", SBATCH], env={**env, "SLURM_RESTART_COUNT": "5"},
                                        capture_output=True, text=True, timeout=30)
        assert retried_enough.returncode == code
        assert (tmp_path / "scontrol").read_text() == "requeue 77\n"  # not again after 5 requeues
