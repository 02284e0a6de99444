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


class LossScaling:
    """Dynamic loss scaling for float16 compute, with Keras' LossScaleOptimizer's scale and rules:
    the loss is multiplied by the scale before the backward pass; a step whose gradient overflows
    halves the scale and is skipped; after `dynamic_growth_steps` finite steps the scale doubles.

    The training step calls the inner AdamW itself rather than LossScaleOptimizer.apply, which
    unscales and checks the gradient per replica: here the all-reduced gradient is unscaled first,
    then clipped to train.clip_norm, and an overflow (a non-finite gradient of a finite loss) is
    told apart from a diverged step (tflm.training.trainer). Its two variables are saved beside
    the model and optimizer (`state`), so a run can change precision when it resumes.
    """

    def __init__(self, optimizer, variables, initial_scale=2.0**15):
        self.keras = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
        self.keras.build(variables)  # builds `optimizer` too

    def scale_loss(self, loss):
        """The loss times the current scale (the backward pass starts from this)."""
        return self.keras.scale_loss(loss)

    def unscale(self, grads):
        """Gradients of the scaled loss divided by the scale (exact: the scale is a power of two)."""
        scale = self.keras.dynamic_scale
        return [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]

    def after_applied(self):
        """A finite step: double the scale after dynamic_growth_steps of them in a row."""
        counter, scale = self.keras.step_counter, self.keras.dynamic_scale
        grow = tf.equal(counter, self.keras.dynamic_growth_steps - 1)
        counter.assign(tf.where(grow, tf.zeros_like(counter), counter + 1))
        scale.assign(tf.where(grow, scale * 2.0, scale))

    def after_overflow(self):
        """An overflowing step: halve the scale, start counting again."""
        self.keras.step_counter.assign(tf.zeros_like(self.keras.step_counter))
        self.keras.dynamic_scale.assign(self.keras.dynamic_scale * 0.5)

    def state(self):
        """The variables a checkpoint holds: the scale and the finite steps since it last changed."""
        return {"loss_scale": self.keras.dynamic_scale, "loss_scale_steps": self.keras.step_counter}
