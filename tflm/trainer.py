"""The training loop: one `tf.function` step around `strategy.run`, for every strategy.

Not `model.fit`: Keras 3.15's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585),
and this loop serves the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy alike.

Each replica computes the loss on its share of the global batch, scaled by the *global* token
count, so summing gradients over replicas gives the gradient of the global-batch mean. The
per-replica forward/backward is XLA-compiled; the step that calls `strategy.run` is not (XLA
cannot compile across MirroredStrategy's devices).
"""

import math

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


class TokenMetrics:
    """Summed loss, correct predictions and token count; loss/accuracy/perplexity/bits per char.

    Plain variables updated from values already reduced over replicas. (Keras metrics are not
    used here: their cross-replica reduction is what fails under MultiWorkerMirroredStrategy.)
    """

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.correct = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.tokens = tf.Variable(0.0, dtype=tf.float64, trainable=False)

    def update(self, sums):
        """Add one global batch's [loss sum, correct, tokens] (one tensor: one all-reduce)."""
        sums = tf.cast(sums, tf.float64)
        self.loss_sum.assign_add(sums[0])
        self.correct.assign_add(sums[1])
        self.tokens.assign_add(sums[2])

    def result(self):
        """Mean loss (nats/token), accuracy, perplexity and bits per character."""
        tokens = max(float(self.tokens.numpy()), 1.0)
        loss = float(self.loss_sum.numpy()) / tokens
        return {"loss": loss, "accuracy": float(self.correct.numpy()) / tokens,
                "perplexity": math.exp(min(loss, 50.0)), "bits_per_char": loss / math.log(2)}

    def reset(self):
        """Start a new period."""
        for variable in (self.loss_sum, self.correct, self.tokens):
            variable.assign(0.0)


def token_loss_and_accuracy(targets, logits):
    """Summed next-token cross-entropy and number of correct argmax predictions."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets), tf.float32)
    return tf.reduce_sum(losses), tf.reduce_sum(correct)


class Trainer:
    """Owns the compiled train and eval steps for one model, optimizer and strategy."""

    def __init__(self, strategy, model, optimizer, config):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.clip_norm = config.train.clip_norm
        global_batch, seq_len = config.train.global_batch_size, config.data.seq_len
        self.global_tokens = float(global_batch * seq_len)
        self.train_metrics, self.eval_metrics = TokenMetrics(), TokenMetrics()
        jit = config.runtime.jit_compile
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=jit)
        self._forward = tf.function(self._forward_fn, jit_compile=jit)
        self.train_step = tf.function(self._train_step_fn)
        self.eval_step = tf.function(self._eval_step_fn)

    def _forward_backward_fn(self, inputs, targets):
        with tf.GradientTape() as tape:
            logits = self.model(inputs, training=True)
            loss_sum, correct = token_loss_and_accuracy(targets, logits)
            scaled_loss = loss_sum / self.global_tokens
        grads = tape.gradient(scaled_loss, self.model.trainable_variables)
        return grads, loss_sum, correct

    def _replica_train_step(self, inputs, targets):
        grads, loss_sum, correct = self._forward_backward(inputs, targets)
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return tf.stack([loss_sum, correct, tf.cast(tf.size(targets), tf.float32)])

    def _train_step_fn(self, iterator):
        inputs, targets = next(iterator)
        sums = self.strategy.run(self._replica_train_step, args=(inputs, targets))
        self.train_metrics.update(self.strategy.reduce("SUM", sums, axis=None))

    def _forward_fn(self, inputs, targets):
        loss_sum, correct = token_loss_and_accuracy(targets, self.model(inputs, training=False))
        return tf.stack([loss_sum, correct, tf.cast(tf.size(targets), tf.float32)])

    def _replica_eval_step(self, inputs, targets):
        # A plain function around the compiled one: handing strategy.run the tf.function itself
        # makes MirroredStrategy reuse replica 0's trace, variables included, on every replica.
        return self._forward(inputs, targets)

    def _eval_step_fn(self, iterator):
        inputs, targets = next(iterator)
        sums = self.strategy.run(self._replica_eval_step, args=(inputs, targets))
        self.eval_metrics.update(self.strategy.reduce("SUM", sums, axis=None))

    def evaluate(self, iterator, batches):
        """Run `batches` global validation batches; their metrics."""
        self.eval_metrics.reset()
        for _ in range(batches):
            self.eval_step(iterator)
        return self.eval_metrics.result()
