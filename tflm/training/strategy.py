"""Choosing the tf.distribute strategy, and what a multi-worker run does when a peer is lost or
its work is done.

auto: `TF_CONFIG` set -> MultiWorkerMirroredStrategy; two or more GPUs -> MirroredStrategy;
`runtime.logical_cpus` >= 2 -> MirroredStrategy over those logical CPUs; else the default
strategy. `runtime.logical_cpus` splits the CPU so MirroredStrategy runs on a laptop and in CI.
In a cluster, a collective that fails because a peer died becomes one line and exit code 3
(`exit_if_a_peer_is_lost`), and a command leaves at once when done (`leave_cluster_at_once`),
skipping TensorFlow's teardown, which can block on the other workers. Which task this process is
comes from `cluster.py`; the rendezvous before TensorFlow starts is `rendezvous.py`.
"""

import contextlib
import functools
import os
import re
import sys
import threading
import traceback

from tflm.errors import ClusterError, TflmError
from tflm.lazy import tf
from tflm.quiet import flush_native_logs
from tflm.training.cluster import Worker


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


def uses_model_parallelism(runtime):
    """Whether the model is split over devices (pipeline stages or tensor-parallel shards)."""
    return runtime.pipeline_stages > 1 or runtime.tensor_parallel > 1


def make_strategy(runtime):
    """Build the strategy named by runtime.strategy (call once, early, after current_worker()
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
    if uses_model_parallelism(runtime):  # the pipeline trainer runs its own replicas (tflm.training.pipeline)
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=None if gpus else tf.distribute.ReductionToOneDevice()
        )
    return tf.distribute.get_strategy()


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
    peer = Worker(match.group(1), int(match.group(2))).name if match else "a peer"
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
