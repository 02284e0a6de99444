"""TF_CONFIG for a cluster a scheduler started: under Slurm, built from the variables `srun` sets.

The rest of tflm learns its place in a cluster from TF_CONFIG (`tflm.strategy.current_task`). With
`runtime.cluster=slurm`, `use_cluster` writes that TF_CONFIG first, from the job step `srun`
started, with TensorFlow's own `SlurmClusterResolver`: every task of the step is a worker, and the
k-th task on a node listens on port SLURM_PORT_BASE + k of that node.

    srun python -m tflm.train --set runtime.cluster=slurm --run-dir /shared/runs/big
"""

import json
import os

from tflm.errors import TflmError
from tflm.lazy import tf

SLURM_PORT_BASE = 8888  # first port on every node (SlurmClusterResolver's default); sbatch --exclusive keeps it free
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURMD_NODENAME", "SLURM_STEP_NUM_TASKS",
                   "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")  # what srun sets for each task of a step
NOMINAL_GPUS_PER_NODE = 2**16  # see slurm_workers


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
