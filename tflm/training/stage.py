"""One pipeline stage of one replica: its pieces of the model as steps on its devices, each step's
forward under a gradient tape of its own, and the backward, step by step, where each step ran.

Without tensor parallelism a stage is one step: its pieces as one XLA program on its device. With
runtime.tensor_parallel = T the stage has T devices (lanes), and each Transformer block is five
steps (tflm.models.transformer.block_segments): the norms, biases, dropouts and residuals run whole
on the first lane; the two sums over the block's heads and feed-forward columns are split, each
lane computing its shard's part from its copy of the input (Megatron's f: the input sent to every
lane, its gradient summed back) and the parts summed on the first lane (Megatron's g: the output
summed, its gradient sent to every lane). Megatron all-reduces so that every lane redoes the whole
steps; here the first lane does them once and the others wait, which moves the same bytes (a sum
onto one device, then a copy out) and runs the embedding and head once.

GradientTape.gradient runs a backward where it is called, so each step's tape is asked for its
gradients under that step's device: a lane's backward runs on its lane.
"""

import dataclasses
import functools
import math

from tflm.lazy import tf
from tflm.models.transformer import ATTENTION, FEEDFORWARD, block_segments
from tflm.training.pipeline import unique_variables


@dataclasses.dataclass
class Traffic:
    """What a step's split sums move between lanes, counted as the step is traced."""

    sums: int = 0  # sums of the lanes' parts (forward: outputs; backward: input gradients)
    row_bytes: int = 0  # bytes copied between lanes, both ways, per example of a micro-batch

    def add(self, tensor, lanes):
        """One sum of `lanes` parts shaped like `tensor` [batch, ...], and the copy of its result
        (or input) to each lane."""
        if lanes > 1:
            self.sums += 1
            self.row_bytes += 2 * (lanes - 1) * math.prod(tensor.shape[1:]) * tensor.dtype.size


class Whole:
    """Whole-width steps on one device, compiled together: `parts` map a tuple of tensors to the
    next, `part(state, token_ids, example_ids, training)`, using the weights of `layers`."""

    def __init__(self, parts, layers, device, jit_compile):
        self.device, self.variables = device, unique_variables(layers, trainable=True)
        self.compiled = {training: tf.function(functools.partial(self._run, parts, training=training),
                                                jit_compile=jit_compile) for training in (True, False)}

    @staticmethod
    def _run(parts, state, token_ids, example_ids, training):
        for part in parts:
            state = part(state, token_ids, example_ids, training)
        return state

    def run(self, state, token_ids, example_ids, training):
        """The steps' output state (no tape)."""
        with tf.device(self.device):
            return self.compiled[training](state, token_ids, example_ids)

    def forward(self, state, token_ids, example_ids, watch, finish, traffic):
        """(output state, record for `backward`); `finish(x)` -> (loss, sums), if given, ends the tape."""
        with tf.device(self.device), tf.GradientTape() as tape:
            inputs = state if watch else ()
            for tensor in inputs:
                tape.watch(tensor)
            out = self.compiled[True](state, token_ids, example_ids)
            if finish:
                loss, sums = finish(out[0])
                return (loss, sums), (tape, inputs, (loss,))
        return out, (tape, inputs, out)

    def backward(self, record, output_grads, trained, traffic):
        """(gradients of the step's inputs, {id(weight): gradient} of its `trained` weights)."""
        tape, inputs, outputs = record
        sources = [v for v in self.variables if id(v) in trained]
        with tf.device(self.device):
            grads = gradients(tape, list(outputs), list(inputs) + sources, output_grads)
        return tuple(grads[:len(inputs)]), {id(v): g for v, g in zip(sources, grads[len(inputs):])}


class Split:
    """A block's ATTENTION or FEEDFORWARD sum, its shards' parts computed on their lanes and summed
    on the first: replaces the state's last tensor by the sum."""

    def __init__(self, kind, shards, lanes, jit_compile):
        self.lanes, self.shards = lanes, shards
        self.variables = [shard.trainable_variables for shard in shards]
        self.compiled = [{training: tf.function(functools.partial(shard.partial, kind, training=training),
                                                jit_compile=jit_compile) for training in (True, False)}
                         for shard in shards]

    def run(self, state, token_ids, example_ids, training):
        """The state with its last tensor replaced by the sum of the lanes' parts (no tape)."""
        parts = []
        for lane, compiled in zip(self.lanes, self.compiled):
            with tf.device(lane):
                parts.append(compiled[training](tf.identity(state[-1]), example_ids))
        return self._joined(state, parts, None)

    def forward(self, state, token_ids, example_ids, watch, finish, traffic):
        """(output state, record for `backward`): a tape per lane."""
        records, parts = [], []
        for lane, compiled in zip(self.lanes, self.compiled):
            with tf.device(lane), tf.GradientTape() as tape:
                h = tf.identity(state[-1])  # the lane's copy of the input
                tape.watch(h)
                parts.append(compiled[True](h, example_ids))
            records.append((tape, h, parts[-1]))
        return self._joined(state, parts, traffic), records

    def backward(self, records, output_grads, trained, traffic):
        """(gradients of the step's inputs, {id(weight): gradient}): each lane's backward on its lane,
        the input gradients summed on the first."""
        grad_of_sum, input_grads, weight_grads = output_grads[-1], [], {}
        for lane, (tape, h, part), variables in zip(self.lanes, records, self.variables):
            sources = [v for v in variables if id(v) in trained]
            with tf.device(lane):
                grads = gradients(tape, part, [h] + sources, grad_of_sum)
            input_grads.append(grads[0])
            weight_grads.update((id(v), g) for v, g in zip(sources, grads[1:]))
        if traffic is not None:
            traffic.add(records[0][1], len(records))  # the gradient has the input's shape, not always known
        return self._joined(output_grads, input_grads, None), weight_grads

    def _joined(self, state, parts, traffic):
        if traffic is not None:
            traffic.add(parts[0], len(parts))
        with tf.device(self.lanes[0]):
            return (*state[:-1], parts[0] if len(parts) == 1 else tf.add_n(parts))


class Stage:
    """One stage of one replica: `pieces` of the model on `lanes` (its devices: one, or T with
    tensor parallelism, `splits` then naming each block's (trunk, shards))."""

    def __init__(self, pieces, lanes, splits, jit_compile):
        self.pieces, self.lanes, self.device = pieces, lanes, lanes[0]
        self.steps, parts, layers = [], [], []

        def flush():
            if parts:
                self.steps.append(Whole(list(parts), list(layers), self.device, jit_compile))
                parts.clear()
                layers.clear()

        for piece in pieces:
            if piece.name not in splits:
                parts.append(lambda state, token_ids, example_ids, training, run=piece.run:
                             (run(state[0], token_ids, example_ids, training),))
                layers.extend(piece.layers)
                continue
            trunk, shards = splits[piece.name]
            layers.append(trunk)
            for segment in block_segments(trunk.trunk()):
                if segment in (ATTENTION, FEEDFORWARD):
                    flush()
                    self.steps.append(Split(segment, shards, lanes, jit_compile))
                    layers.append(trunk)
                else:
                    parts.append(lambda state, token_ids, example_ids, training, segment=segment:
                                 segment(state, example_ids, training))
            if piece.after is not None:
                parts.append(lambda state, *_, after=piece.after: (after(state[0]),))
                layers.append(piece.after)
        flush()

    def variables(self):
        """The stage's trainable weights, each once, step by step."""
        found, seen = [], set()
        for step in self.steps:
            for variable in (step.variables if isinstance(step, Whole) else sum(step.variables, [])):
                if id(variable) not in seen:
                    seen.add(id(variable))
                    found.append(variable)
        return found

    def trained(self, trained_ids):
        """The stage's trainable weights among those whose ids are `trained_ids`."""
        return [v for v in self.variables() if id(v) in trained_ids]

    def run(self, x, token_ids, example_ids, training):
        """The stage's output for input `x` (no tape: evaluation)."""
        state = (x,)
        for step in self.steps:
            state = step.run(state, token_ids, example_ids, training)
        return state[0]

    def forward(self, x, token_ids, example_ids, watch_input, finish=None, traffic=None):
        """(the output, or finish(output) = (loss, metric sums) on the last stage; the records
        `backward` needs). `watch_input`: whether x's gradient is wanted."""
        state, records = (x,), []
        for i, step in enumerate(self.steps):
            last = i == len(self.steps) - 1
            state, record = step.forward(state, token_ids, example_ids, watch_input or i > 0,
                                         finish if last else None, traffic)
            records.append(record)
        return (state if finish else state[0]), records

    def backward(self, records, output_grad, trained, traffic=None):
        """(x's gradient or None, [gradient of each of `trained`]) given the output's gradient
        (None on the last stage, whose output is the loss)."""
        grads = None if output_grad is None else [output_grad]
        trained_ids, weight_grads = {id(v) for v in trained}, {}
        for step, record in zip(reversed(self.steps), reversed(records)):
            grads, step_grads = step.backward(record, grads, trained_ids, traffic)
            for key, grad in step_grads.items():
                weight_grads[key] = grad if key not in weight_grads else weight_grads[key] + grad
        return (grads[0] if grads else None), [tf.convert_to_tensor(weight_grads[id(v)]) for v in trained]


def gradients(tape, targets, sources, output_gradients):
    """tape.gradient, with zeros for the sources the targets do not depend on (a trunk weight
    another step uses). Not its UnconnectedGradients.ZERO: that builds zeros from a Keras
    variable's dtype, a string, and fails."""
    grads = tape.gradient(targets, sources, output_gradients=output_gradients)
    return [tf.zeros(s.shape, tf.as_dtype(s.dtype)) if g is None else g for s, g in zip(sources, grads)]
