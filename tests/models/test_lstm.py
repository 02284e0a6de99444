"""The fused LSTM computes keras.layers.LSTM's outputs, states and gradients, and loads its weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models.fused_lstm import FusedLSTM


def outputs_and_grads(policy, jit_compile):
    """(fused layer's, keras.layers.LSTM's) outputs, states and gradients under the dtype `policy`."""
    x = tf.random.stateless_normal((3, 7, 5), seed=(1, 2))
    initial = [tf.random.stateless_normal((3, 4), seed=(3, i)) for i in range(2)]
    reference = keras.layers.LSTM(4, return_sequences=True, return_state=True, dtype=policy)
    reference(x)
    fused = FusedLSTM(4, dtype=policy)
    fused(x)
    fused.cell.set_weights(reference.cell.get_weights())  # the same variables, the same layout

    def loss_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.watch(initial)
            results = layer(x, initial_state=initial)
            outputs, h, c = (tf.cast(t, tf.float32) for t in results)
            loss = tf.reduce_sum(outputs * tf.range(1.0, 5.0)) + tf.reduce_sum(h * h) - tf.reduce_sum(c)
        variables = layer.cell.trainable_variables
        return [*results, *tape.gradient(loss, [x, *initial, *variables])]

    return tf.function(lambda: loss_and_grads(fused), jit_compile=jit_compile)(), loss_and_grads(reference)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_lstm_matches_keras_lstm_forward_and_backward(jit_compile):
    actual, expected = outputs_and_grads("float32", jit_compile)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_bfloat16", tf.bfloat16), ("mixed_float16", tf.float16)])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_lstm_under_mixed_precision_computes_in_its_dtype_as_keras_lstm_does(policy, compute_dtype, jit_compile):
    actual, expected = outputs_and_grads(policy, jit_compile)
    assert [a.dtype for a in actual] == [e.dtype for e in expected] == [compute_dtype] * 3 + [tf.float32] * 6
    tolerance = 0.05 if compute_dtype == tf.bfloat16 else 0.02  # 8 or 11 bits of mantissa, rounded in different places
    for a, e in zip(actual, expected):
        e = tf.cast(e, tf.float32).numpy()
        np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), e, rtol=0, atol=tolerance * np.abs(e).max())


def test_fused_lstm_keeps_keras_lstm_checkpoint_paths():
    fused = FusedLSTM(4, name="lstm_0")
    fused(tf.zeros((1, 2, 3)))
    assert sorted(v.path for v in fused.weights) == [
        "lstm_0/lstm_cell/bias", "lstm_0/lstm_cell/kernel", "lstm_0/lstm_cell/recurrent_kernel"]
