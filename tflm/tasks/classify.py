"""The classification task: a label per text, learned on a language model's features.

    Classifier (tflm.models.classifier): token ids [batch, seq_len] -> the language model's
    features -> pooling over the real tokens -> Dense -> logits [batch, classes]

Data: labelled examples (tflm.data.labelled) held in memory, texts cut to data.seq_len tokens and
padded (tflm.data.examples); every worker reads the (small) files itself, and the chief learns or
takes the tokenizer and creates the run directory with its labels.json. Loss: class-weighted
cross-entropy (task.class_weights) summed over the replica's examples and divided by the global
batch; validation padding (label -1) counts for nothing. Metrics: loss (nats/example), accuracy,
macro-F1 and the validation confusion matrix, from [loss, correct, count, confusion] sums.
During the first task.freeze_backbone_steps steps only the classifier head is trained. Its runs
classify (tflm.serving.classifying); they cannot score, generate or start other runs.
"""

import numpy as np

from tflm.config import shown
from tflm.data import examples
from tflm.data.labelled import LABELS_FILE, load_labels, read_labelled, save_labels
from tflm.data.tokenizers import learned_tokenizer
from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.presets import check_recorded_preset
from tflm.runs import run_dir as runs
from tflm.tasks.base import Task as BaseTask
from tflm.tasks.base import new_run_records, starting_tokenizer
from tflm.training.strategy import wait_for_every_worker


class Task(BaseTask):
    """A text classifier on labelled examples."""

    type = "classify"
    unit = unit_shown = "examples"
    serves = ("classify",)
    signatures = {"classify": "classify", "serving_default": "classify"}
    what_it_is = "a text classifier (task.type: classify), not a language model; use tflm.classify"

    def __init__(self, config):
        super().__init__(config)
        self.train_ids = self.train_labels = self.val_ids = self.val_labels = self.weights = None

    @classmethod
    def check_config(cls, config):
        """Labelled data, and two distinct, non-empty text and label fields."""
        task = config.task
        if not (task.text_field and task.label_field):
            raise TflmError("task.text_field and task.label_field must not be empty")
        if task.text_field == task.label_field:
            raise TflmError(f"task.text_field and task.label_field are both {shown(task.text_field)}")
        if config.data.source == "default":
            raise TflmError("task.type=classify needs labelled data: data.source=files (CSV, TSV or JSONL "
                            "data.paths) or data.source=tfds")

    def open_data(self, run_dir, worker, strategy, resuming, source):
        """The labelled examples as padded token ids, their label ids and the class weights."""
        config = self.config
        data, self.tokenizer = open_labelled(config, run_dir, worker, strategy, resuming, source)
        self.labels = data.labels
        self.train_ids, self.val_ids = (
            examples.padded_ids(self.tokenizer, [e.text for e in getattr(data, split)], config.data.seq_len)
            for split in ("train", "validation"))
        self.train_labels, self.val_labels = data.ids("train"), data.ids("validation")
        self.weights = class_weights(self.train_labels, len(self.labels), config.task.class_weights)

    @property
    def units_per_step(self):
        """Examples in one global batch."""
        return self.config.train.global_batch_size

    def datasets(self, step):
        """Shuffled training examples from `step` on, and every validation example once per evaluation."""
        global_batch, seed = self.config.train.global_batch_size, self.config.train.seed
        return (examples.train_dataset_fn(self.train_ids, self.train_labels, global_batch, seed, step),
                examples.eval_dataset_fn(self.val_ids, self.val_labels, global_batch),
                examples.eval_batches(len(self.val_labels), global_batch))

    def new_model(self, vocabulary_size, seed=0):
        """The configured language model with a classifier head over the labels."""
        from tflm.models.classifier import new_classifier  # defines Keras classes: loads TensorFlow

        return new_classifier(self.config, vocabulary_size, len(self.labels), seed)

    def language_model(self, model):
        """The classifier's backbone."""
        return model.backbone

    def phases(self, step, steps):
        """The steps before task.freeze_backbone_steps train the head alone, the rest everything."""
        frozen = min(steps, max(0, self.config.task.freeze_backbone_steps - step))
        return [(phase, count) for phase, count in (("head", frozen), ("all", steps - frozen)) if count]

    def trained_variables(self, model, phase):
        """The head's variables while the backbone is frozen, else every trainable one."""
        return model.classifier_head.trainable_variables if phase == "head" else model.trainable_variables

    @property
    def metric_size(self):
        """Loss, correct, count and the confusion matrix."""
        return 3 + len(self.labels) ** 2

    def loss_and_sums(self, targets, logits):
        """(class-weighted cross-entropy summed / global batch, [loss, correct, count, confusion])
        of one batch; rows labelled -1 (validation padding) count for nothing."""
        real = tf.cast(targets >= 0, tf.float32)
        labels = tf.maximum(targets, 0)
        logits = tf.cast(logits, tf.float32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits) * real
        weights = tf.constant(self.weights, tf.float32)
        scaled_loss = tf.reduce_sum(losses * tf.gather(weights, labels)) / float(self.units_per_step)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * real)
        num_classes = len(self.labels)
        confusion = tf.matmul(tf.one_hot(labels, num_classes) * real[:, None], tf.one_hot(predicted, num_classes),
                              transpose_a=True)
        sums = tf.concat([tf.stack([tf.reduce_sum(losses), correct, tf.reduce_sum(real)]),
                          tf.reshape(confusion, [-1])], axis=0)
        return scaled_loss, sums

    def summarize(self, sums):
        """Mean loss (nats/example), accuracy, macro-F1 and the confusion matrix (lists of counts)."""
        loss_sum, correct, count = (float(x) for x in sums[:3])
        confusion = np.asarray(sums[3:]).reshape(len(self.labels), len(self.labels))
        return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0),
                "macro_f1": macro_f1(confusion), "confusion": confusion.astype(np.int64).tolist()}

    def history_fields(self, train, val):
        """Loss, accuracy and macro-F1 of both splits, and the validation confusion matrix."""
        return {"loss": train["loss"], "accuracy": train["accuracy"], "macro_f1": train["macro_f1"],
                "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                "val_confusion": val["confusion"]}

    def log_text(self, record):
        """Loss, accuracy and macro-F1 as the progress line shows them."""
        return (f"loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  f1 {record['macro_f1']:.3f}  "
                f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}  "
                f"val_f1 {record['val_macro_f1']:.3f}")

    def load_for_inference(self, run_dir):
        """The run's label names (labels.json)."""
        self.labels = load_labels(run_dir)


def class_weights(label_ids, num_classes, kind):
    """float32 [num_classes]: all 1, or "balanced" (N / (classes * count), as scikit-learn's)."""
    if kind == "none":
        return np.ones(num_classes, np.float32)
    counts = np.bincount(label_ids, minlength=num_classes).astype(np.float64)
    return (len(label_ids) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def macro_f1(confusion):
    """The mean F1 over the classes that occur (as truth or prediction) in `confusion` [true, predicted]."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    denominators = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2 tp + fp + fn
    present = denominators > 0
    return float(np.mean(2 * true_positives[present] / denominators[present])) if present.any() else 0.0


def open_labelled(config, run_dir, worker, strategy, resuming, source):
    """(labelled data, tokenizer) of a classification run. Every worker reads the (small) files
    itself; the chief learns or takes the tokenizer and creates the run directory with its
    labels.json once the data are known good, and the others load both from there."""
    data = read_labelled(config.data, config.task)
    if resuming:
        check_recorded_preset(run_dir, config.model.preset)
        saved = load_labels(run_dir)
        if saved != data.labels:
            raise TflmError(f"the run was trained with the labels {', '.join(saved)} ({run_dir}/{LABELS_FILE}), "
                            f"the data now has {', '.join(data.labels)}; use a new --run-dir")
    if worker.is_chief and not resuming:
        tokenizer = starting_tokenizer(config, source) or learned_tokenizer(config.data, [e.text for e in data.train])
        extra = {LABELS_FILE: save_labels(data.labels), **new_run_records(config, source)}
        if runs.is_run_dir(run_dir):
            runs.replace_config(run_dir, config, tokenizer, extra)
        else:
            runs.create(run_dir, config, tokenizer, extra_files=extra)
    if worker.num_workers > 1:
        wait_for_every_worker(strategy)
    return data, runs.load_tokenizer(run_dir)
