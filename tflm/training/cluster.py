"""This process's place in a cluster: the `Worker` that TF_CONFIG describes, and TF_CONFIG for a
cluster a scheduler started.

`current_worker()` reads TF_CONFIG (`parse_tf_config` checks it: task types, indices, one
"host:port" per task, no address twice) into a `Worker`; without TF_CONFIG the process trains
alone, as ("worker", 0). With `runtime.cluster=slurm`, `use_cluster` writes that TF_CONFIG first,
from the job step `srun` started, with TensorFlow's own `SlurmClusterResolver`: every task of the
step is a worker, and the k-th task on a node listens on port SLURM_PORT_BASE + k of that node.

    srun python -m tflm.train --set runtime.cluster=slurm --run-dir /shared/runs/big
"""

import dataclasses
import json
import os

from tflm.errors import TflmError
from tflm.lazy import tf

SLURM_PORT_BASE = 8888  # first port on every node (SlurmClusterResolver's default); sbatch --exclusive keeps it free
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURMD_NODENAME", "SLURM_STEP_NUM_TASKS",
                   "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")  # what srun sets for each task of a step
NOMINAL_GPUS_PER_NODE = 2**16  # see slurm_workers


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place in the cluster: ("worker", 0) when training alone."""

    type: str = "worker"
    index: int = 0
    num_workers: int = 1
    has_chief: bool = False
    addresses: tuple = ()  # ((task name, "host:port"), ...) for every task, this one included

    @property
    def is_chief(self):
        """The chief writes the run directory: task `chief`, else worker 0."""
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self.has_chief)

    @property
    def rank(self):
        """This task's number among all: the chief 0, then the workers in order (as
        MultiWorkerMirroredStrategy numbers its input pipelines)."""
        return 0 if self.type == "chief" else self.index + int(self.has_chief)

    @property
    def name(self):
        """"chief", "worker 1", ... for log lines."""
        return self.type if self.type == "chief" else f"{self.type} {self.index}"


def parse_tf_config(text):
    """The Worker described by a TF_CONFIG JSON string; a TflmError for malformed ones."""
    try:
        tf_config = json.loads(text)
    except ValueError as error:
        raise TflmError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict):
        raise TflmError('TF_CONFIG needs a "cluster" mapping of task type to addresses')
    cluster, task = tf_config["cluster"], tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise TflmError('TF_CONFIG needs "task": {"type": ..., "index": ...}')
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise TflmError(f"TF_CONFIG cluster has task types {sorted(unknown)}; tflm uses chief and worker")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise TflmError(f'TF_CONFIG cluster["{kind}"] must be a list of "host:port" strings')
        for address in addresses:
            check_address(kind, address)
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise TflmError(f"TF_CONFIG task type {kind!r} is not in the cluster ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TflmError(f"TF_CONFIG task index must be a whole number, got {json.dumps(index)}")
    if not 0 <= index < len(cluster[kind]):
        raise TflmError(f"TF_CONFIG task index {index!r} is outside cluster[{kind!r}] "
                        f"(0..{len(cluster[kind]) - 1})")
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    addresses = tuple((Worker(k, i).name, a) for k in ("chief", "worker") for i, a in enumerate(cluster.get(k, [])))
    check_distinct_addresses(addresses)
    return Worker(kind, index, num_workers, "chief" in cluster, addresses)


def check_address(kind, address):
    """Raise unless `address` is "host:port" or "[IPv6 address]:port" with a port TCP can use."""
    host, _, port = address.rpartition(":")
    where = f'TF_CONFIG cluster["{kind}"] has {address!r}'
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TflmError(f"{where}: the port must be a number from 1 to 65535")
    if not host.strip("[]"):
        raise TflmError(f"{where}: the host is missing")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise TflmError(f"{where}: write an IPv6 address in brackets, as [::1]:{port}")


def split_address(address):
    """(host, port) of a checked "host:port" or "[IPv6 address]:port"."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_distinct_addresses(addresses):
    """Raise if two tasks of a TF_CONFIG cluster share an address (they would wait for each other forever)."""
    seen = {}
    for name, address in addresses:
        if address in seen:
            raise TflmError(f"TF_CONFIG gives {seen[address]} and {name} the same address {address}; "
                            "every task needs its own host:port")
        seen[address] = name


def current_worker():
    """The Worker from the environment's TF_CONFIG, or a lone worker."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else Worker()


def use_cluster(runtime):
    """Set TF_CONFIG as runtime.cluster says (call before anything reads TF_CONFIG)."""
    if runtime.cluster != "slurm":
        return
    tf_config = slurm_tf_config()
    given = os.environ.get("TF_CONFIG", "").strip()
    if given and given != tf_config:
        raise TflmError("runtime.cluster=slurm builds TF_CONFIG from Slurm's variables; "
                        "unset the TF_CONFIG this process was given")
    os.environ["TF_CONFIG"] = tf_config


def slurm_tf_config(port_base=SLURM_PORT_BASE):
    """The TF_CONFIG JSON string of this task of a Slurm job step."""
    missing = [name for name in SLURM_VARIABLES if not os.environ.get(name, "").strip()]
    if missing:
        raise TflmError(f"runtime.cluster=slurm needs {', '.join(missing)}: start python -m tflm.train "
                        "with srun inside a Slurm allocation")
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS"):
        if not os.environ[name].strip().isdigit():
            raise TflmError(f"runtime.cluster=slurm: {name} must be a number, got {os.environ[name]!r}")
    workers = slurm_workers(port_base)
    own = f"{os.environ['SLURMD_NODENAME'].strip()}:{port_base + int(os.environ['SLURM_LOCALID'])}"
    if own not in workers:
        raise TflmError(f"runtime.cluster=slurm: this task ({own}, from SLURMD_NODENAME and SLURM_LOCALID) is not "
                        f"one of the {len(workers)} tasks of SLURM_STEP_NODELIST={os.environ['SLURM_STEP_NODELIST']} "
                        f"with SLURM_STEP_TASKS_PER_NODE={os.environ['SLURM_STEP_TASKS_PER_NODE']}")
    # The index comes from this task's own address, not from SLURM_PROCID: the resolver orders nodes by
    # name (node10 before node9) while Slurm numbers tasks in node-list order (node9 before node10).
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": workers.index(own)}})


def slurm_workers(port_base):
    """["host:port", ...] of every task of the job step, in SlurmClusterResolver's order."""
    try:
        # tflm gives a worker every device it sees (MirroredStrategy inside the worker) and leaves GPU
        # binding to Slurm (--gpus-per-task), so the resolver must not set CUDA_VISIBLE_DEVICES. It
        # lays out only gpus_per_node // gpus_per_task tasks on a node, and without gpus_per_node it
        # runs nvidia-smi, hence the nominal count.
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port_base, gpus_per_node=NOMINAL_GPUS_PER_NODE, gpus_per_task=1, auto_set_gpu=False)
        return resolver.cluster_spec().as_dict().get("worker", [])
    except (RuntimeError, ValueError) as error:
        raise TflmError(f"runtime.cluster=slurm: {str(error).splitlines()[0]}") from None
