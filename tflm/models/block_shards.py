"""A DecoderBlock split for tensor parallelism (tflm/training/tensor_parallel.py): `BlockShard`
holds one device's share of its heads and feed-forward columns, `BlockTrunk` the rest (norms and
output biases, on a stage's first device), and `block_sources` says which part of each of the
block's weights each of them holds, so a one-device checkpoint maps onto them and back.
"""

import keras

from tflm.models.randomness import ExampleDropout
from tflm.models.transformer import (ATTENTION, HeadWeights, Trunk, attention_heads, dropout_sites,
                                     feedforward_columns)


class BlockTrunk(keras.layers.Layer):
    """A DecoderBlock's Trunk as a layer of its own: its norms and output biases on one device (a
    stage's first), for tensor parallelism (tflm/training/tensor_parallel.py)."""

    def __init__(self, block, **kwargs):
        super().__init__(name=f"{block.name}_trunk", dtype=block.dtype_policy, **kwargs)
        self.block_config = block.get_config()

    def build(self, input_shape):
        config, embed_dim, policy = self.block_config, input_shape[-1], self.dtype_policy
        _, attention_site, feedforward_site = dropout_sites(config["site"])
        self.attention_norm, self.feedforward_norm = (
            keras.layers.LayerNormalization(epsilon=1e-5, name=name, dtype=policy)
            for name in ("self_attention_layer_norm", "feedforward_layer_norm"))
        self.attention_norm.build(input_shape)
        self.feedforward_norm.build(input_shape)
        self.attention_bias = self.add_weight((embed_dim,), initializer="zeros", name="attention_output_bias")
        self.feedforward_bias = self.add_weight((embed_dim,), initializer="zeros", name="feedforward_output_bias")
        self.attention_dropout, self.feedforward_dropout = (
            ExampleDropout(config["dropout"], config["seed"], site, name=name)
            for site, name in ((attention_site, "self_attention_dropout"), (feedforward_site, "feedforward_dropout")))

    def trunk(self):
        """The Trunk these weights make."""
        return Trunk(self.attention_norm, self.feedforward_norm, self.attention_bias, self.feedforward_bias,
                     self.attention_dropout, self.feedforward_dropout)


class BlockShard(keras.layers.Layer):
    """Shard `shard` of `shards` of a DecoderBlock's heads and feed-forward columns (Megatron's
    column-parallel query/key/value and feed-forward input, row-parallel attention output and
    feed-forward output), for tensor parallelism (tflm/training/tensor_parallel.py)."""

    def __init__(self, block, shard, shards, **kwargs):
        super().__init__(name=f"{block.name}_shard_{shard}", dtype=block.dtype_policy, **kwargs)
        config = block.get_config()
        self.heads, self.columns = config["num_heads"] // shards, config["ff_dim"] // shards
        self.first_head, self.first_column = shard * self.heads, shard * self.columns
        self.num_heads, self.dropout_rate, self.seed, self.site = (config["num_heads"], config["dropout"],
                                                                    config["seed"], config["site"])

    def build(self, input_shape):
        embed_dim = input_shape[-1]
        self.head_dim = embed_dim // self.num_heads
        heads = (embed_dim, self.heads, self.head_dim)
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", self.add_weight(heads, name=f"{name}_kernel"))
            setattr(self, f"{name}_bias", self.add_weight(heads[1:], initializer="zeros", name=f"{name}_bias"))
        self.output_kernel = self.add_weight((self.heads, self.head_dim, embed_dim), name="attention_output_kernel")
        self.intermediate_kernel = self.add_weight((embed_dim, self.columns), name="feedforward_intermediate_kernel")
        self.intermediate_bias = self.add_weight((self.columns,), initializer="zeros",
                                                 name="feedforward_intermediate_bias")
        self.feedforward_kernel = self.add_weight((self.columns, embed_dim), name="feedforward_output_kernel")
        self.probabilities_dropout = ExampleDropout(self.dropout_rate, self.seed, dropout_sites(self.site)[0],
                                                    name="probabilities_dropout")

    def partial(self, kind, h, example_ids=None, training=False):
        """This shard's part of the ATTENTION or FEEDFORWARD sum (see DecoderBlock.partial)."""
        if kind == ATTENTION:
            weights = HeadWeights(self.query_kernel, self.key_kernel, self.value_kernel, self.query_bias,
                                  self.key_bias, self.value_bias, self.output_kernel)
            return attention_heads(h, weights, self.head_dim, self.probabilities_dropout, example_ids, training,
                                   self.first_head)
        return feedforward_columns(h, self.intermediate_kernel, self.intermediate_bias, self.feedforward_kernel,
                                   keras.activations.gelu)


def block_sources(block, trunk, shards):
    """[(a weight of `block`, [(its part, axis the parts are concatenated on, or None: whole)])] for
    the BlockTrunk and BlockShards that hold it split over devices."""
    attention, intermediate = block._self_attention_layer, block._feedforward_intermediate_dense
    whole = [(block._self_attention_layer_norm.gamma, trunk.attention_norm.gamma),
             (block._self_attention_layer_norm.beta, trunk.attention_norm.beta),
             (block._feedforward_layer_norm.gamma, trunk.feedforward_norm.gamma),
             (block._feedforward_layer_norm.beta, trunk.feedforward_norm.beta),
             (attention._output_dense.bias, trunk.attention_bias),
             (block._feedforward_output_dense.bias, trunk.feedforward_bias)]
    split = [(getattr(attention, f"_{name}_dense").kernel, f"{name}_kernel", 1) for name in ("query", "key", "value")]
    split += [(getattr(attention, f"_{name}_dense").bias, f"{name}_bias", 0) for name in ("query", "key", "value")]
    split += [(attention._output_dense.kernel, "output_kernel", 0), (intermediate.kernel, "intermediate_kernel", 1),
              (intermediate.bias, "intermediate_bias", 0),
              (block._feedforward_output_dense.kernel, "feedforward_kernel", 0)]
    return ([(weight, [(part, None)]) for weight, part in whole]
            + [(weight, [(getattr(shard, name), axis) for shard in shards]) for weight, name, axis in split])
