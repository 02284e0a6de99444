"""Input pipelines: windows of seq_len + 1 token ids read by index from the token store.

A training window is a pure function of (train.seed, global example n), n = step * global batch
+ position in the global batch:

    epoch, i = divmod(n, W)              W: windows per epoch (the same every epoch)
    j = index_shuffle(i, seed, epoch)    a seeded bijection over 0..W-1: each window once per
                                         epoch, the whole corpus shuffled, no buffer
    shard, k = where window j lies       windows never straddle shards (nor source files)
    window = tokens[shift(epoch) + k * (seq_len + 1) : ... + seq_len + 1]

`shift(epoch)`, seeded, moves the window alignment each epoch, so a small corpus trained for many
epochs sees every position at every place in the window; W counts the windows that fit for every
shift. Replica r (of R, over all workers) reads positions r * B/R ... (r + 1) * B/R - 1 of each
global batch, so any number of replicas or workers sees exactly the global batches of one
device, each row carries its n as the example id (dropout masks follow it), and resuming at any
step is O(1): nothing is skipped. tf.data stays the engine (prefetch, parallel reads,
`distribute_datasets_from_function`).

Validation windows are the split's windows in order, with no shift.
"""

import dataclasses

import numpy as np

from tflm.errors import TflmError
from tflm.lazy import tf

LAST_STEP = 2**62 // 2**24  # beyond any run: keeps n = step * global batch inside int64


@dataclasses.dataclass(frozen=True)
class Windows:
    """Where a split's windows of `length` tokens lie: per shard, how many and the first's index."""

    split: str
    length: int
    counts: np.ndarray  # windows in each shard
    starts: np.ndarray  # index of each shard's first window

    @classmethod
    def of(cls, store, split, seq_len):
        """The windows of seq_len + 1 tokens of a split (train: those that fit at every shift)."""
        length = seq_len + 1
        tokens = np.array(store.shard_tokens(split), np.int64)
        counts = np.maximum(tokens - (length - 1) if split == "train" else tokens, 0) // length
        return cls(split, length, counts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))

    @property
    def total(self):
        """Windows per epoch."""
        return int(self.counts.sum())

    def locate(self, j, shift):
        """(shard, token position) of window j (int64 tensors) under an alignment shift."""
        shard = tf.searchsorted(tf.constant(self.starts[self.counts > 0]), j, side="right") - 1
        nonempty = tf.constant(np.flatnonzero(self.counts > 0), tf.int64)
        k = j - tf.gather(tf.constant(self.starts[self.counts > 0]), shard)
        return tf.gather(nonempty, shard), shift + k * self.length


def check_fits(store, seq_len, global_batch):
    """Raise if training has no window, or validation too few for one global batch."""
    train, validation = Windows.of(store, "train", seq_len), Windows.of(store, "validation", seq_len)
    if train.total == 0:
        raise TflmError(f"data.seq_len={seq_len} is larger than the training split "
                        f"({store.tokens('train')} tokens in {len(train.counts)} shard(s))")
    if validation.total < global_batch:
        raise TflmError(f"the validation split has {validation.total} windows of seq_len+1={seq_len + 1} "
                        f"tokens, fewer than train.global_batch_size={global_batch}")


def training_window(windows, seed, n):
    """(shard, position) of the training windows of global examples `n` (int64 [b]; a batch
    may straddle two epochs)."""
    epoch, i = n // windows.total, n % windows.total
    seeds = tf.stack([tf.fill(tf.shape(n), tf.constant(seed, tf.int64)), epoch, tf.zeros_like(n)], axis=1)
    j = permuted(i, seeds, windows.total)
    shift = permuted(tf.zeros_like(n), seeds + [[0, 0, 1]], windows.length)  # where 0 lands: a seeded shift
    return windows.locate(j, shift)


def permuted(index, seeds, size):
    """Where each `index` lands in the permutation of 0..size-1 its seed [n, 3] picks (a seeded
    bijection: tf.random.experimental.index_shuffle's op, called directly because the wrapper
    in TF 2.21 pads a batch of seeds along the wrong axis)."""
    return tf.raw_ops.RandomIndexShuffle(index=index, seed=seeds, max_index=tf.constant(size - 1, tf.int64),
                                         rounds=4)


def replica_examples(q, global_batch, per_replica, local_replicas, worker):
    """The global example numbers of this worker's q-th per-replica batch (int64 [per_replica])."""
    step, local = q // local_replicas, q % local_replicas
    replica = worker * local_replicas + local
    return step * global_batch + replica * per_replica + tf.range(per_replica, dtype=tf.int64)


def batches_of_examples(store, windows, examples, locate):
    """A dataset of example-number batches -> (inputs, targets, example ids)."""

    def read(n):
        shard, position = locate(n)
        tokens = tf.numpy_function(lambda s, p: store.read(windows.split, s, p, windows.length),
                                   [shard, position], tf.int32, stateful=False)
        tokens = tf.ensure_shape(tokens, [None, windows.length])
        return tokens[:, :-1], tokens[:, 1:], n

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = examples.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_dataset_fn(store, seq_len, global_batch, seed, start_step=0):
    """A `distribute_datasets_from_function` input fn for training from `start_step` on."""
    windows = Windows.of(store, "train", seq_len)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        local = global_batch // per_replica // input_context.num_input_pipelines
        worker = input_context.input_pipeline_id
        batches = tf.data.Dataset.range(start_step * local, LAST_STEP * local).map(
            lambda q: replica_examples(q, global_batch, per_replica, local, worker))
        return batches_of_examples(store, windows, batches, lambda n: training_window(windows, seed, n))

    return dataset_fn


EVAL_SHARE = 0.1  # of training time, for evaluations by default
EVAL_STEP_COST = 1 / 3  # an evaluation batch (forward only) against a training step (forward, backward, update)


def eval_batches_per_pass(store, seq_len, global_batch, eval_batches, eval_every):
    """How many global batches one evaluation runs: train.eval_batches, or by default as many as
    cost about EVAL_SHARE of the training steps between evaluations; never more than the split has."""
    available = Windows.of(store, "validation", seq_len).total // global_batch
    wanted = eval_batches or max(1, round(EVAL_SHARE * eval_every / EVAL_STEP_COST))
    return min(wanted, available)


def eval_dataset_fn(store, seq_len, global_batch, batches):
    """Input fn for validation: the first `batches` global batches of windows, in order, every pass."""
    windows = Windows.of(store, "validation", seq_len)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        local = global_batch // per_replica // input_context.num_input_pipelines
        worker = input_context.input_pipeline_id
        batches_ = tf.data.Dataset.range(batches * local).map(
            lambda q: replica_examples(q, global_batch, per_replica, local, worker)).repeat()
        dataset = batches_of_examples(store, windows, batches_, lambda n: windows.locate(n, tf.constant(0, tf.int64)))
        return dataset.map(lambda inputs, targets, _: (inputs, targets))

    return dataset_fn
