"""TODO docstring."""

from tflm.data.pipeline import eval_dataset_fn, train_dataset_fn
from tflm.data.tokenizers import load_tokenizer

import math
import tensorflow as tf
from tflm.runs.init_from import RECORD_FILE
from tflm.data.prepare import StoreExists
from tflm.tasks import TaskParts
from tflm.data.store import TokenStore
from tflm.data.pipeline import check_fits
from tflm.runs.fingerprints import check_recorded_tokenizer
from tflm.data.prepare import check_store_matches
from tflm.data.pipeline import eval_batches_per_pass
from tflm.atomic import is_local
import os
from tflm.data.prepare import prepare_store
from tflm.runs import run_dir as runs
from tflm.training.strategy import wait_for_every_worker


class TokenMetrics:
    """Summed loss, correct predictions, tokens and UTF-8 bytes of the targets; from them loss
    (nats/token), accuracy, perplexity and bits per byte.

    Bits per byte compares tokenizers: the loss summed over the targets, in bits, divided by the
    UTF-8 bytes those targets decode to. Plain variables updated from values already reduced
    over replicas (Keras metrics' cross-replica reduction is what fails under
    MultiWorkerMirroredStrategy).
    """

    def __init__(self):
        self.sums = tf.Variable(tf.zeros([4], tf.float64), trainable=False)  # loss, correct, tokens, bytes

    def update(self, sums):
        """Add one global batch's [loss sum, correct, tokens, bytes] (one tensor: one all-reduce)."""
        self.sums.assign_add(tf.cast(sums, tf.float64))

    def result(self):
        """Mean loss (nats/token), accuracy, perplexity and bits per byte."""
        loss_sum, correct, tokens, target_bytes = (float(x) for x in self.sums.numpy())
        loss = loss_sum / max(tokens, 1.0)
        return {"loss": loss, "accuracy": correct / max(tokens, 1.0), "perplexity": math.exp(min(loss, 50.0)),
                "bits_per_byte": loss_sum / math.log(2) / max(target_bytes, 1.0)}

    def reset(self):
        """Start a new period."""
        self.sums.assign(tf.zeros([4], tf.float64))


def token_loss_and_accuracy(targets, logits):
    """Summed next-token cross-entropy and number of correct argmax predictions."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets), tf.float32)
    return tf.reduce_sum(losses), tf.reduce_sum(correct)


def metric_sums(loss_sum, correct, targets, byte_lengths):
    """[loss sum, correct, tokens, UTF-8 bytes the targets decode to] of one batch."""
    target_bytes = tf.reduce_sum(tf.cast(tf.gather(byte_lengths, targets), tf.float32))
    return tf.stack([loss_sum, correct, tf.cast(tf.size(targets), tf.float32), target_bytes])


def lm_parts(config, run_dir, task, strategy, resuming, source):
    """A language model on the token store."""
    from tflm.models.build import build_model
    from tflm.training.trainer import Trainer

    seq_len, global_batch = config.data.seq_len, config.train.global_batch_size
    store, tokenizer = open_data(config, run_dir, task, strategy, resuming, source)

    def datasets(step):
        batches = eval_batches_per_pass(store, seq_len, global_batch, config.train.eval_batches,
                                        config.train.eval_every)
        return (train_dataset_fn(store, seq_len, global_batch, config.train.seed, step),
                eval_dataset_fn(store, seq_len, global_batch, batches), batches)

    return TaskParts(
        lambda: build_model(config.model, tokenizer.vocabulary_size, seq_len, config.train.seed),
        lambda strategy, model, optimizer: Trainer(strategy, model, optimizer, config.train, seq_len,
                                                   config.runtime.jit_compile, tokenizer.byte_lengths()),
        datasets, global_batch * seq_len)


def open_data(config, run_dir, task, strategy, resuming, source=None):
    """(token store, tokenizer) of the run. The chief opens the store, or prepares it (no
    deadline: a large corpus takes long), and creates a new run directory once the data are
    known good; the other workers wait for it at a barrier without deadline, then open it."""
    path = config.data.store or os.path.join(run_dir, "store")
    if task.is_chief:
        store = chief_store(config, run_dir, path, resuming, source)
        check_fits(store, config.data.seq_len, config.train.global_batch_size)
        if not resuming:
            create_run_dir(config, run_dir, store, path, {RECORD_FILE: source.record()} if source else None)
    if task.num_workers > 1:
        wait_for_every_worker(strategy)
    store = TokenStore.open(path)
    check_fits(store, config.data.seq_len, config.train.global_batch_size)
    return store, load_tokenizer(os.path.join(path, "tokenizer"))


def chief_store(config, run_dir, path, resuming, source=None):
    """The store at `path`, checked against the config (and the run's tokenizer when resuming, or
    the source run's when starting from one), or a new one: prepared in place, or, for a new
    run's own store, in the run directory's reservation (tflm.run_dir.reserve)."""
    run_tokenizer = runs.load_tokenizer(run_dir) if resuming else source.tokenizer() if source else None
    if resuming:
        check_recorded_tokenizer(run_dir, config, run_tokenizer)  # names the swapped files, unlike the store's check
    if not TokenStore.exists(path):
        # A new local run's own store is prepared in its reservation, which becomes the run directory
        # when it is created, so the directory appears whole; elsewhere (no atomic rename) in place.
        beside = path == os.path.join(run_dir, "store") and not runs.is_run_dir(run_dir) and is_local(run_dir)
        try:
            return prepare_store(config.data, os.path.join(runs.reservation_path(run_dir), "store") if beside
                                 else path, run_tokenizer, wait=True)
        except StoreExists:
            pass  # another process prepared this shared store while this one waited: check it as any other
    store = TokenStore.open(path)
    check_store_matches(store, config.data, run_tokenizer)
    if resuming:
        # Resuming stays O(1) in the store's size: every shard's size and the validation split's
        # checksums now, the training shards' checksums while training resumes, before the first
        # history record or checkpoint is written (a damaged shard stops the run there, exit 2).
        store.verify(checksums=False)
        store.verify(("validation",))
        runs.check_before_writing(run_dir, store.verify_in_background(("train",)))
    else:
        store.verify()  # once, before a run starts on a store
    return store


def create_run_dir(config, run_dir, store, path, extra_files=None):
    """A new run's directory with its config and tokenizer (and `extra_files`), and its store
    moved in if it has one of its own (prepared beside it)."""
    tokenizer = load_tokenizer(os.path.join(store.path, "tokenizer"))
    own_store = store.path if store.path != path else None
    if runs.is_run_dir(run_dir):  # a directory that never trained: it takes the new config
        runs.replace_config(run_dir, config, tokenizer, extra_files)
    else:
        runs.create(run_dir, config, tokenizer, own_store, extra_files)
