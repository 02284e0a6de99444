"""Randomness that belongs to examples: counter-based uniforms and the dropout built on them.

Dropout is a pure function of (train.seed, the dropout site, the example's global index in the
training stream, the element), not of a random-number state: `example_ids` name each row of a
batch, so N replicas or workers that split a global batch draw exactly the masks one device would,
and two different examples never share a mask. (keras.layers.Dropout draws from one SeedGenerator
variable, mirrored across replicas, so every replica drew the *same* mask for different examples,
and N replicas regularised less than one device.) The uniforms are integer hashing (MurmurHash3's
finaliser), which TensorFlow and XLA compute alike; the sampler of tflm/serving/decoding.py draws
from them too, so a seed gives the same text in Python and from an exported SavedModel.
"""

import keras
import tensorflow as tf


GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters across 32 bits


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, tf.uint32)))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))


def example_uniforms(seed, site, example_ids, row_shape, first=0):
    """Uniform floats in [0, 1) of shape [batch, *row_shape], a pure function of (seed, dropout
    site, example id, position in the row): counter-based, like JAX's or Philox's generators.
    `first`: the row's index along its first axis in a larger row it is a slice of (a tensor-parallel
    shard's first head), whose uniforms these are."""
    ids = tf.cast(example_ids, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(ids, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(ids, 32), tf.uint32)
    base = _fmix32(tf.constant((seed * GOLDEN + site) % 2**32, tf.uint32))
    keys = _fmix32(_fmix32(tf.bitwise.bitwise_xor(base, low)) + high)  # [batch]
    size = 1
    for dim in row_shape:
        size *= dim
    start = first * (size // row_shape[0]) if first else 0
    counters = tf.reshape(tf.cast(tf.range(start, start + size), tf.uint32) * tf.constant(GOLDEN, tf.uint32),
                          row_shape)
    keys = tf.reshape(keys, [-1] + [1] * len(row_shape))
    bits = _fmix32(_fmix32(keys + counters))
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) * (1.0 / (1 << 24))


@keras.saving.register_keras_serializable(package="tflm")
class ExampleDropout(keras.layers.Layer):
    """Dropout whose mask is a pure function of (seed, site, example id, element).

    Args:
        rate: fraction of elements dropped while training.
        seed: the run's seed (train.seed).
        site: a number unique to this dropout in the model.
        shared_axes: axes (of the input, batch excluded) along which one mask is shared; e.g.
            (1,) on [batch, time, features] drops the same features at every time step.

    Call it as `dropout(x, example_ids, training=True)`, `example_ids` int [batch]; `first=i` when x
    is the slice from index i (of axis 1) of what the mask is drawn for (a tensor-parallel shard).
    """

    def __init__(self, rate, seed=0, site=0, shared_axes=(), **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed, self.site, self.shared_axes = float(rate), int(seed), int(site), tuple(shared_axes)

    def call(self, inputs, example_ids=None, training=False, first=0):
        if not training or self.rate == 0:
            return inputs
        if example_ids is None:
            raise ValueError(f"{self.name}: training with dropout needs example_ids (see tflm.training.trainer)")
        row_shape = [1 if axis in self.shared_axes else inputs.shape[axis] for axis in range(1, inputs.shape.rank)]
        if None in row_shape:
            raise ValueError(f"{self.name}: dropout needs static shapes (except batch), got {inputs.shape}")
        keep = example_uniforms(self.seed, self.site, example_ids, row_shape, first) >= self.rate
        return tf.where(keep, inputs / tf.cast(1.0 - self.rate, inputs.dtype), tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "site": self.site,
                "shared_axes": self.shared_axes}
