"""What can be checked of deploy/ without a cluster: Slurm's TF_CONFIG, the retry codes of the
Kubeflow and Slurm recipes, and that every manifest names real config keys, files, ports and
versions."""

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import yaml

from tflm.training.cluster import SLURM_PORT_BASE, parse_tf_config, slurm_tf_config, use_cluster
from tflm.config import RuntimeConfig, load_config
from tflm.errors import TflmError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
TFJOB = os.path.join(DEPLOY, "kubeflow", "tfjob.yaml")
SBATCH = os.path.join(DEPLOY, "slurm", "train.sbatch")
COMPOSE = os.path.join(DEPLOY, "serving", "docker-compose.yaml")
KUBERNETES = os.path.join(DEPLOY, "serving", "kubernetes.yaml")
MODELS_CONFIG = os.path.join(DEPLOY, "serving", "models.config")


def operator_retries(code):
    """The training operator's rule for restartPolicy ExitCode (kubeflow/training-operator,
    pkg/util/train/train_util.go: IsRetryableExitCode is `exitCode >= 128`)."""
    return code >= 128


def deploy_files(*suffixes):
    """Paths of the files under deploy/ whose names end with one of `suffixes`."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(DEPLOY) for f in files if f.endswith(suffixes))


def yaml_docs(path):
    """The documents of a YAML file."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def doc_of_kind(path, kind):
    """The one document of `kind` in a manifest."""
    (doc,) = [d for d in yaml_docs(path) if d.get("kind") == kind]
    return doc


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
    """PATH with nothing on it: building TF_CONFIG must not need scontrol or nvidia-smi. TF_CONFIG is
    unset, and unset again afterwards whatever the test wrote."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TF_CONFIG", "")  # records the value to restore, set or not
    monkeypatch.delenv("TF_CONFIG")


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


# --- Kubeflow TFJob: tflm's exit codes under restartPolicy ExitCode ---------------------------------

def tfjob_containers():
    """{replica type: its `tensorflow` container} of the TFJob."""
    specs = doc_of_kind(TFJOB, "TFJob")["spec"]["tfReplicaSpecs"]
    return {kind: next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "tensorflow")
            for kind, spec in specs.items()}


def test_tfjob_has_a_chief_and_workers_that_retry_by_exit_code_on_a_shared_volume():
    tfjob = doc_of_kind(TFJOB, "TFJob")
    specs = tfjob["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker"}  # tflm's TF_CONFIG task types: chief and worker
    claim = doc_of_kind(TFJOB, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind, spec in specs.items():
        assert spec["restartPolicy"] == "ExitCode", kind
        container = tfjob_containers()[kind]
        args = container["args"]
        assert args[:3] == ["python", "-m", "tflm.train"]
        run_dir = args[args.index("--run-dir") + 1]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        shared = [name for name, path in mounts.items() if run_dir.startswith(path + "/")]
        assert shared and volumes[shared[0]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("code, retried", [(0, False), (1, False), (2, False), (3, True), (4, False), (42, True)])
def test_tfjob_retries_a_lost_peer_and_preemption_but_not_bad_input_or_divergence(code, retried):
    for kind, container in tfjob_containers().items():
        result = subprocess.run(container["command"] + ["sh", "-c", f"exit {code}"], timeout=30)
        assert result.returncode != 0 or code == 0, kind
        assert operator_retries(result.returncode) == retried, (kind, result.returncode)
        if code in (0, 2, 4):
            assert result.returncode == code  # what the user reads in the pod status


def test_tfjob_passes_sigterm_on_and_keeps_the_preempted_exit_code(tmp_path):
    ready = tmp_path / "ready"
    training = f"trap 'exit 42' TERM; touch {ready}; while :; do sleep 0.1; done"
    proc = subprocess.Popen(tfjob_containers()["Worker"]["command"] + ["sh", "-c", training])
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends PID 1 on eviction or preemption
    assert proc.wait(timeout=20) == 128 + 42
    assert operator_retries(proc.returncode)


# --- Every config key and file a recipe names exists -----------------------------------------------

def string_lists(node):
    """Every list of strings inside a parsed YAML document (container commands and args)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from string_lists(value)
    elif isinstance(node, list):
        if node and all(isinstance(item, str) for item in node):
            yield node
        for value in node:
            yield from string_lists(value)


def command_lines():
    """(file, tokens) for every command line in deploy/: YAML string lists and shell lines."""
    for path in deploy_files(".yaml", ".yml"):
        for doc in yaml_docs(path):
            for tokens in string_lists(doc):
                yield path, tokens
    for path in deploy_files(".sbatch", ".sh"):
        with open(path, encoding="utf-8") as f:
            for line in f.read().replace("\\\n", " ").splitlines():
                yield path, shlex.split(line, comments=True)


def option_values(tokens, option):
    """The values of `option` in a command line, as `option value` or `option=value`."""
    return [tokens[i + 1] if token == option else token.split("=", 1)[1]
            for i, token in enumerate(tokens)
            if (token == option and i + 1 < len(tokens)) or token.startswith(option + "=")]


def test_every_set_and_config_in_the_recipes_names_a_real_key_and_file():
    seen = set()
    for path, tokens in command_lines():
        sets, configs = option_values(tokens, "--set"), option_values(tokens, "--config")
        for config in configs:
            assert os.path.isfile(os.path.join(REPO, config)), f"{path}: --config {config} does not exist"
        if sets or configs:
            load_config(os.path.join(REPO, configs[0]) if configs else None, sets)  # raises naming the key
            seen.update((os.path.relpath(path, REPO), option) for option in sets + configs)
    assert ("deploy/slurm/train.sbatch", "runtime.cluster=slurm") in seen
    assert ("deploy/kubeflow/tfjob.yaml", "configs/char_transformer.yaml") in seen


def test_every_manifest_parses():
    paths = deploy_files(".yaml", ".yml")
    assert {os.path.relpath(p, DEPLOY) for p in paths} >= {
        "kubeflow/tfjob.yaml", "serving/docker-compose.yaml", "serving/kubernetes.yaml"}
    for path in paths:
        assert yaml_docs(path), path


# --- TF Serving over saved_models/ -----------------------------------------------------------------

def readme_serving_ports():
    """(gRPC, REST) ports as the README's serving section documents them."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        match = re.search(r"REST on (\d+), gRPC on (\d+)", f.read())
    return int(match.group(2)), int(match.group(1))


def serving_container():
    """The TF Serving container of the Kubernetes Deployment."""
    (container,) = doc_of_kind(KUBERNETES, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def flags(args):
    """{--flag: value} of `--flag=value` arguments."""
    return dict(arg.split("=", 1) for arg in args)


def test_serving_ports_and_probes_agree_with_the_readme():
    grpc, rest = readme_serving_ports()
    container = serving_container()
    assert container["command"] == ["tensorflow_model_server"]
    server = flags(container["args"])
    assert (int(server["--port"]), int(server["--rest_api_port"])) == (grpc, rest)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": grpc, "rest": rest}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == rest, probe
    service = doc_of_kind(KUBERNETES, "Service")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", grpc, grpc), ("rest", rest, rest)}

    compose = yaml_docs(COMPOSE)[0]["services"]["serving"]
    assert compose["entrypoint"] == ["tensorflow_model_server"]
    server = flags(compose["command"])
    assert (int(server["--port"]), int(server["--rest_api_port"])) == (grpc, rest)
    assert set(compose["ports"]) == {f"{grpc}:{grpc}", f"{rest}:{rest}"}
    assert f"/dev/tcp/127.0.0.1/{rest} " in compose["healthcheck"]["test"][-1]


def served_models(text):
    """{name: base_path} of a TF Serving models.config, parsed as TF Serving parses it."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {model.name: model.base_path for model in config.model_config_list.config}


def compose_mounts(service):
    """{path in the container: path on this machine} of a compose service's bind mounts."""
    mounts = {}
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        mounts[container] = os.path.normpath(os.path.join(os.path.dirname(COMPOSE), host))
    return mounts


def test_probes_ask_for_a_model_that_the_servers_load_from_saved_models():
    with open(MODELS_CONFIG, encoding="utf-8") as f:
        text = f.read()
    models = served_models(text)
    assert len(models) >= 2 and all(path == f"/models/{name}" for name, path in models.items())
    assert doc_of_kind(KUBERNETES, "ConfigMap")["data"]["models.config"] == text

    container = serving_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"].removeprefix("/v1/models/") in models, probe
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["subPath"] == "saved_models"
    assert os.path.dirname(flags(container["args"])["--model_config_file"]) in mounts

    compose = yaml_docs(COMPOSE)[0]["services"]["serving"]
    mounts = compose_mounts(compose)
    assert mounts["/models"] == os.path.join(REPO, "saved_models")
    assert mounts[flags(compose["command"])["--model_config_file"]] == MODELS_CONFIG
    asked = re.search(r"GET /v1/models/(\w+) ", compose["healthcheck"]["test"][-1]).group(1)
    assert asked in models


def test_images_match_the_versions_setup_py_pins():
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        setup = f.read()
    tensorflow = re.search(r'"tensorflow==(\d+\.\d+)\.\*"', setup).group(1)
    for image in (serving_container()["image"], yaml_docs(COMPOSE)[0]["services"]["serving"]["image"]):
        assert re.fullmatch(rf"tensorflow/serving:{re.escape(tensorflow)}\.\d+", image), image

    with open(os.path.join(REPO, "tflm", "__init__.py"), encoding="utf-8") as f:
        version = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.MULTILINE).group(1)
    for kind, container in tfjob_containers().items():
        assert container["image"].endswith(f"/tflm:{version}"), kind
    with open(os.path.join(DEPLOY, "docker", "Dockerfile"), encoding="utf-8") as f:
        base = re.search(r"^FROM python:(\d+)\.(\d+)", f.read(), re.MULTILINE)
    oldest = re.search(r'python_requires=">=(\d+)\.(\d+)', setup)
    assert (int(base.group(1)), int(base.group(2))) >= (int(oldest.group(1)), int(oldest.group(2)))
