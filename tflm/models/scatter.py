"""An in-place scatter from core ops, for the Transformer's decoding cache (tflm.models.transformer)
and the decoding loop (tflm.serving.decoding)."""

import tensorflow as tf
# Private: no public TensorFlow API says whether the graph being built is compiled by XLA
# (tf.function(jit_compile=True) marks it only through this module, which tf.while_loop reads too).
from tensorflow.python.ops import control_flow_util


def scatter_update(tensor, indices, updates):
    """`tensor` with `updates` written at `indices`, as tf.tensor_scatter_nd_update (no index
    twice, unless every write there is of zeros onto zeros), from core ops, in place when nothing
    else holds `tensor`.

    In place matters: a decoding step writes one token into a cache that holds thousands. Without
    XLA, TensorScatterUpdate copies all of `tensor` (TF 2.21's kernel tries to reuse the buffer of
    `updates`, never that of its input), so the write is two ScatterNdNonAliasingAdd ops, which
    do reuse their input's buffer: minus the old values (leaving exact zeros), plus the new ones,
    once the new ones exist (by then the readers of `tensor` they were computed from are done, so
    its buffer is free to reuse). XLA has no kernel for that op, and
    updates its own scatter in place; whether the graph is built for XLA is TensorFlow's answer
    (control_flow_util, which tf.while_loop asks too)."""
    updates = tf.cast(updates, tensor.dtype)
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return tf.tensor_scatter_nd_update(tensor, indices, updates)
    with tf.control_dependencies([updates]):  # not before: earlier readers of `tensor` must be done
        old = tf.gather_nd(tensor, indices)
    cleared = tf.raw_ops.ScatterNdNonAliasingAdd(input=tensor, indices=indices, updates=-old)
    return tf.raw_ops.ScatterNdNonAliasingAdd(input=cleared, indices=indices, updates=updates)
