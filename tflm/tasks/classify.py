"""TODO docstring."""

import numpy as np
import tensorflow as tf
from tflm.training.trainer import Trainer
from tflm.data.labelled import LABELS_FILE
from tflm.runs.init_from import RECORD_FILE
from tflm.tasks import TaskParts
from tflm.errors import TflmError
from tflm.data.tokenizers import learned_tokenizer
from tflm.data.labelled import load_labels
from tflm.data.labelled import read_labelled
from tflm.runs import run_dir as runs
from tflm.data.labelled import save_labels
from tflm.training.strategy import wait_for_every_worker


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


def classify_parts(config, run_dir, task, strategy, resuming, source):
    """A classifier on labelled examples held in memory (tflm.classifier)."""
    from tflm.models import classifier

    data, tokenizer = open_labelled(config, run_dir, task, strategy, resuming, source)
    global_batch, seq_len = config.train.global_batch_size, config.data.seq_len
    train_ids, val_ids = (classifier.padded_ids(tokenizer, [e.text for e in getattr(data, split)], seq_len)
                          for split in ("train", "validation"))
    train_labels, val_labels = data.ids("train"), data.ids("validation")
    weights = classifier.class_weights(train_labels, len(data.labels), config.task.class_weights)

    def datasets(step):
        return (classifier.train_dataset_fn(train_ids, train_labels, global_batch, config.train.seed, step),
                classifier.eval_dataset_fn(val_ids, val_labels, global_batch),
                classifier.eval_batches(len(val_labels), global_batch))

    return TaskParts(
        lambda: classifier.build_classifier(config, tokenizer.vocabulary_size, len(data.labels)),
        lambda strategy, model, optimizer: classifier.ClassifierTrainer(strategy, model, optimizer, config, weights),
        datasets, global_batch, unit="examples", language_model=lambda model: model.backbone)


def open_labelled(config, run_dir, task, strategy, resuming, source):
    """(labelled data, tokenizer) of a classification run. Every worker reads the (small) files
    itself; the chief learns or takes the tokenizer and creates the run directory with its
    labels.json once the data are known good, and the others load both from there."""
    data = read_labelled(config.data, config.task)
    if resuming:
        saved = load_labels(run_dir)
        if saved != data.labels:
            raise TflmError(f"the run was trained with the labels {', '.join(saved)} ({run_dir}/{LABELS_FILE}), "
                            f"the data now has {', '.join(data.labels)}; use a new --run-dir")
    if task.is_chief and not resuming:
        tokenizer = source.tokenizer() if source else learned_tokenizer(config.data, [e.text for e in data.train])
        extra = {LABELS_FILE: save_labels(data.labels), **({RECORD_FILE: source.record()} if source else {})}
        if runs.is_run_dir(run_dir):
            runs.replace_config(run_dir, config, tokenizer, extra)
        else:
            runs.create(run_dir, config, tokenizer, extra_files=extra)
    if task.num_workers > 1:
        wait_for_every_worker(strategy)
    return data, runs.load_tokenizer(run_dir)
