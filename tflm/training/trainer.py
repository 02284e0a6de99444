"""The training loop: one `tf.function` step around `strategy.run`, for every strategy.

Not `model.fit`: Keras 3.15's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585),
and this loop serves the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy alike.

Each replica computes the loss on its share of the global batch, scaled by the *global* token
count, so summing gradients over replicas gives the gradient of the global-batch mean. The
per-replica forward/backward is XLA-compiled; the step that calls `strategy.run` is not (XLA
cannot compile across MirroredStrategy's devices).
"""

import functools

import numpy as np
import tensorflow as tf
from tflm.tasks.lm import TokenMetrics
from tflm.tasks.lm import metric_sums
from tflm.tasks.lm import token_loss_and_accuracy


class Trainer:
    """Owns the compiled train and eval steps for one model, optimizer and strategy.

    On one device (the default strategy) a whole step is one program, XLA-compiled with
    runtime.jit_compile: forward, backward, clipping, and the AdamW update or its skip. Under
    MirroredStrategy and MultiWorkerMirroredStrategy each replica runs its forward/backward as an
    XLA program on its share of the global batch, then the gradients are all-reduced and the
    update applied to every replica (XLA cannot compile across a strategy's devices). Either way,
    `train_steps(iterator, n)` runs n steps in one call (a loop inside one tf.function, as Keras'
    steps_per_execution and Orbit do it), so Python runs only between loops.

    A step whose (all-reduced) gradient norm is NaN or inf is skipped: no update, and
    `nonfinite_steps` counts it (the loop stops past train.max_nonfinite_steps). The optimizer's
    `iterations` still advances, so it counts the batches consumed, which is the step number
    everything else (data position, checkpoints, history) uses.
    """

    unit = "tokens"  # what a step's share of the global batch is counted in (history: tokens_seen, tokens_per_sec)

    def __init__(self, strategy, model, optimizer, train_config, seq_len, jit_compile, byte_lengths=None):
        """`byte_lengths`: UTF-8 bytes each token id decodes to (the tokenizer's), for bits per
        byte; without it every token counts as one byte."""
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        vocabulary = model.vocabulary_size if byte_lengths is None else len(byte_lengths)
        self.byte_lengths = tf.constant(np.ones(vocabulary, np.int32) if byte_lengths is None else byte_lengths,
                                        tf.int32)
        self.clip_norm = train_config.clip_norm
        self.global_tokens = float(train_config.global_batch_size * seq_len)
        self.train_metrics, self.eval_metrics = TokenMetrics(), TokenMetrics()
        with strategy.scope():
            self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
            self.first_nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                                    name="first_nonfinite_step")
        self.one_device = strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
        self._device_step = tf.function(self._device_step_fn, jit_compile=jit_compile)
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=jit_compile)
        self._forward = tf.function(self._forward_fn, jit_compile=jit_compile)
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_loop = tf.function(self._eval_loop_fn)

    @property
    def step(self):
        """Batches trained on so far (applied or skipped): the optimizer's iteration count."""
        return int(self.optimizer.iterations.numpy())

    def state(self):
        """Variables a checkpoint must hold beside the model and optimizer."""
        return {"nonfinite_steps": self.nonfinite_steps, "first_nonfinite_step": self.first_nonfinite_step}

    def train_steps(self, iterator, steps):
        """Run `steps` training steps in one call."""
        self._train_loop(iterator, tf.constant(steps, tf.int64))

    def trained_variables(self, frozen=False):
        """The variables a step updates (`frozen`: a subclass's part of them; here all)."""
        return self.model.trainable_variables

    def loss_and_sums(self, targets, logits):
        """(this replica's share of the global-batch mean loss, its metric sums) for one batch."""
        loss_sum, correct = token_loss_and_accuracy(targets, logits)
        return loss_sum / self.global_tokens, metric_sums(loss_sum, correct, targets, self.byte_lengths)

    def history_fields(self, train, val):
        """The metrics of an evaluation's history record, in order."""
        return {"loss": train["loss"], "accuracy": train["accuracy"], "val_loss": val["loss"],
                "val_accuracy": val["accuracy"], "val_perplexity": val["perplexity"],
                "bits_per_byte": train["bits_per_byte"], "val_bits_per_byte": val["bits_per_byte"]}

    def log_text(self, record):
        """An evaluation's metrics as the progress line shows them."""
        return (f"loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  val_loss {record['val_loss']:.4f}  "
                f"val_acc {record['val_accuracy']:.3f}  val_ppl {record['val_perplexity']:.2f}  "
                f"val_bpb {record['val_bits_per_byte']:.3f}")

    def train_step(self, iterator):
        """Run one training step."""
        self.train_steps(iterator, 1)

    def evaluate(self, iterator, batches):
        """Run `batches` global validation batches in one call; their metrics."""
        self.eval_metrics.reset()
        self._eval_loop(iterator, tf.constant(batches, tf.int64))
        return self.eval_metrics.result()

    def _train_loop_fn(self, iterator, steps, frozen=False):
        for _ in tf.range(steps):
            if self.one_device:
                self._device_step(*next(iterator), frozen=frozen)
            else:
                self._replica_step(iterator, frozen)

    def _eval_loop_fn(self, iterator, batches):
        for _ in tf.range(batches):
            inputs, targets = next(iterator)
            sums = self.strategy.run(self._replica_eval_step, args=(inputs, targets))
            self.eval_metrics.update(self.strategy.reduce("SUM", sums, axis=None))

    def _forward_backward_fn(self, inputs, targets, example_ids, frozen=False):
        with tf.GradientTape() as tape:
            logits = self.model(inputs, training=True, example_ids=example_ids)
            scaled_loss, sums = self.loss_and_sums(targets, logits)
        return tape.gradient(scaled_loss, self.trained_variables(frozen)), sums

    def _clipped(self, grads):
        """(gradients clipped to train.clip_norm, whether their global norm is finite)."""
        norm = tf.linalg.global_norm(grads)
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        return grads, tf.math.is_finite(norm)

    def _device_step_fn(self, inputs, targets, example_ids, frozen=False):
        """A whole step on one device: one program."""
        grads, sums = self._forward_backward_fn(inputs, targets, example_ids, frozen)
        grads, finite = self._clipped(grads)
        tf.cond(finite, lambda: self._apply(grads, frozen), self._skip)
        self.train_metrics.update(tf.where(finite, sums, tf.zeros_like(sums)))

    def _replica_gradients(self, inputs, targets, example_ids, frozen=False):
        """All-reduced, clipped gradients; metric sums; whether the norm is finite (the same on
        every replica, since the gradients are the same)."""
        grads, sums = self._forward_backward(inputs, targets, example_ids, frozen)
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return (*self._clipped(grads), sums)

    def _replica_step(self, iterator, frozen=False):
        inputs, targets, example_ids = next(iterator)
        grads, finite, sums = self.strategy.run(functools.partial(self._replica_gradients, frozen=frozen),
                                                args=(inputs, targets, example_ids))
        finite = self.strategy.experimental_local_results(finite)[0]
        # The cond stays in cross-replica context: a branch may not hold the optimizer's merge_call.
        tf.cond(finite, lambda: self.strategy.run(functools.partial(self._apply, frozen=frozen), args=(grads,)),
                self._skip)
        sums = self.strategy.reduce("SUM", sums, axis=None)
        self.train_metrics.update(tf.where(finite, sums, tf.zeros_like(sums)))

    def _apply(self, grads, frozen=False):
        self.optimizer.apply_gradients(zip(grads, self.trained_variables(frozen)))

    def _skip(self):
        """A non-finite step: count it, advance the step counter, leave every weight alone."""
        self.first_nonfinite_step.assign(tf.where(self.first_nonfinite_step < 0,
                                                  self.optimizer.iterations + 1, self.first_nonfinite_step))
        self.nonfinite_steps.assign_add(1)
        self.optimizer.iterations.assign_add(1)

    def _forward_fn(self, inputs, targets):
        return self.loss_and_sums(targets, self.model(inputs, training=False))[1]

    def _replica_eval_step(self, inputs, targets):
        # A plain function around the compiled one: handing strategy.run the tf.function itself
        # makes MirroredStrategy reuse replica 0's trace, variables included, on every replica.
        return self._forward(inputs, targets)
