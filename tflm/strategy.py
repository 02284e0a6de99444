"""Choosing the tf.distribute strategy, and which task of a cluster this process is.

auto: `TF_CONFIG` set -> MultiWorkerMirroredStrategy; two or more GPUs -> MirroredStrategy;
`runtime.logical_cpus` >= 2 -> MirroredStrategy over those logical CPUs; else the default
strategy. `runtime.logical_cpus` splits the CPU so MirroredStrategy runs on a laptop and in CI.
"""

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

from tflm.errors import ClusterError, TflmError
from tflm.lazy import tf
from tflm.quiet import flush_native_logs


@dataclasses.dataclass(frozen=True)
class Task:
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
    def name(self):
        """"chief", "worker 1", ... for log lines."""
        return self.type if self.type == "chief" else f"{self.type} {self.index}"


def parse_tf_config(text):
    """The Task described by a TF_CONFIG JSON string; a TflmError for malformed ones."""
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
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise TflmError(f"TF_CONFIG task type {kind!r} is not in the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise TflmError(f"TF_CONFIG task index {index!r} is outside cluster[{kind!r}] "
                        f"(0..{len(cluster[kind]) - 1})")
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    addresses = tuple((Task(k, i).name, a) for k in ("chief", "worker") for i, a in enumerate(cluster.get(k, [])))
    check_distinct_addresses(addresses)
    return Task(kind, index, num_workers, "chief" in cluster, addresses)


def check_distinct_addresses(addresses):
    """Raise if two tasks of a TF_CONFIG cluster share an address (they would wait for each other forever)."""
    seen = {}
    for name, address in addresses:
        if address in seen:
            raise TflmError(f"TF_CONFIG gives {seen[address]} and {name} the same address {address}; "
                            "every task needs its own host:port")
        seen[address] = name


def current_task():
    """The Task from the environment's TF_CONFIG, or a lone worker."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else Task()


def split_cpu(logical_cpus):
    """Split the first CPU into `logical_cpus` logical devices (before TensorFlow starts)."""
    if logical_cpus < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)]
        )
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != logical_cpus:
            raise TflmError(f"runtime.logical_cpus={logical_cpus}, but TensorFlow already started "
                            f"with {current} CPU devices in this process") from None


def resolve_strategy_name(runtime, probe_devices=True):
    """The concrete strategy name for runtime.strategy (resolving auto; without `probe_devices`,
    GPUs are not counted)."""
    name = runtime.strategy
    if name != "auto":
        return name
    if os.environ.get("TF_CONFIG", "").strip():
        return "multi_worker"
    if runtime.logical_cpus >= 2 or (probe_devices and len(tf.config.list_physical_devices("GPU")) >= 2):
        return "mirrored"
    return "default"


def configure_threads(runtime):
    """Apply runtime.intra_op_threads / inter_op_threads (before TensorFlow starts)."""
    if runtime.intra_op_threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        # XLA's CPU code has its own thread pool that ignores TensorFlow's setting.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    try:
        if runtime.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(runtime.intra_op_threads)
        if runtime.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(runtime.inter_op_threads)
    except RuntimeError:
        raise TflmError("runtime.*_op_threads must be set before TensorFlow starts in this process") from None


def make_strategy(runtime):
    """Build the strategy named by runtime.strategy (call once, early, after current_task()
    has validated TF_CONFIG)."""
    configure_threads(runtime)
    split_cpu(runtime.logical_cpus)
    name = resolve_strategy_name(runtime)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG", "").strip():
            raise TflmError("runtime.strategy=multi_worker needs TF_CONFIG (or use tflm.launch)")
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
                timeout_seconds=runtime.cluster_timeout_s,
                # One all-reduce for all gradients instead of one per variable: on localhost
                # gRPC each collective costs round trips (measured: 2-worker scaling 1.27x per
                # variable, 1.40x packed). 25 MB, as PyTorch DDP's default bucket.
                bytes_per_pack=25 * 1024 * 1024,
            )
        )
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=None if gpus else tf.distribute.ReductionToOneDevice()
        )
    return tf.distribute.get_strategy()


def port_is_open(address, timeout_s=1.0):
    """Whether something accepts TCP connections at "host:port"."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_peers(task, timeout_s):
    """Rendezvous before TensorFlow starts: hold this task's port, wait until every peer's
    address answers, then hand the port to TensorFlow. A ClusterError names the peers still
    missing after `timeout_s`; a TflmError says if this task's own port is taken.

    TensorFlow itself waits for missing peers without a deadline while holding the GIL (no
    Python thread, not even a SIGTERM handler, runs), so the waiting has to happen here.
    """
    own = dict(task.addresses)[task.name]
    port = own.rpartition(":")[2]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(port)))  # every interface: the task's own name may not resolve to it yet
    except OSError:
        listener.close()
        raise TflmError(f"{task.name}'s address {own} is already in use") from None
    listener.listen(64)
    try:
        pending = {name: address for name, address in task.addresses if name != task.name}
        deadline = time.monotonic() + timeout_s
        while pending:
            pending = {name: address for name, address in pending.items() if not port_is_open(address, 0.5)}
            if pending and time.monotonic() > deadline:
                missing = ", ".join(f"{name} ({address})" for name, address in pending.items())
                raise ClusterError(f"runtime.cluster_timeout_s={timeout_s}s passed waiting for the cluster; "
                                   f"not reachable: {missing}")
            time.sleep(0.2)
    finally:
        listener.close()


WATCHDOG = """
import os, select, signal, sys
parent, timeout_s, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout_s)[0]:  # neither disarmed nor ended in time
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def startup_watchdog(task, timeout_s, prefix):
    """Backstop for a peer that vanishes between the rendezvous and TensorFlow's cluster start:
    TensorFlow then waits without a deadline while holding the GIL, so no Python thread or
    signal handler runs. A watchdog process prints one line and kills this one (status 137) if
    the block has not finished in `timeout_s`; closing its stdin disarms it, and it also ends
    when this process does."""
    if task.num_workers <= 1:
        yield
        return
    message = (f"{prefix}tflm: error: TensorFlow did not start the cluster within runtime.cluster_timeout_s="
               f"{timeout_s}s (a peer went away after the rendezvous?); relaunch the same command on every worker")
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(timeout_s), message],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


DATA_BARRIER_TIMEOUT_S = 7 * 86400


def wait_for_every_worker(strategy):
    """A barrier with no practical deadline (a week): after each worker has read its data, which
    can take long and unevenly, before the first collective with runtime.cluster_timeout_s. A
    peer that dies meanwhile still fails it at once (its connection resets)."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=DATA_BARRIER_TIMEOUT_S)

    def arrive():
        return tf.distribute.get_replica_context().all_reduce("SUM", tf.constant(1.0), options=options)

    tf.function(lambda: strategy.run(arrive))()


def peer_errors():
    """The TensorFlow errors a collective raises when a peer is gone."""
    return (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError, tf.errors.InternalError)


@contextlib.contextmanager
def exit_if_a_peer_is_lost(task, prefix, current_step):
    """In a multi-worker run, turn a collective that failed because a peer died into one line
    naming the peer and exit code 3, at once: TensorFlow's teardown can block on the dead peer."""
    if task.num_workers > 1 and not getattr(threading.excepthook, "quiet_watchers", False):
        # For the rest of the process: the watcher threads also see peers end after a clean finish.
        threading.excepthook = _quiet_watcher_hook(threading.excepthook)
    try:
        yield
    except peer_errors() as error:
        if task.num_workers == 1:
            raise
        lost = lost_peer_error(error, task, current_step())
        exit_now(f"{prefix}tflm: error: {lost}", lost.exit_code)


def _quiet_watcher_hook(previous_hook):
    """A threading.excepthook that drops the traceback PreemptionCheckpointHandler's watcher
    threads print when the chief (and the coordination service with it) dies; the training loop
    reports that loss itself, in one line."""

    def hook(args):
        watcher = args.thread is not None and args.thread.name.startswith(
            ("PeerTerminationWatcher", "WorkerTerminationSignalWatcher"))
        if not (watcher and isinstance(args.exc_value, tf.errors.OpError)):
            previous_hook(args)

    hook.quiet_watchers = True
    return hook


def lost_peer_error(error, task, step):
    """A ClusterError naming the peer a collective lost, from TensorFlow's error text."""
    text = str(error)
    match = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", text)
    peer = Task(match.group(1), int(match.group(2))).name if match else "a peer"
    if peer == task.name:
        peer = "a peer"
    reason = re.search(r"connection reset by peer|connection refused|socket closed|heartbeat|deadline exceeded",
                       text, re.IGNORECASE)
    when = "during start-up" if step is None else f"at step {step}"
    return ClusterError(f"lost {peer} {when} ({reason.group(0) if reason else type(error).__name__}); "
                        f"relaunch the same command to resume from the last checkpoint")


def exit_now(message, code):
    """Print one line and end the process at once, skipping TensorFlow's teardown (which can
    block on a dead peer)."""
    flush_native_logs()  # so that this line comes last
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)
