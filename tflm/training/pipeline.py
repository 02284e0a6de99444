"""Pipeline parallelism's plan: which devices a worker's pipelines run on, where the model is cut
into stages, the order each stage works through the micro-batches, and the model placed by it.

A worker's local devices (GPUs, else the logical CPUs of runtime.logical_cpus) hold R = devices /
S pipelines (data-parallel replicas), each S consecutive devices, stage k of every replica on its
k-th one. The model is the chain of its pieces (tflm.models.next_token: the embedding, each block
or LSTM layer, the head), cut into S contiguous stages holding about equal numbers of weights, the
measure of the memory a stage needs for its weights and optimizer state (AdamW: three times the
weights); FLOPs would weigh the head (vocabulary x width per token) above a block at small widths,
but weights are what does not fit. The schedules are GPipe's (Huang et al., 2019: every forward,
then every backward) and PipeDream-flush's 1F1B (Narayanan et al., 2021: after S - k warm-up
forwards, stage k alternates one forward and one backward, so it holds at most S micro-batches'
activations). The trainer that runs them is tflm/training/pipeline_trainer.py.
"""

import dataclasses
import math

from tflm.errors import TflmError
from tflm.lazy import keras, tf

FORWARD, BACKWARD = "forward", "backward"


def balanced_cut(sizes, stages):
    """The cut of pieces with `sizes` (weights each) into `stages` contiguous non-empty groups
    whose largest total is the smallest possible: [(first, end)] per stage (end exclusive)."""
    count = len(sizes)
    if not 1 <= stages <= count:
        raise ValueError(f"cannot cut {count} pieces into {stages} stages")
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    # best[s][i]: the smallest largest-stage total of the first i pieces in s stages, and its last cut
    best = [[(float("inf"), 0)] * (count + 1) for _ in range(stages + 1)]
    best[0][0] = (0, 0)
    for s in range(1, stages + 1):
        for i in range(s, count + 1):
            best[s][i] = min((max(best[s - 1][j][0], prefix[i] - prefix[j]), j) for j in range(s - 1, i))
    bounds, end = [], count
    for s in range(stages, 0, -1):
        start = best[s][end][1]
        bounds.append((start, end))
        end = start
    return bounds[::-1]


def gpipe_order(stage, stages, microbatches):
    """GPipe: every micro-batch's forward, then every backward."""
    return [(FORWARD, m) for m in range(microbatches)] + [(BACKWARD, m) for m in range(microbatches)]


def one_f_one_b_order(stage, stages, microbatches):
    """1F1B (PipeDream-flush): S - 1 - stage forwards to fill the pipeline, then one forward and
    one backward in turn, then the remaining backwards."""
    warmup = min(stages - 1 - stage, microbatches)
    order = [(FORWARD, m) for m in range(warmup)]
    for m in range(microbatches - warmup):
        order += [(FORWARD, warmup + m), (BACKWARD, m)]
    return order + [(BACKWARD, m) for m in range(microbatches - warmup, microbatches)]


SCHEDULES = {"gpipe": gpipe_order, "1f1b": one_f_one_b_order}


def stage_orders(schedule, stages, microbatches):
    """[[(FORWARD or BACKWARD, micro-batch)] in the order stage k works] for each stage."""
    return [SCHEDULES[schedule](k, stages, microbatches) for k in range(stages)]


def bubble_fraction(stages, microbatches):
    """GPipe's idle share of a step with equal stages: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a worker's pipelines run: lanes[r][k] are the devices of stage k of local replica r
    (one, or runtime.tensor_parallel of them: tflm/training/tensor_parallel.py)."""

    lanes: tuple
    workers: int = 1

    @property
    def devices(self):
        """devices[r][k]: the first device of stage k of local replica r."""
        return tuple(tuple(stage[0] for stage in replica) for replica in self.lanes)

    @property
    def stages(self):
        """Stages per pipeline."""
        return len(self.lanes[0])

    @property
    def shards(self):
        """Devices per stage (tensor parallelism)."""
        return len(self.lanes[0][0])

    @property
    def local_replicas(self):
        """Pipelines on this worker."""
        return len(self.lanes)

    @property
    def replicas(self):
        """Pipelines over all workers: the data-parallel replicas."""
        return self.local_replicas * self.workers


def local_devices(worker):
    """("GPU" or "CPU", this worker's devices of that kind): its GPUs, else its (logical) CPUs."""
    for kind in ("GPU", "CPU"):
        found = [d for d in tf.config.list_logical_devices(kind) if is_local(d.name, worker)]
        if found:
            return kind, [f"/device:{kind}:{i}" for i in range(len(found))]
    raise TflmError("TensorFlow found no device")


def is_local(device_name, worker):
    """Whether a device is this worker's (in a cluster, TensorFlow also lists the others')."""
    spec = tf.DeviceSpec.from_string(device_name)
    return worker.num_workers == 1 or spec.job is None or (spec.job == worker.type and spec.task == worker.index)


def pipeline_layout(runtime, worker):
    """The Layout of runtime.pipeline_stages x runtime.tensor_parallel on this worker's devices
    (replica r's stage k on devices (r S + k) T ... (r S + k) T + T - 1, so a stage's lanes are
    neighbours, as tensor parallelism wants them: on one node's fastest links); a TflmError if
    there are too few devices, or they are not a multiple of S x T."""
    stages, shards = runtime.pipeline_stages, runtime.tensor_parallel
    per_replica = stages * shards
    kind, devices = local_devices(worker)
    if len(devices) < per_replica or len(devices) % per_replica:
        hint = "; on a CPU, runtime.logical_cpus splits it into that many" if kind == "CPU" else ""
        asked = " x ".join(f"runtime.{name}={value}" for name, value in
                           (("pipeline_stages", stages), ("tensor_parallel", shards)) if value > 1)
        raise TflmError(f"{asked} needs a multiple of {per_replica} devices per worker (replicas x stages x "
                        f"shards), found {len(devices)} {kind}(s){hint}")
    lanes = [tuple(devices[i:i + shards]) for i in range(0, len(devices), shards)]
    return Layout(tuple(tuple(lanes[r * stages:(r + 1) * stages]) for r in range(len(lanes) // stages)),
                  worker.num_workers)


def piece_weights(model):
    """The number of weights in each of `model`'s pieces (a built model)."""
    return [sum(math.prod(v.shape) for v in unique_variables(piece.layers)) for piece in model.pieces()]


def unique_variables(layers, trainable=False):
    """The (trainable) variables of `layers`, each once, in order."""
    found, seen = [], set()
    for layer in layers:
        for variable in (layer.trainable_variables if trainable else layer.variables):
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
    return found


def stage_pieces(model, cut):
    """[[Piece] of stage k] of `model` cut at `cut` (balanced_cut's bounds)."""
    pieces = model.pieces()
    return [pieces[first:end] for first, end in cut]


def placed_model(new_model, like, cut, devices, seq_len):
    """A model from `new_model()` whose stage k (of `cut`) has its weights on devices[k], holding
    the weights of `like` (the same network, built): each stage is built under its device, running
    a dummy batch through the chain; whatever is left (a classifier's unused next-token head) is
    built on the last."""
    model = new_model()
    token_ids = keras.ops.zeros((1, seq_len), dtype="int32")
    x = token_ids
    for pieces, device in zip(stage_pieces(model, cut), devices):
        with tf.device(device):
            for piece in pieces:
                x = piece.run(x, token_ids, None, False)
    with tf.device(devices[-1]):
        model(token_ids)
    model.set_weights(like.get_weights())
    return model


def describe_cut(model, sizes, cut, devices):
    """One line per stage: its device, pieces and share of the weights (`sizes`: piece_weights(model))."""
    names = [piece.name for piece in model.pieces()]
    total = sum(sizes) or 1
    return [f"stage {k} on {device}: {', '.join(names[first:end])} "
            f"({sum(sizes[first:end]):,} weights, {100 * sum(sizes[first:end]) / total:.0f}%)"
            for k, ((first, end), device) in enumerate(zip(cut, devices))]
