"""Choosing the tf.distribute strategy, and which task of a cluster this process is.

auto: `TF_CONFIG` set -> MultiWorkerMirroredStrategy; two or more GPUs -> MirroredStrategy;
`runtime.logical_cpus` >= 2 -> MirroredStrategy over those logical CPUs; else the default
strategy. `runtime.logical_cpus` splits the CPU so MirroredStrategy runs on a laptop and in CI.
"""

import contextlib
import dataclasses
import errno
import functools
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import traceback

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
    addresses = tuple((Task(k, i).name, a) for k in ("chief", "worker") for i, a in enumerate(cluster.get(k, [])))
    check_distinct_addresses(addresses)
    return Task(kind, index, num_workers, "chief" in cluster, addresses)


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


_cluster_started = False  # whether this process joined a multi-worker cluster (see leave_cluster_at_once)
_leave_at_once = False  # whether a command asked to end as soon as its work in a cluster is done


def make_strategy(runtime):
    """Build the strategy named by runtime.strategy (call once, early, after current_task()
    has validated TF_CONFIG)."""
    configure_threads(runtime)
    split_cpu(runtime.logical_cpus)
    name = resolve_strategy_name(runtime)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG", "").strip():
            raise TflmError("runtime.strategy=multi_worker needs TF_CONFIG (or use tflm.launch)")
        global _cluster_started
        _cluster_started = True
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
                # No timeout: TensorFlow keeps a thread sleeping out the timeout of every collective,
                # so fast steps piled up thousands of threads until a worker aborted. A lost peer
                # still fails the step: a dead process resets its connections at once, and one
                # that hangs or whose host vanishes stops the coordination service's heartbeats
                # (TensorFlow's default: 10 s), which aborts the collectives of every worker.
                timeout_seconds=None,
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


RETRY_S = 0.2  # between two tries to reach a peer that refused
TRY_S = 1.0  # how long one try may wait for a peer that does not answer (a dropped SYN)
MAX_TRIES_AT_ONCE = 256  # connections open at once while waiting, well below the usual 1024 files
MISSING_NAMED = 10  # peers named in the error line; the rest are counted


def wait_for_peers(task, timeout_s):
    """Rendezvous before TensorFlow starts: hold this task's port, wait until every peer's
    address answers, then hand the port to TensorFlow. A ClusterError names the peers still
    missing after `timeout_s`; a TflmError says if this task's own port is taken.

    TensorFlow itself waits for missing peers without a deadline while holding the GIL (no
    Python thread, not even a SIGTERM handler, runs), so the waiting has to happen here. The
    peers are tried all at once, each try cut at TRY_S and at the deadline, so that the deadline
    holds however many peers there are and however they fail to answer.
    """
    own = dict(task.addresses)[task.name]
    listener = listen_on(own, task.name)
    try:
        missing = reach({name: address for name, address in task.addresses if name != task.name},
                        time.monotonic() + timeout_s, listener)
    finally:
        listener.close()
    if missing:
        named = ", ".join(f"{name} ({address})" for name, address in list(missing.items())[:MISSING_NAMED])
        more = f" and {len(missing) - MISSING_NAMED} more" if len(missing) > MISSING_NAMED else ""
        raise ClusterError(f"runtime.cluster_timeout_s={timeout_s}s passed waiting for the cluster; "
                           f"not reachable: {named}{more}")


def listen_on(own, name):
    """A socket holding the port of this task's address `own` on every interface, IPv6 and IPv4
    (the task's own name may not resolve to it yet); IPv4 only where the host has no IPv6."""
    port = split_address(own)[1]
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind((host, port))
        except OSError as error:
            listener.close()
            if error.errno == errno.EADDRINUSE:
                raise TflmError(f"{name}'s address {own} is already in use") from None
            continue
        listener.listen(64)
        listener.setblocking(False)
        return listener
    raise TflmError(f"{name} cannot listen on port {port} of this host")


def reach(peers, deadline, listener):
    """Try every peer {name: address} until each has accepted a TCP connection or `deadline`
    (time.monotonic) passes; returns the {name: address} never reached. Meanwhile accepts (and
    closes) the connections peers make to `listener`, so that its backlog never fills up."""
    pending, tries_made = dict(peers), dict.fromkeys(peers, 0)
    next_try = dict.fromkeys(peers, 0.0)
    tries = {}  # socket -> (peer name, when this try is given up)
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        try:
            while pending and time.monotonic() < deadline:
                now = time.monotonic()
                trying = {name for name, _ in tries.values()}
                for name in [n for n in pending if n not in trying and next_try[n] <= now]:
                    if len(tries) >= MAX_TRIES_AT_ONCE:
                        break
                    sock = start_connect(pending[name], tries_made[name])
                    tries_made[name] += 1
                    next_try[name] = now + RETRY_S
                    if sock is not None:
                        tries[sock] = (name, min(now + TRY_S, deadline))
                        selector.register(sock, selectors.EVENT_WRITE)
                wake = min([deadline, now + RETRY_S, *(give_up for _, give_up in tries.values())])
                for key, _ in selector.select(max(0.0, wake - time.monotonic())):
                    if key.fileobj is listener:
                        accept_and_close(listener)
                        continue
                    name, _ = tries.pop(key.fileobj)
                    selector.unregister(key.fileobj)
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        del pending[name]
                    key.fileobj.close()
                now = time.monotonic()
                for sock in [sock for sock, (_, give_up) in tries.items() if give_up <= now]:
                    del tries[sock]
                    selector.unregister(sock)
                    sock.close()
        finally:
            for sock in tries:
                sock.close()
    return pending


def start_connect(address, attempt):
    """A non-blocking socket connecting to "host:port" (the attempt-th of the host's addresses,
    in turn), or None if the host does not resolve (yet) or refused at once."""
    host, port = split_address(address)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    family, kind, proto, _, target = found[attempt % len(found)]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        sock.connect(target)
    except (BlockingIOError, InterruptedError):
        pass  # under way: the selector reports how it ended
    except OSError:  # refused at once
        sock.close()
        return None
    return sock


def accept_and_close(listener):
    """Accept the connections waiting on `listener` and close them: a peer only checks it is up."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connection.close()


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


def wait_for_every_worker(strategy):
    """A barrier with no deadline: after each worker has read its data, which can take long and
    unevenly. A peer that dies meanwhile still fails it (its connections reset, or its
    heartbeats stop)."""

    def arrive():
        return tf.distribute.get_replica_context().all_reduce("SUM", tf.constant(1.0))

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
    reason = reason.group(0) if reason else type(error).__name__
    if peer == "a peer" and "CoordinationService/Heartbeat" in text:
        # This task's heartbeats to the coordination service went unanswered: it runs on the
        # first task, the chief (or worker 0).
        peer, reason = task.addresses[0][0], "no answer to heartbeats"
    when = "during start-up" if step is None else f"at step {step}"
    return ClusterError(f"lost {peer} {when} ({reason}); "
                        f"relaunch the same command to resume from the last checkpoint")


def leave_cluster_at_once(main):
    """Wrap a command's `main` so that, once it is done in a multi-worker run (finished, stopped
    or failed), the process ends at once. TensorFlow's teardown there takes up to a minute: it
    waits for the other workers, and a worker still in it when the chief has gone logs that the
    coordination service is unreachable."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        global _leave_at_once
        _leave_at_once = True
        # The process ends inside the `except` blocks: leaving one frees the exception, and with
        # its traceback the run's TensorFlow objects, which starts that teardown.
        try:
            code = main(*args, **kwargs)
        except SystemExit as stop:
            if not _cluster_started:
                raise
            end_process(stop.code)
        except BaseException:
            if not _cluster_started:
                raise
            traceback.print_exc()
            end_process(1)
        if _cluster_started:
            end_process(code)
        return code

    return wrapper


def end_process(code):
    """Flush the output and end this process with `code` (as sys.exit takes it), skipping teardown."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    flush_native_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def leave_when_done(strategy):
    """In a command's multi-worker run (see leave_cluster_at_once), meet the other workers and end
    the command with exit code 0, so that all leave together; call it while the run's TensorFlow
    objects are still referenced: freeing them waits on the other workers for seconds."""
    if _leave_at_once and _cluster_started:
        wait_for_every_worker(strategy)
        raise SystemExit(0)


def exit_now(message, code):
    """Print one line and end the process at once, skipping TensorFlow's teardown (which can
    block on a dead peer)."""
    flush_native_logs()  # so that this line comes last
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)
