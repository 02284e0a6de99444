"""Metrics a user reads: loss, accuracy and bits per byte, checked against hand computations."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import small_config
from tflm.tasks import lm
from tflm.training.trainer import Trainer
from tflm.training.optimizer import make_optimizer

VOCABULARY = 8
BYTES = np.array([0, 1, 1, 2, 3, 4, 1, 2], np.int32)  # UTF-8 bytes each id decodes to (0: padding)


class Uniform(keras.Model):
    """Logits that make every id equally likely, except id 5, a little more likely."""

    vocabulary_size = VOCABULARY

    def call(self, token_ids, training=False, example_ids=None):
        favoured = tf.one_hot(tf.fill(tf.shape(token_ids), 5), VOCABULARY) * 0.5
        return tf.zeros(tf.concat([tf.shape(token_ids), [VOCABULARY]], 0)) + favoured


def test_bits_per_byte_is_the_summed_loss_in_bits_over_the_bytes_of_the_targets():
    config = small_config(train={"global_batch_size": 2}, data={"seq_len": 4})
    task = lm.Task(config)
    task.byte_lengths = BYTES
    trainer = Trainer(tf.distribute.get_strategy(), Uniform(), make_optimizer(config.train), task, config.train,
                      jit_compile=False)
    inputs = np.array([[1, 2, 3, 4], [5, 6, 7, 1]], np.int32)
    targets = np.array([[2, 3, 4, 5], [6, 7, 1, 5]], np.int32)
    batches = tf.data.Dataset.from_tensors((inputs, targets)).repeat()
    result = trainer.evaluate(iter(batches), 1)

    # By hand: p(5) = e^0.5 / (7 + e^0.5), p(other) = 1 / (7 + e^0.5).
    total = 7 + math.exp(0.5)
    losses = [-math.log((math.exp(0.5) if t == 5 else 1.0) / total) for t in targets.flat]
    target_bytes = sum(int(BYTES[t]) for t in targets.flat)  # 1+2+3+4 + 1+2+1+4 = 18
    assert target_bytes == 18
    assert result["loss"] == pytest.approx(sum(losses) / 8, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(sum(losses) / math.log(2) / 18, rel=1e-6)
    assert result["accuracy"] == pytest.approx(2 / 8)  # argmax is 5: right at the two targets that are 5
