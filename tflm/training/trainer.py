"""The compiled training and evaluation steps: one `tf.function` loop around `strategy.run`, for
every strategy and every task.

Not `model.fit`: Keras 3.15's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585),
and this loop serves the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy alike.

What is learned comes from the task (tflm.tasks): its loss (each replica's share of the
global-batch loss, so summing gradients over replicas gives the gradient of the global-batch
mean), its metric sums, and which variables each phase of training updates. The per-replica
forward/backward is XLA-compiled; the step that calls `strategy.run` is not (XLA cannot compile
across MirroredStrategy's devices).
"""

import tensorflow as tf

from tflm.tasks.base import SummedMetrics


class Trainer:
    """Owns the compiled train and eval steps for one model, optimizer, task and strategy.

    On one device (the default strategy) a whole step is one program, XLA-compiled with
    runtime.jit_compile: forward, backward, clipping, and the AdamW update or its skip. Under
    MirroredStrategy and MultiWorkerMirroredStrategy each replica runs its forward/backward as an
    XLA program on its share of the global batch, then the gradients are all-reduced and the
    update applied to every replica. A replica's batch can be run as train.microbatches parts,
    one after another in a loop, whose gradients are summed before the one update (gradient
    accumulation: less memory for activations, the same step). Either way,
    `train_steps(iterator, n)` runs n steps in one call (a loop inside one tf.function, as
    Keras' steps_per_execution and Orbit do it), so Python runs only between loops; each phase
    of the task (e.g. a classifier's frozen backbone) has its own compiled loop over the
    variables it trains.

    A step whose (all-reduced) gradient norm is NaN or inf is skipped: no update, and
    `nonfinite_steps` counts it (the loop stops past train.max_nonfinite_steps). The optimizer's
    `iterations` still advances, so it counts the batches consumed, which is the step number
    everything else (data position, checkpoints, history) uses. Under mixed_float16 the loss is
    scaled (tflm.training.optimizer.LossScaling) and a non-finite gradient of a finite loss is an
    overflow: the scale halves and the step is skipped without counting as non-finite.
    """

    def __init__(self, strategy, model, optimizer, task, train_config, jit_compile, loss_scaling=None):
        self.strategy, self.model, self.optimizer, self.task = strategy, model, optimizer, task
        self.loss_scaling = loss_scaling  # a LossScaling under mixed_float16
        self.clip_norm, self.jit_compile = train_config.clip_norm, jit_compile
        self.microbatches = train_config.microbatches
        self.train_metrics = SummedMetrics(task.metric_size, task.summarize)
        self.eval_metrics = SummedMetrics(task.metric_size, task.summarize)
        with strategy.scope():
            self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
            self.first_nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                                    name="first_nonfinite_step")
        self.one_device = strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
        self._forward = tf.function(self._forward_fn, jit_compile=jit_compile)
        self._eval_loop = tf.function(self._eval_loop_fn)
        self._phases = {}  # phase name -> its PhaseSteps

    @property
    def step(self):
        """Batches trained on so far (applied or skipped): the optimizer's iteration count."""
        return int(self.optimizer.iterations.numpy())

    def state(self):
        """Variables a checkpoint must hold beside the model and optimizer."""
        state = {"nonfinite_steps": self.nonfinite_steps, "first_nonfinite_step": self.first_nonfinite_step}
        return {**state, **(self.loss_scaling.state() if self.loss_scaling else {})}

    def before_save(self):
        """Make the model and optimizer hold what a checkpoint must save (they always do here)."""

    def iterator(self, dataset_fn):
        """An iterator over the batches of `dataset_fn(input_context)`, one per replica each step."""
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def train_steps(self, iterator, steps):
        """Run `steps` training steps, one compiled call per phase of the task they fall in."""
        for phase, count in self.task.phases(self.step, steps):
            if phase not in self._phases:
                self._phases[phase] = PhaseSteps(self, self.task.trained_variables(self.model, phase))
            self._phases[phase].loop(iterator, tf.constant(count, tf.int64))

    def train_step(self, iterator):
        """Run one training step."""
        self.train_steps(iterator, 1)

    def evaluate(self, iterator, batches):
        """Run `batches` global validation batches in one call; their metrics."""
        self.eval_metrics.reset()
        self._eval_loop(iterator, tf.constant(batches, tf.int64))
        return self.eval_metrics.result()

    def clipped(self, grads):
        """(gradients clipped to train.clip_norm, whether their global norm is finite)."""
        # Dense first: the norm of an embedding's IndexedSlices counts a token seen twice as two
        # rows, not their sum, so it was not the gradient's norm (and depended on the micro-batches).
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        if self.loss_scaling:
            grads = self.loss_scaling.unscale(grads)
        norm = tf.linalg.global_norm(grads)
        grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        return grads, tf.math.is_finite(norm)

    def settle(self, finite, sums, apply):
        """Apply a step whose gradient is finite; skip one whose gradient is not. Under loss scaling
        a non-finite gradient of a finite loss is an overflow: the scale halves, the step is skipped
        without counting as non-finite."""
        if self.loss_scaling is None:
            tf.cond(finite, apply, self.skip)
            return

        def applied():
            apply()
            self.loss_scaling.after_applied()

        tf.cond(finite, applied, lambda: tf.cond(tf.math.is_finite(sums[0]), self.overflow, self.skip))

    def overflow(self):
        """An overflow of the loss scale: halve it, advance the step counter, leave every weight alone."""
        self.loss_scaling.after_overflow()
        self.optimizer.iterations.assign_add(1)

    def skip(self):
        """A non-finite step: count it, advance the step counter, leave every weight alone."""
        self.first_nonfinite_step.assign(tf.where(self.first_nonfinite_step < 0,
                                                  self.optimizer.iterations + 1, self.first_nonfinite_step))
        self.nonfinite_steps.assign_add(1)
        self.optimizer.iterations.assign_add(1)

    def _eval_loop_fn(self, iterator, batches):
        for _ in tf.range(batches):
            inputs, targets = next(iterator)
            sums = self.strategy.run(self._replica_eval_step, args=(inputs, targets))
            self.eval_metrics.update(self.strategy.reduce("SUM", sums, axis=None))

    def _forward_fn(self, inputs, targets):
        return self.task.loss_and_sums(targets, self.model(inputs, training=False))[1]

    def _replica_eval_step(self, inputs, targets):
        # A plain function around the compiled one: handing strategy.run the tf.function itself
        # makes MirroredStrategy reuse replica 0's trace, variables included, on every replica.
        return self._forward(inputs, targets)


class PhaseSteps:
    """The compiled training loop of one phase: steps that update `variables` (all the model's
    trainable ones, or a task's part of them)."""

    def __init__(self, trainer, variables):
        self.trainer, self.variables = trainer, variables
        self.loop = tf.function(self._loop_fn)
        self._device_step = tf.function(self._device_step_fn, jit_compile=trainer.jit_compile)
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=trainer.jit_compile)

    def _loop_fn(self, iterator, steps):
        for _ in tf.range(steps):
            if self.trainer.one_device:
                self._device_step(*next(iterator))
            else:
                self._replica_step(iterator)

    def _forward_backward_fn(self, inputs, targets, example_ids):
        """(gradients, metric sums) of the replica's batch: of its train.microbatches parts one
        after another (a loop, so that one part's activations are held at a time), summed."""
        microbatches = self.trainer.microbatches
        if microbatches == 1:
            return self._microbatch_gradients(inputs, targets, example_ids)
        parts = [tf.stack(tf.split(t, microbatches)) for t in (inputs, targets, example_ids)]
        first, sums = self._microbatch_gradients(*(t[0] for t in parts))
        used = [i for i, g in enumerate(first) if g is not None]  # the rest has no gradient, as with one part
        totals = [tf.convert_to_tensor(first[i]) for i in used]
        for m in tf.range(1, microbatches):
            grads, part_sums = self._microbatch_gradients(*(t[m] for t in parts))
            totals = [total + tf.convert_to_tensor(grads[i]) for total, i in zip(totals, used)]
            sums += part_sums
        summed = dict(zip(used, totals))
        return [summed.get(i) for i in range(len(first))], sums

    def _microbatch_gradients(self, inputs, targets, example_ids):
        trainer = self.trainer
        with tf.GradientTape() as tape:
            logits = trainer.model(inputs, training=True, example_ids=example_ids)
            scaled_loss, sums = trainer.task.loss_and_sums(targets, logits)
            if trainer.loss_scaling:
                scaled_loss = trainer.loss_scaling.scale_loss(scaled_loss)
        return tape.gradient(scaled_loss, self.variables), sums

    def _device_step_fn(self, inputs, targets, example_ids):
        """A whole step on one device: one program."""
        trainer = self.trainer
        grads, sums = self._forward_backward_fn(inputs, targets, example_ids)
        grads, finite = trainer.clipped(grads)
        trainer.settle(finite, sums, lambda: self._apply(grads))
        trainer.train_metrics.update(tf.where(finite, sums, tf.zeros_like(sums)))

    def _replica_gradients(self, inputs, targets, example_ids):
        """All-reduced, clipped gradients; metric sums; whether the norm is finite (the same on
        every replica, since the gradients are the same)."""
        grads, sums = self._forward_backward(inputs, targets, example_ids)
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return (*self.trainer.clipped(grads), sums)

    def _replica_step(self, iterator):
        strategy, trainer = self.trainer.strategy, self.trainer
        inputs, targets, example_ids = next(iterator)
        grads, finite, sums = strategy.run(self._replica_gradients, args=(inputs, targets, example_ids))
        finite = strategy.experimental_local_results(finite)[0]
        sums = strategy.reduce("SUM", sums, axis=None)
        # The cond stays in cross-replica context: a branch may not hold the optimizer's merge_call.
        trainer.settle(finite, sums, lambda: strategy.run(self._apply, args=(grads,)))
        trainer.train_metrics.update(tf.where(finite, sums, tf.zeros_like(sums)))

    def _apply(self, grads):
        self.trainer.optimizer.apply_gradients(zip(grads, self.variables))
