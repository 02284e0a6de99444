"""Text classification on a language model's backbone: model, metrics, trainer and input pipelines.

    Classifier: token ids [batch, seq_len] -> backbone features [batch, seq_len, width]
                -> pooling (the last real token's, or the mean over real tokens; padding masked)
                -> Dense -> logits [batch, classes] (float32)

The backbone is the LstmLM or TransformerLM of tflm.models, whole (its next-token head too, not
trained here, so a checkpoint of the language model restores into it unchanged). Texts are cut
to data.seq_len tokens (the first ones) and padded with PAD_ID.

Training example n of the stream is example permuted(n mod N) of epoch n div N (the index shuffle
of tflm.data), and replica r reads its slice of every global batch as tflm.data's do, so one
device, N replicas and N workers train on exactly the same batches and a resume is O(1).
Validation is every validation example once per evaluation, the last global batch padded with
examples labelled -1, which count for nothing.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tflm.data import LAST_STEP, permuted, replica_examples
from tflm.models import build_model
from tflm.tokenizer import PAD_ID
from tflm.trainer import Trainer


@keras.saving.register_keras_serializable(package="tflm")
class Classifier(keras.Model):
    """A language model's features, pooled over the real tokens, then a dense head over the classes.

    Args:
        backbone: an LstmLM or TransformerLM (anything with `features(token_ids, training, example_ids)`).
        num_classes: the number of labels.
        pooling: "last" (the last real token's features) or "mean" (their mean over real tokens).
    """

    def __init__(self, backbone, num_classes, pooling="last", **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("last", "mean"):
            raise ValueError(f"`pooling` must be 'last' or 'mean', received {pooling!r}")
        self.backbone, self.num_classes, self.pooling = backbone, num_classes, pooling
        backbone.head.trainable = False  # the next-token head: kept for checkpoints, never trained here
        self.classifier_head = keras.layers.Dense(num_classes, dtype="float32", name="classifier_head")

    def call(self, token_ids, training=False, example_ids=None):
        """Logits [batch, num_classes] of padded token ids [batch, time]."""
        features = self.backbone.features(token_ids, training, example_ids)
        return self.classifier_head(pool(features, token_ids != PAD_ID, self.pooling))


def pool(features, real, pooling):
    """[batch, width] from features [batch, time, width] over the positions `real` marks."""
    if pooling == "last":
        last = tf.maximum(tf.reduce_sum(tf.cast(real, tf.int32), axis=1) - 1, 0)
        return tf.gather(features, last, batch_dims=1)
    weights = tf.cast(real, features.dtype)[:, :, None]
    return tf.reduce_sum(features * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1)


def build_classifier(config, vocabulary_size, num_classes):
    """The configured backbone with a head for `num_classes` labels, built on a dummy batch."""
    backbone = build_model(config.model, vocabulary_size, config.data.seq_len, config.train.seed)
    model = Classifier(backbone, num_classes, config.task.pooling)
    model(keras.ops.zeros((1, config.data.seq_len), dtype="int32"))
    return model


def padded_ids(tokenizer, texts, seq_len):
    """int32 [len(texts), seq_len]: each text's first seq_len token ids, then PAD_ID."""
    ids = np.full((len(texts), seq_len), PAD_ID, np.int32)
    for row, encoded in enumerate(tokenizer.encode(list(texts))):
        encoded = encoded[:seq_len]
        ids[row, :len(encoded)] = encoded
    return ids


def class_weights(label_ids, num_classes, kind):
    """float32 [num_classes]: all 1, or "balanced" (N / (classes * count), as scikit-learn's)."""
    if kind == "none":
        return np.ones(num_classes, np.float32)
    counts = np.bincount(label_ids, minlength=num_classes).astype(np.float64)
    return (len(label_ids) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


class ClassMetrics:
    """Summed loss, correct, examples and the confusion matrix [true, predicted]; from them loss,
    accuracy, macro-F1. A plain variable updated with values already reduced over replicas."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.sums = tf.Variable(tf.zeros([3 + num_classes ** 2], tf.float64), trainable=False)

    def update(self, sums):
        """Add one global batch's sums."""
        self.sums.assign_add(tf.cast(sums, tf.float64))

    def result(self):
        """Mean loss (nats/example), accuracy, macro-F1 and the confusion matrix (lists of counts)."""
        values = self.sums.numpy()
        loss_sum, correct, count = (float(x) for x in values[:3])
        confusion = values[3:].reshape(self.num_classes, self.num_classes)
        return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0),
                "macro_f1": macro_f1(confusion), "confusion": confusion.astype(np.int64).tolist()}

    def reset(self):
        """Start a new period."""
        self.sums.assign(tf.zeros_like(self.sums))


def macro_f1(confusion):
    """The mean F1 over the classes that occur (as truth or prediction) in `confusion` [true, predicted]."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    denominators = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2 tp + fp + fn
    present = denominators > 0
    return float(np.mean(2 * true_positives[present] / denominators[present])) if present.any() else 0.0


class ClassifierTrainer(Trainer):
    """The Trainer's steps for a Classifier: class-weighted cross-entropy over the global batch of
    examples; during the first task.freeze_backbone_steps steps only the head is updated."""

    unit = "examples"

    def __init__(self, strategy, model, optimizer, config, weights):
        super().__init__(strategy, model, optimizer, config.train, config.data.seq_len, config.runtime.jit_compile,
                         np.ones(1, np.int32))
        self.global_examples = float(config.train.global_batch_size)
        self.freeze_steps = config.task.freeze_backbone_steps
        self.weights = tf.constant(weights, tf.float32)
        self.train_metrics, self.eval_metrics = ClassMetrics(model.num_classes), ClassMetrics(model.num_classes)

    def train_steps(self, iterator, steps):
        """Run `steps` steps: those before task.freeze_backbone_steps train the head alone."""
        frozen = min(steps, max(0, self.freeze_steps - self.step))
        if frozen:
            self._train_loop(iterator, tf.constant(frozen, tf.int64), frozen=True)
        if steps - frozen:
            self._train_loop(iterator, tf.constant(steps - frozen, tf.int64))

    def trained_variables(self, frozen=False):
        """The head's variables while the backbone is frozen, else every trainable one."""
        return self.model.classifier_head.trainable_variables if frozen else self.model.trainable_variables

    def loss_and_sums(self, targets, logits):
        """(class-weighted cross-entropy summed / global batch, [loss, correct, count, confusion])
        of one batch; rows labelled -1 (validation padding) count for nothing."""
        real = tf.cast(targets >= 0, tf.float32)
        labels = tf.maximum(targets, 0)
        logits = tf.cast(logits, tf.float32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits) * real
        scaled_loss = tf.reduce_sum(losses * tf.gather(self.weights, labels)) / self.global_examples
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * real)
        num_classes = self.model.num_classes
        confusion = tf.matmul(tf.one_hot(labels, num_classes) * real[:, None], tf.one_hot(predicted, num_classes),
                              transpose_a=True)
        sums = tf.concat([tf.stack([tf.reduce_sum(losses), correct, tf.reduce_sum(real)]),
                          tf.reshape(confusion, [-1])], axis=0)
        return scaled_loss, sums

    def history_fields(self, train, val):
        """Loss, accuracy and macro-F1 of both splits, and the validation confusion matrix."""
        return {"loss": train["loss"], "accuracy": train["accuracy"], "macro_f1": train["macro_f1"],
                "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                "val_confusion": val["confusion"]}

    def log_text(self, record):
        """An evaluation's metrics as the progress line shows them."""
        return (f"loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  f1 {record['macro_f1']:.3f}  "
                f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}  "
                f"val_f1 {record['val_macro_f1']:.3f}")


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
