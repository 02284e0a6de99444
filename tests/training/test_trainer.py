"""The Trainer runs any task's steps: a classifier's frozen-backbone phase updates its head alone,
a call that spans two phases equals them run one after the other, and every metric a task
reports reaches the history. Stand-in data, no run directory: each test in seconds."""

import json

import keras
import numpy as np
import tensorflow as tf

from conftest import small_config
from tflm.runs import run_dir as runs
from tflm.tasks import classify, lm, task_for
from tflm.training.optimizer import LossScaling, make_optimizer
from tflm.training.trainer import Trainer

LABELS = ("negative", "positive")
VOCABULARY = 12


def classifier_trainer(freeze_backbone_steps):
    """A Trainer of a tiny LSTM classifier whose first `freeze_backbone_steps` steps train the head."""
    config = small_config("lstm", data={"seq_len": 6, "source": "files", "paths": ["labelled.csv"]},
                          train={"global_batch_size": 4, "warmup_steps": 0, "learning_rate": 0.05},
                          task={"type": "classify", "freeze_backbone_steps": freeze_backbone_steps})
    task = classify.Task(config)
    task.labels, task.weights = LABELS, np.ones(len(LABELS), np.float32)
    tf.keras.utils.set_random_seed(0)
    model = task.build_model(VOCABULARY)
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    return Trainer(tf.distribute.get_strategy(), model, optimizer, task, config.train, jit_compile=False)


def batches():
    """An endless stream of (token ids, labels, example ids) batches of 4 examples."""
    ids = tf.random.stateless_uniform((64, 6), seed=(3, 4), minval=1, maxval=VOCABULARY, dtype=tf.int32)
    labels = tf.cast(ids[:, 0] % 2, tf.int32)
    examples = tf.data.Dataset.from_tensor_slices((ids, labels)).enumerate().batch(4).repeat()
    return iter(examples.map(lambda n, example: (example[0], example[1], n)))


def weights(layers):
    """Copies of the values of `layers`' weights."""
    return [w.numpy().copy() for layer in layers for w in layer.weights]


def changed(before, after):
    """Whether any of the weights differ."""
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_the_frozen_backbone_phase_updates_the_head_alone_and_then_everything_trains():
    trainer = classifier_trainer(freeze_backbone_steps=2)
    model, stream = trainer.model, batches()
    backbone, head = weights([model.backbone]), weights([model.classifier_head])
    trainer.train_steps(stream, 2)
    assert trainer.step == 2
    assert not changed(backbone, weights([model.backbone]))
    assert changed(head, weights([model.classifier_head]))
    trainer.train_steps(stream, 1)
    assert changed(backbone, weights([model.backbone]))


def test_a_call_across_the_end_of_the_frozen_phase_equals_the_phases_one_by_one():
    at_once, one_by_one = classifier_trainer(freeze_backbone_steps=2), classifier_trainer(freeze_backbone_steps=2)
    at_once.train_steps(batches(), 3)
    stream = batches()
    for _ in range(3):
        one_by_one.train_steps(stream, 1)
    for a, b in zip(at_once.model.weights, one_by_one.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert at_once.train_metrics.result()["loss"] == one_by_one.train_metrics.result()["loss"]


def test_the_phases_of_a_classifier_split_a_call_at_freeze_backbone_steps():
    task = classify.Task(small_config(task={"type": "classify", "freeze_backbone_steps": 5},
                                      data={"source": "files", "paths": ["x.csv"]}))
    assert task.phases(0, 3) == [("head", 3)]
    assert task.phases(3, 4) == [("head", 2), ("all", 2)]
    assert task.phases(5, 4) == [("all", 4)]
    assert lm.Task(small_config()).phases(0, 7) == [("all", 7)]


def test_every_metric_a_task_reports_reaches_the_history(tmp_path):
    class WithSquaredPerplexity(lm.Task):
        """A language model whose history also records a new metric."""

        def history_fields(self, train, val):
            return {**super().history_fields(train, val), "val_perplexity_squared": val["perplexity"] ** 2}

    task = WithSquaredPerplexity(small_config())
    fields = task.history_fields(task.summarize(np.array([8.0, 2.0, 4.0, 4.0])),
                                 task.summarize(np.array([4.0, 1.0, 4.0, 8.0])))
    runs.append_history(str(tmp_path), {"step": 1, **fields})
    record = json.loads(open(tmp_path / "history.jsonl").read())
    assert record["val_perplexity_squared"] == np.exp(1.0) ** 2
    assert list(record) == ["step", *fields]


def test_a_config_s_task_type_names_the_task_class_it_trains_with():
    assert type(task_for(small_config())) is lm.Task
    config = small_config(task={"type": "classify"}, data={"source": "files", "paths": ["x.csv"]})
    assert type(task_for(config)) is classify.Task


def test_float16_overflows_halve_the_loss_scale_without_counting_as_divergence():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        config = small_config("lstm", data={"seq_len": 6}, train={"global_batch_size": 4, "warmup_steps": 0})
        task = lm.Task(config)
        tf.keras.utils.set_random_seed(0)
        model = task.build_model(VOCABULARY)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    optimizer = make_optimizer(config.train)
    scaling = LossScaling(optimizer, model.trainable_variables, initial_scale=2.0**40)  # fp16's max is 65504
    trainer = Trainer(tf.distribute.get_strategy(), model, optimizer, task, config.train, True, scaling)  # XLA
    stream = iter(tf.data.Dataset.from_tensor_slices(batches_of_ids()).repeat())
    before = weights([model])
    trainer.train_steps(stream, 2)
    assert trainer.step == 2 and not changed(before, weights([model]))  # both overflowed: skipped
    assert float(scaling.keras.dynamic_scale) == 2.0**38
    trainer.train_steps(stream, 30)
    assert trainer.step == 32 and changed(before, weights([model]))
    assert 1.0 <= float(scaling.keras.dynamic_scale) < 2.0**20  # fell to where the gradients fit fp16
    assert int(trainer.nonfinite_steps.numpy()) == 0
    assert set(trainer.state()) >= {"loss_scale", "loss_scale_steps"}


def batches_of_ids():
    """(inputs, targets, example ids) of 8 batches of 4 windows of 6 tokens, for a language model."""
    ids = tf.random.stateless_uniform((8, 4, 7), seed=(5, 6), minval=1, maxval=VOCABULARY, dtype=tf.int32)
    return ids[:, :, :-1], ids[:, :, 1:], tf.reshape(tf.range(32, dtype=tf.int64), (8, 4))
