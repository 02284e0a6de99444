"""Labelled examples as a classifier reads them: each text's first data.seq_len token ids, padded
with PAD_ID (`padded_ids`), and the tf.distribute input functions over those arrays. Training
batches are a pure function of (train.seed, global example number), as the language model's
windows are (tflm.data.pipeline): each epoch is a fresh permutation, every replica reads its own
share, and a resumed run continues the same order from its step. Validation reads every example
once per pass, the last batch padded with label -1 (which the metrics leave out).
"""

import math

import numpy as np

from tflm.data.pipeline import LAST_STEP, permuted, replica_examples
from tflm.data.tokenizers import PAD_ID
from tflm.lazy import tf


def padded_ids(tokenizer, texts, seq_len):
    """int32 [len(texts), seq_len]: each text's first seq_len token ids, then PAD_ID."""
    ids = np.full((len(texts), seq_len), PAD_ID, np.int32)
    for row, encoded in enumerate(tokenizer.encode(list(texts))):
        encoded = encoded[:seq_len]
        ids[row, :len(encoded)] = encoded
    return ids


def _options():
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _replica_batches(input_context, global_batch, first, last):
    """This pipeline's per-replica batches of global example numbers, for batches first..last - 1."""
    per_replica = input_context.get_per_replica_batch_size(global_batch)
    local = global_batch // per_replica // input_context.num_input_pipelines
    worker = input_context.input_pipeline_id
    return tf.data.Dataset.range(first * local, last * local).map(
        lambda q: replica_examples(q, global_batch, per_replica, local, worker))


def train_dataset_fn(ids, labels, global_batch, seed, start_step=0):
    """A `distribute_datasets_from_function` input fn: (token ids, labels, example ids) batches of
    the shuffled training examples from `start_step` on."""
    size = len(labels)

    def dataset_fn(input_context):
        ids_t, labels_t = tf.constant(ids), tf.constant(labels, tf.int32)

        def read(n):
            seeds = tf.stack([tf.fill(tf.shape(n), tf.constant(seed, tf.int64)), n // size, tf.zeros_like(n)], axis=1)
            j = permuted(n % size, seeds, size)
            return tf.gather(ids_t, j), tf.gather(labels_t, j), n

        batches = _replica_batches(input_context, global_batch, start_step, LAST_STEP)
        return batches.map(read).with_options(_options()).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def eval_batches(num_examples, global_batch):
    """Global batches that hold every validation example once."""
    return math.ceil(num_examples / global_batch)


def eval_dataset_fn(ids, labels, global_batch):
    """Input fn for validation: every example once per pass, in order, the last batch padded with -1 labels."""
    batches = eval_batches(len(labels), global_batch)
    padding = batches * global_batch - len(labels)
    ids = np.concatenate([ids, np.full((padding, ids.shape[1]), PAD_ID, np.int32)])
    labels = np.concatenate([np.asarray(labels, np.int32), np.full(padding, -1, np.int32)])

    def dataset_fn(input_context):
        ids_t, labels_t = tf.constant(ids), tf.constant(labels)
        examples = _replica_batches(input_context, global_batch, 0, batches).repeat()
        return examples.map(lambda n: (tf.gather(ids_t, n), tf.gather(labels_t, n))).with_options(
            _options()).prefetch(tf.data.AUTOTUNE)

    return dataset_fn
