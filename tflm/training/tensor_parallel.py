"""Tensor (operator) parallelism's plan: each replica's model placed over its stages' lanes, every
Transformer block split Megatron's way (Shoeybi et al., 2019), and the mapping between those
pieces and the one-device model that checkpoints hold.

With runtime.tensor_parallel = T, stage k of a replica runs on T devices (lanes). Each block's
query, key and value projections and feed-forward input are split by columns (lane t holds heads
t*H/T ... and ff_dim/T columns), its attention output and feed-forward output by rows; its norms
and output biases (its Trunk) stay whole on the stage's first lane, which also holds the
embedding, the final norm and the head, whole: tflm's vocabularies (bytes, characters, a few
thousand subwords) make them a small part of the weights, and splitting them over the vocabulary
(Megatron's vocabulary-parallel embedding and cross-entropy) would add a collective to every
step for little memory. The LSTM is not split (config.check_tensor_parallel says why).

Whatever the layout, the checkpointed model and optimizer are one-device ones in host memory (the
host mirror): a replica's weights and AdamW moments are gathered into them before each save and
scattered out of them after a restore, so checkpoints do not depend on R, S or T. How the steps
run is tflm/training/stage.py.
"""

import dataclasses

from tflm.lazy import keras, tf
from tflm.training.pipeline import placed_model, stage_pieces, unique_variables


@dataclasses.dataclass
class Replica:
    """One replica's placed model, its optimizer, each split block's (trunk, shards) by name, and
    `sources`: [(a weight of the one-device model, [(the replica's part of it, concatenation axis
    or None)])]."""

    model: object
    optimizer: object
    splits: dict
    sources: list

    def variables(self):
        """The replica's weights, in the order of the one-device model's."""
        return [part for _, parts in self.sources for part, _ in parts]

    def state(self):
        """Its weights and optimizer state."""
        return self.variables() + list(self.optimizer.variables)

    def layer_state(self, layer):
        """The weights of one of its layers and their optimizer state."""
        from tflm.training.optimizer import slots

        return [s for v in layer.weights for s in [v] + (slots(self.optimizer, v) if v.trainable else [])]

    def trained_ids(self, host_variables):
        """The ids of the replica's parts of `host_variables` (one-device weights)."""
        wanted = {id(v) for v in host_variables}
        return {id(part) for host, parts in self.sources if id(host) in wanted for part, _ in parts}


def placed_replica(new_model, host, cut, lanes, seq_len, new_optimizer):
    """A Replica of `host` (the one-device model, built) cut at `cut`, stage k on lanes[k]."""
    if len(lanes[0]) == 1:
        model = placed_model(new_model, host, cut, [stage[0] for stage in lanes], seq_len)
        splits, sources = {}, [(h, [(v, None)]) for h, v in zip(host.variables, model.variables)]
    else:
        model, splits = split_model(new_model, cut, lanes, seq_len)
        sources = split_sources(host, model, splits)
    optimizer = new_optimizer()
    optimizer.build([part for _, parts in sources for part, _ in parts if part.trainable])
    return Replica(model, optimizer, splits, sources)


def split_model(new_model, cut, lanes, seq_len):
    """(a model from `new_model()` whose layers outside its blocks are built on their stage's first
    lane, {block name: (BlockTrunk on that lane, [BlockShard t on lane t])}); its blocks stay unbuilt."""
    from tflm.models.block_shards import BlockShard, BlockTrunk

    model = new_model()
    token_ids = keras.ops.zeros((1, seq_len), dtype="int32")
    x, splits = token_ids, {}
    for pieces, stage_lanes in zip(stage_pieces(model, cut), lanes):
        with tf.device(stage_lanes[0]):
            for piece in pieces:
                if piece.block is None:
                    x = piece.run(x, token_ids, None, False)
                    continue
                trunk = BlockTrunk(piece.block)
                trunk.build(x.shape)
                shards = []
                for t, lane in enumerate(stage_lanes):
                    with tf.device(lane):
                        shards.append(BlockShard(piece.block, t, len(stage_lanes)))
                        shards[-1].build(x.shape)
                splits[piece.name] = (trunk, shards)
                if piece.after is not None:
                    x = piece.after(x)
    return model, splits


def split_sources(host, model, splits):
    """Replica.sources of a split model: its blocks' from block_sources, every other layer's weight by weight."""
    from tflm.models.block_shards import block_sources

    sources, seen = [], set()
    for host_piece, piece in zip(host.pieces(), model.pieces()):
        found = block_sources(host_piece.block, *splits[piece.name]) if piece.name in splits else []
        found += [(h, [(v, None)]) for h, v in zip(unique_variables(unsplit_layers(host_piece)),
                                                  unique_variables(unsplit_layers(piece)))]
        for host_variable, parts in found:
            if id(host_variable) not in seen:
                seen.add(id(host_variable))
                sources.append((host_variable, parts))
    return sources


def unsplit_layers(piece):
    """A piece's layers other than its block (the final norm after the last block; all, elsewhere)."""
    return [layer for layer in piece.layers if layer is not piece.block]


HOST = "/device:CPU:0"  # where the one-device model and its optimizer live


def gather(replica, host_optimizer):
    """Write `replica`'s weights and optimizer state into the one-device model and `host_optimizer`."""
    with tf.device(HOST):
        _gather(replica, host_optimizer)


def scatter(host_optimizer, replica):
    """Write the one-device model's weights and `host_optimizer`'s state into `replica`."""
    with tf.device(HOST):
        _scatter(host_optimizer, replica)


def _gather(replica, host_optimizer):
    for host, parts in replica.sources:
        axis = parts[0][1]
        host.assign(joined([part for part, _ in parts], axis))
        for host_slot, part_slots in slot_pairs(host_optimizer, replica.optimizer, host, parts):
            host_slot.assign(joined(part_slots, axis))
    host_optimizer.iterations.assign(replica.optimizer.iterations)


def _scatter(host_optimizer, replica):
    for host, parts in replica.sources:
        axis = parts[0][1]
        for (part, _), value in zip(parts, split(host, len(parts), axis)):
            part.assign(value)
        for host_slot, part_slots in slot_pairs(host_optimizer, replica.optimizer, host, parts):
            for part_slot, value in zip(part_slots, split(host_slot, len(parts), axis)):
                part_slot.assign(value)
    replica.optimizer.iterations.assign(host_optimizer.iterations)


def slot_pairs(host_optimizer, optimizer, host, parts):
    """[(an optimizer slot of the one-device weight `host`, the same slot of each of its `parts`)]."""
    from tflm.training.optimizer import slots

    if not host.trainable:
        return []
    return list(zip(slots(host_optimizer, host), zip(*(slots(optimizer, part) for part, _ in parts))))


def joined(tensors, axis):
    """The tensors concatenated on `axis`, or the one tensor (axis None)."""
    return tensors[0] if axis is None else tf.concat([tf.convert_to_tensor(t) for t in tensors], axis)


def split(tensor, count, axis):
    """`tensor` in `count` equal parts along `axis`, or [tensor] (axis None)."""
    return [tensor] if axis is None else tf.split(tf.convert_to_tensor(tensor), count, axis)
