"""Training with the model cut into pipeline stages (tflm/training/pipeline.py says where and in
what order): the compiled steps of tflm.training.trainer for R local pipelines of S stages.

TensorFlow has no pipeline library for Keras 3 (DTensor is experimental and unsupported by its
TensorFlow backend; keras.distribution serves JAX and PyTorch), so this is built on placement and
collectives, after GPipe and PipeDream-flush. In one tf.function per step, each replica's batch
is split into train.microbatches parts; stage k's forward of a part runs on its device (an XLA
program with runtime.jit_compile) under a tape of its own, and its backward is that tape's
gradient, placed on the same device, fed the gradient of its output by stage k + 1
(`output_gradients`): one tape around everything would run the whole backward where it was called.
Each stage's work follows its schedule through control dependencies, and work on different
devices overlaps where the data allow. Gradients are summed over micro-batches on their weight's
device, over local replicas on replica 0's device of that weight, and over workers with one
collective all-reduce per device (CollectiveReduceV2, what MultiWorkerMirroredStrategy runs
underneath, in groups of the workers' same devices); then clipped by the global norm, as on one
device, and every replica applies the same update to its own copy, each variable on its device.

With runtime.tensor_parallel, a stage runs on several devices (tflm/training/stage.py says how).
The run's checkpoints hold a one-device model and optimizer in host memory (tensor_parallel's host
mirror): before each save replica 0's weights and optimizer state are gathered into it, and
before the first step every replica (and worker) takes its values, restored or initial, so
checkpoints do not depend on the layout.
"""

import itertools
import math
import time

from tflm.lazy import tf
from tflm.training.pipeline import FORWARD, stage_orders, stage_pieces
from tflm.training.stage import Stage, Traffic
from tflm.training.tensor_parallel import HOST, gather, scatter
from tflm.training.trainer import Trainer

GROUP_KEY_BASE = 1 << 20  # collective groups of this module (MultiWorkerMirroredStrategy numbers its own from 1)
INSTANCE_KEY_BASE = 1 << 24


class PipelineTrainer(Trainer):
    """A Trainer (same interface, same checkpoints) for local replicas (tensor_parallel.Replica)
    laid out by a pipeline.Layout and cut at `cut` (pipeline.balanced_cut's bounds); `host` is the
    one-device (model, optimizer) the checkpoints hold (tensor_parallel's host mirror)."""

    def __init__(self, host, replicas, layout, cut, task, train_config, runtime, worker, on_trace=None):
        model, optimizer = host
        super().__init__(tf.distribute.get_strategy(), model, optimizer, task, train_config, runtime.jit_compile)
        self.replicas, self.layout, self.worker, self.train_config = replicas, layout, worker, train_config
        self.schedule = runtime.pipeline_schedule
        self.orders = stage_orders(self.schedule, layout.stages, self.microbatches)
        self.stages = [[Stage(pieces, lanes, replica.splits, runtime.jit_compile) for pieces, lanes in
                        zip(stage_pieces(replica.model, cut), replica_lanes)]
                       for replica, replica_lanes in zip(replicas, layout.lanes)]
        self.traffic = Traffic()  # what one step's split sums move between lanes (counted when traced)
        self.trace_steps_left, self.on_trace = runtime.pipeline_trace_steps, on_trace
        self.clocks = []  # a counter per stage device: see `stamp`
        for device in layout.devices[0]:
            with tf.device(device):
                self.clocks.append(tf.Variable(0, dtype=tf.int64, trainable=False, name="trace_clock"))
        self._stamp = tf.function(stamp)
        self._instance_keys = itertools.count(INSTANCE_KEY_BASE)
        self._eval_loop = tf.function(self._pipeline_eval_loop_fn)
        self._loops = {}  # phase -> (compiled loop, compiled traced step)
        self._synced = False

    # --- what the controller calls -----------------------------------------------------------

    def iterator(self, dataset_fn):
        """This worker's share of each global batch: a replica's batch after another, R per step."""
        layout = self.layout
        context = tf.distribute.InputContext(num_input_pipelines=layout.workers, input_pipeline_id=self.worker.rank,
                                             num_replicas_in_sync=layout.replicas)
        return iter(dataset_fn(context))

    def train_steps(self, iterator, steps):
        """Run `steps` training steps (the first runtime.pipeline_trace_steps of them traced)."""
        self.sync_replicas()
        for phase, count in self.task.phases(self.step, steps):
            loop, traced_step = self._phase(phase)
            while count and self.trace_steps_left:
                step, started = self.step, time.time()
                times = traced_step(iterator).numpy()
                self.trace_steps_left -= 1
                count -= 1
                if self.on_trace:
                    self.on_trace(self._trace_record(step, started, times))
            if count:
                loop(iterator, tf.constant(count, tf.int64))

    def evaluate(self, iterator, batches):
        """Run `batches` global validation batches; their metrics."""
        self.sync_replicas()
        return super().evaluate(iterator, batches)

    def skip(self):
        """A non-finite step: counted, every step counter advanced, no weight changed."""
        super().skip()
        for replica in self.replicas:
            replica.optimizer.iterations.assign_add(1)

    def sync_replicas(self):
        """Once, before the first step: every replica and worker takes the chief's one-device
        weights and optimizer state, restored or freshly initialised."""
        if self._synced:
            return
        self._synced = True
        if self.layout.workers > 1:
            tf.function(self._broadcast_from_chief)()
        for replica in self.replicas:
            scatter(self.optimizer, replica)

    def before_save(self):
        """The one-device model and optimizer take replica 0's values (what a checkpoint saves)."""
        if self._synced:
            gather(self.replicas[0], self.optimizer)

    # --- one step ----------------------------------------------------------------------------

    def _phase(self, phase):
        """The compiled loop and traced single step of a phase of the task."""
        if phase not in self._loops:
            trained = self.task.trained_variables(self.model, phase)
            variables = [[stage.trained(replica.trained_ids(trained)) for stage in stages]
                         for stages, replica in zip(self.stages, self.replicas)]

            def loop(iterator, steps):
                for _ in tf.range(steps):
                    self._step(iterator, variables)

            self._loops[phase] = (tf.function(loop),
                                  tf.function(lambda iterator: self._step(iterator, variables, trace=True)))
        return self._loops[phase]

    def _step(self, iterator, variables, trace=False):
        """One training step of every local replica; the traced times of replica 0's work [n, 2]."""
        self.traffic = Traffic()
        results = [self._pipeline(r, next(iterator), variables[r], trace and r == 0)
                   for r in range(len(self.replicas))]
        replica_variables = [v for stage in variables[0] for v in stage]
        grads = self._summed([[g for stage in result[0] for g in stage] for result in results],
                             [device_of(v) for v in replica_variables])
        sums = self._summed([[result[1]] for result in results], [self.layout.devices[0][-1]])[0]
        grads, finite = self.clipped(grads)
        tf.cond(finite, lambda: self._apply(grads, variables), self.skip)
        self.train_metrics.update(tf.where(finite, sums, tf.zeros_like(sums)))
        return tf.stack([results[0][2][work] for work in self._work()]) if trace else None

    def _apply(self, grads, variables):
        for replica, stages in zip(self.replicas, variables):
            replica.optimizer.apply_gradients(zip(grads, [v for stage in stages for v in stage]))
        self.optimizer.iterations.assign_add(1)  # the host's counter is the run's step

    def _pipeline(self, r, batch, variables, trace):
        """Replica r's schedule over the micro-batches of `batch`: ([summed gradients of each
        stage's `variables`], metric sums, {(stage, kind, micro-batch): [start, end]} if traced)."""
        run = PipelineRun(self, self.stages[r], batch, variables, trace, self.traffic if r == 0 else None)
        pending = [list(order) for order in self.orders]
        while any(pending):
            ready = [k for k, work in enumerate(pending) if work and run.can_do(k, *work[0])]
            if not ready:
                raise RuntimeError(f"the pipeline schedule {self.orders} deadlocks")  # a bug in a schedule
            for k in ready:
                run.do(k, *pending[k].pop(0))
        return run.grads, run.sums, run.times

    def _summed(self, per_replica, devices):
        """The sums over local replicas and over workers of per_replica[r] (lists of tensors),
        the i-th on devices[i] (replica 0's device of its weight) with one collective per device."""
        totals = []
        for tensors, device in zip(zip(*per_replica), devices):
            with tf.device(device):
                totals.append(tensors[0] if len(tensors) == 1 else tf.add_n(tensors))
        by_device = {}
        for i, device in enumerate(devices):
            by_device.setdefault(canonical(device), []).append(i)
        for device, indices in sorted(by_device.items()):
            with tf.device(device):
                for i, total in zip(indices, self._across_workers([totals[i] for i in indices], device)):
                    totals[i] = total
        return totals

    def _across_workers(self, tensors, device):
        """`tensors` (of one dtype) summed over the workers' same `device`: one collective of them packed."""
        if self.layout.workers == 1 or not tensors:
            return tensors
        summed = tf.raw_ops.CollectiveReduceV2(
            input=tf.concat([tf.reshape(t, [-1]) for t in tensors], 0), group_size=self.layout.workers,
            group_key=group_key(device), instance_key=next(self._instance_keys), ordering_token=[], merge_op="Add",
            final_op="Id", communication_hint="auto", timeout_seconds=0)
        parts = tf.split(summed, tf.stack([tf.size(t) for t in tensors]))  # an embedding's gradient has no static shape
        return [tf.reshape(part, tf.shape(t)) for part, t in zip(parts, tensors)]

    # --- evaluation, tracing, replicas ---------------------------------------------------------

    def _pipeline_eval_loop_fn(self, iterator, batches):
        for _ in tf.range(batches):
            sums = []
            for stages in self.stages:
                inputs, targets = next(iterator)
                x = inputs
                for stage in stages:
                    x = stage.run(x, inputs, None, False)
                with tf.device(stages[-1].device):
                    sums.append([self.task.loss_and_sums(targets, x)[1]])
            self.eval_metrics.update(self._summed(sums, [self.layout.devices[0][-1]])[0])

    def _trace_record(self, step, started, times):
        """A step's trace (pipeline_trace.jsonl): each piece of work's stage, kind, micro-batch,
        start and end in seconds from the step's first start."""
        origin = float(times[:, 0].min())
        events = sorted((round(float(times[i, 0]) - origin, 6), round(float(times[i, 1]) - origin, 6), k, kind, m)
                        for i, (k, kind, m) in enumerate(self._work()))
        return {"step": step + 1, "time": started, "stages": self.layout.stages, "microbatches": self.microbatches,
                "schedule": self.schedule,
                "devices": list(self.layout.devices[0]), "device_bytes": self.device_bytes(),
                "lanes": [list(lanes) for lanes in self.layout.lanes[0]], "lane_bytes": self.lane_bytes(),
                "block_bytes": self.block_bytes(), "lane_sums": self.traffic.sums, "lane_bytes_moved": self.traffic.row_bytes * self._microbatch_rows(),
                "events": [{"stage": k, "kind": kind, "microbatch": m, "start_s": start, "end_s": end}
                           for start, end, k, kind, m in events]}

    def device_bytes(self):
        """Bytes of weights and optimizer state of replica 0 on each of its stages' devices (all lanes)."""
        return [sum(lanes) for lanes in self.lane_bytes()]

    def lane_bytes(self):
        """Bytes of weights and optimizer state of replica 0 on each lane of each stage."""
        held = {}
        for variable in self.replicas[0].state():
            device = canonical(device_of(variable))
            held[device] = held.get(device, 0) + bytes_of([variable])
        return [[held.get(canonical(lane), 0) for lane in lanes] for lanes in self.layout.lanes[0]]

    def block_bytes(self):
        """{name of a split block: bytes of its weights and optimizer state on each lane} of replica 0
        (its trunk on the first lane, shard t on lane t)."""
        replica, held = self.replicas[0], {}
        for name, (trunk, shards) in replica.splits.items():
            held[name] = [bytes_of(replica.layer_state(shard)) for shard in shards]
            held[name][0] += bytes_of(replica.layer_state(trunk))
        return held

    def stamp(self, k):
        """The time now, as stage k's work sees it (a traced step's start or end of a piece of work).

        tf.function runs stateful ops that use no resource (tf.timestamp) in program order, across
        devices, which would make the traced stages take turns; a call that uses the stage's
        own counter is ordered only with that stage's other uses of it."""
        return self._stamp(self.clocks[k])

    def _microbatch_rows(self):
        """Examples in one micro-batch of one replica."""
        return self.train_config.global_batch_size // self.layout.replicas // self.microbatches

    def _work(self):
        """Every (stage, kind, micro-batch) of a step, stage by stage in schedule order."""
        return [(k, kind, m) for k, order in enumerate(self.orders) for kind, m in order]

    def _broadcast_from_chief(self):
        """Every worker's one-device model and optimizer take the chief's values: one collective."""
        variables = list(self.model.variables) + list(self.optimizer.variables)
        chief = self.worker.rank == 0
        with tf.device(HOST):
            values = [tf.cast(v, tf.float64) * (1.0 if chief else 0.0) for v in variables]
            for variable, value in zip(variables, self._across_workers(values, HOST)):
                variable.assign(tf.cast(value, variable.dtype))


class PipelineRun:
    """The tensors of one replica's step while its schedule is laid out: each stage's work in
    order, chained by control dependencies, on its stage's devices."""

    def __init__(self, trainer, stages, batch, variables, trace, traffic=None):
        self.trainer, self.stages, self.variables, self.trace = trainer, stages, variables, trace
        self.traffic = traffic
        count = len(stages)
        self.parts = [tf.split(t, trainer.microbatches) for t in batch]  # inputs, targets, example ids
        # Whether a stage's input needs a gradient: some stage before it trains.
        self.input_needs_grad = [any(variables[:k]) for k in range(count)]
        self.outputs, self.input_grads, self.records = {}, {}, {}
        self.last = [[] for _ in range(count)]
        self.grads = [[] for _ in range(count)]
        self.sums, self.times = None, {}  # times: (stage, kind, micro-batch) -> [start, end]

    def can_do(self, k, kind, m):
        """Whether what (k, kind, m) reads has been computed."""
        if kind == FORWARD:
            return k == 0 or (k - 1, m) in self.outputs
        return k == len(self.stages) - 1 or (k + 1, m) in self.input_grads

    def do(self, k, kind, m):
        """Lay out stage k's forward or backward of micro-batch m, after its previous work."""
        with tf.device(self.stages[k].device), tf.control_dependencies(self.last[k] + self._received(k, kind, m)):
            start = [self.trainer.stamp(k)] if self.trace else []
            with tf.control_dependencies(start):
                done = self._forward(k, m) if kind == FORWARD else self._backward(k, m)
            if self.trace:
                with tf.control_dependencies(done):
                    self.times[(k, kind, m)] = tf.stack([start[0], self.trainer.stamp(k)])
        self.last[k] = done

    def _received(self, k, kind, m):
        """What (k, kind, m) receives from the next stage or the one before (its start waits for it)."""
        if kind == FORWARD:
            return [self.outputs[(k - 1, m)]] if k > 0 else []
        upstream = self.input_grads.get((k + 1, m))
        return [upstream] if upstream is not None else []

    def _forward(self, k, m):
        inputs, targets, example_ids = (part[m] for part in self.parts)
        x = inputs if k == 0 else self.outputs.pop((k - 1, m))
        last = k == len(self.stages) - 1
        finish = (lambda y: self.trainer.task.loss_and_sums(targets, y)) if last else None
        y, records = self.stages[k].forward(x, inputs, example_ids, self.input_needs_grad[k], finish, self.traffic)
        if last:
            y, sums = y
            self.sums = sums if self.sums is None else self.sums + sums
        self.records[(k, m)] = (records, y)
        self.outputs[(k, m)] = y
        return [y]

    def _backward(self, k, m):
        records, y = self.records.pop((k, m))
        self.outputs.pop((k, m), None)
        upstream = None if k == len(self.stages) - 1 else self.input_grads.pop((k + 1, m))
        if not self.input_needs_grad[k] and not self.variables[k]:
            self.input_grads[(k, m)] = None
            return [y]
        input_grad, grads = self.stages[k].backward(records, upstream, self.variables[k], self.traffic)
        self.input_grads[(k, m)] = input_grad if self.input_needs_grad[k] else None
        self.grads[k] = grads if not self.grads[k] else [a + b for a, b in zip(self.grads[k], grads)]
        return grads or [input_grad]


def bytes_of(variables):
    """The bytes `variables` hold."""
    return sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in variables)


def device_of(variable):
    """The device a (Keras or TensorFlow) variable lives on."""
    return getattr(variable, "value", variable).device


def canonical(device):
    """A device's name without job and task, the same on every worker ("/device:GPU:1")."""
    spec = tf.DeviceSpec.from_string(device)
    return f"/device:{spec.device_type}:{spec.device_index}"


def group_key(device):
    """The collective group of the workers' same device."""
    spec = tf.DeviceSpec.from_string(device)
    return GROUP_KEY_BASE + (4096 if spec.device_type == "GPU" else 0) + (spec.device_index or 0)


def stamp(clock):
    """tf.timestamp(), ordered by the resource `clock` (see PipelineTrainer.stamp)."""
    clock.assign_add(1)
    return tf.timestamp()
