"""The optimizer of every run: AdamW with a linear warmup to train.learning_rate, then cosine
decay to learning_rate * min_learning_rate_ratio at train.steps, no weight decay on norms and
biases (`make_optimizer`). Its Keras subclass takes gradients the training step has already
summed over replicas and clipped, so clipping means the same on one device and on many.
"""

import keras
import tensorflow as tf


class PreReducedAdamW(keras.optimizers.AdamW):
    """AdamW that takes gradients already summed over replicas.

    Keras clips gradients before it all-reduces them (BaseOptimizer.apply calls _clip_gradients,
    then _backend_update_step calls _all_reduce_sum_gradients), so under a strategy its
    `global_clipnorm` clips each replica's partial gradient and replicas disagree with a single
    device. The training step all-reduces and clips itself, so the optimizer must not sum again.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    # Keras leaves an update's arithmetic without a device, so a pipeline stage's weights would be
    # updated on the default device (measured: AdamW's Mul/Sqrt ops unplaced, only the variable
    # writes on the stage's device). Each update, weight decay included, runs on its variable's device.

    def _apply_weight_decay(self, variables):
        """Nothing here: update_step decays each variable, on its device."""

    def update_step(self, gradient, variable, learning_rate):
        """AdamW's update of one variable (its weight decay first), on the variable's device."""
        with tf.device(variable.device):
            if self.weight_decay is not None and self._use_weight_decay(variable):
                learning_rate_now = tf.cast(self.learning_rate, variable.dtype)
                variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * learning_rate_now)
            return super().update_step(gradient, variable, learning_rate)


def make_optimizer(train_config):
    """AdamW, linear warmup to the peak learning rate then cosine decay; no decay on norms/biases."""
    t = train_config
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, t.steps - t.warmup_steps),
        alpha=t.min_learning_rate_ratio,
        warmup_target=t.learning_rate,
        warmup_steps=t.warmup_steps,
    )
    optimizer = PreReducedAdamW(learning_rate=schedule, weight_decay=t.weight_decay, beta_2=0.99)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def slots(optimizer, variable):
    """The optimizer state of one of its variables (AdamW's: first and second moments)."""
    index = optimizer._get_variable_index(variable)
    return [optimizer._momentums[index], optimizer._velocities[index]]
