"""The Transformer language model (`model.type: transformer`): a pre-layer-norm GPT decoder.

Token and position embeddings, N causal decoder blocks, a final layer norm and a dense head, with
float32 logits even under mixed precision. Its position embeddings have `data.seq_len` rows, so
that setting fixes its weights' shapes (`weight_shape_keys`) and is its `context`: it conditions on
at most seq_len tokens, and scoring and generation read longer text in windows. Its decoding
cache is each block's keys and values, written with core TF ops (tflm/models/scatter.py), so a
generation step costs one token's work. The interface it offers is described in
tflm/models/build.py.

The block is written here rather than taken from keras-nlp's TransformerDecoder for two reasons:
its dropout must draw masks per example (tflm/models/randomness.py), and keras-nlp's cached
attention writes its cache with `keras.ops.slice_update`, an XLA-only op that stock TF Serving
lacks. The block keeps TransformerDecoder's layers, names and variable shapes, so checkpoints of
either load into it.

Its math is written once for one device and for tensor parallelism (tflm/training/tensor_parallel.py):
sums over attention heads and feed-forward columns (`attention_heads`, `feedforward_columns`)
between whole-width steps (`block_segments`); a block sums over all of its heads, and a shard
of it (tflm/models/block_shards.py) over its share of them on its device.
"""

from typing import NamedTuple

import keras
import keras_nlp
import tensorflow as tf

from tflm.models.next_token import NextTokenModel, Piece
from tflm.models.randomness import ExampleDropout
from tflm.models.scatter import scatter_update


ATTENTION, FEEDFORWARD = "attention", "feedforward"  # a block's two sums over heads / columns


class HeadWeights(NamedTuple):
    """The projections of some of a block's attention heads: kernels [embed, heads, head_dim] and
    biases [heads, head_dim] of queries, keys and values; the output kernel [heads, head_dim, embed]."""

    query_kernel: object
    key_kernel: object
    value_kernel: object
    query_bias: object
    key_bias: object
    value_bias: object
    output_kernel: object


def attention_heads(x, weights, head_dim, dropout, example_ids, training, first_head=0):
    """The causal attention output [batch, time, embed] of the heads in `weights` (HeadWeights),
    summed over them, without the output bias: all of a block's heads, or a tensor-parallel
    shard's (`first_head`: its first head's index, for the dropout mask)."""
    kernel = tf.concat([weights.query_kernel, weights.key_kernel, weights.value_kernel], axis=1)
    bias = tf.concat([weights.query_bias, weights.key_bias, weights.value_bias], axis=0)
    qkv = tf.einsum("btc,cnh->btnh", x, tf.cast(kernel, x.dtype)) + tf.cast(bias, x.dtype)  # one fused matmul
    query, keys, values = tf.split(qkv, 3, axis=2)
    scores = tf.einsum("bqnh,bknh->bnqk", query, keys) * tf.cast(head_dim ** -0.5, query.dtype)
    length = tf.shape(x)[1]
    causal = tf.range(length)[:, None] >= tf.range(length)[None, :]
    scores = tf.where(causal[None, None], tf.cast(scores, tf.float32), -1e9)
    probabilities = tf.cast(tf.nn.softmax(scores, axis=-1), query.dtype)
    probabilities = dropout(probabilities, example_ids, training=training, first=first_head)
    attended = tf.einsum("bnqk,bknh->bqnh", probabilities, values)
    return tf.einsum("bqnh,nhe->bqe", attended, tf.cast(weights.output_kernel, x.dtype))


def feedforward_columns(x, kernel_in, bias_in, kernel_out, activation):
    """activation(x W_in + b_in) W_out over some columns of the feed-forward layer (all of them, or
    a tensor-parallel shard's), without the output bias."""
    hidden = activation(tf.einsum("btc,cf->btf", x, tf.cast(kernel_in, x.dtype)) + tf.cast(bias_in, x.dtype))
    return tf.einsum("btf,fc->btc", hidden, tf.cast(kernel_out, x.dtype))


class Trunk(NamedTuple):
    """A block's weights and dropouts outside its heads and columns: what tensor parallelism keeps
    whole (on a stage's first device)."""

    attention_norm: object
    feedforward_norm: object
    attention_bias: object
    feedforward_bias: object
    attention_dropout: object
    feedforward_dropout: object


def block_segments(trunk):
    """A pre-layer-norm block as the steps between its two sums over heads and columns: whole-width
    steps (`trunk`'s norms, biases, dropouts and residuals; `step(state, example_ids, training)` over
    a tuple of tensors), and the markers ATTENTION and FEEDFORWARD, each replacing the state's last
    tensor by the sum over heads (or columns) that tensor parallelism splits over devices."""
    def enter(state, example_ids, training):
        (x,) = state
        return x, trunk.attention_norm(x)

    def after_attention(state, example_ids, training):
        x, attended = state
        attended = attended + tf.cast(trunk.attention_bias, attended.dtype)
        x = x + trunk.attention_dropout(attended, example_ids, training=training)
        return x, trunk.feedforward_norm(x)

    def after_feedforward(state, example_ids, training):
        x, fed = state
        fed = fed + tf.cast(trunk.feedforward_bias, fed.dtype)
        return (x + trunk.feedforward_dropout(fed, example_ids, training=training),)

    return [enter, ATTENTION, after_attention, FEEDFORWARD, after_feedforward]


def dropout_sites(site):
    """The dropout sites of block number `site`: attention probabilities, attention output, feed-forward output."""
    return 3 * site, 3 * site + 1, 3 * site + 2


def attention_with_cache(attention, x, cache, slots, head_dim):
    """Attention for `x` [batch, time, embed] to the cached positions up to each token's own;
    `cache` is this block's (keys, values), each [batch, heads, capacity + 1, head_dim], and
    `slots` (CacheSlots) says where these tokens go. Returns the output and the cache with
    x's keys and values written in. `attention` is tflm's CausalSelfAttention or keras-hub's
    CachedMultiHeadAttention (the same projections). Written for few ops per token: without XLA
    each op costs executor time, whatever its size."""
    def project(dense):  # [batch, time, heads, head_dim]
        return tf.einsum("btc,cnh->btnh", x, tf.cast(dense.kernel, x.dtype)) + tf.cast(dense.bias, x.dtype)

    keys, values = (slots.write(c, project(d)) for c, d in zip(cache, (attention._key_dense, attention._value_dense)))
    query = project(attention._query_dense) * tf.cast(head_dim ** -0.5, x.dtype)
    scores = tf.cast(tf.einsum("btnh,bnsh->bnts", query, keys), tf.float32)
    probabilities = tf.nn.softmax(tf.where(slots.visible, scores, -1e9), axis=-1)
    attended = tf.einsum("bnts,bnsh->btnh", tf.cast(probabilities, x.dtype), values)
    output = attention._output_dense
    return (tf.einsum("btnh,nhe->bte", attended, tf.cast(output.kernel, x.dtype)) + tf.cast(output.bias, x.dtype),
            (keys, values))


@keras.saving.register_keras_serializable(package="tflm")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head causal self-attention with a key/value cache written with core TF ops.

    Its projections are keras.layers.MultiHeadAttention's (`_query_dense`, `_key_dense`,
    `_value_dense`, `_output_dense`, EinsumDense with the same shapes), so keras-nlp
    TransformerDecoder checkpoints restore into it.
    """

    def __init__(self, num_heads, head_dim, dropout=0.0, seed=0, site=0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout_rate, self.seed, self.site = dropout, seed, site

    def build(self, input_shape):
        embed_dim = input_shape[-1]
        for name in ("query", "key", "value"):
            dense = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, self.num_heads, self.head_dim),
                                             bias_axes="de", name=name, dtype=self.dtype_policy)
            dense.build(input_shape)
            setattr(self, f"_{name}_dense", dense)
        self._output_dense = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, embed_dim),
                                                      bias_axes="e", name="attention_output",
                                                      dtype=self.dtype_policy)
        self._output_dense.build((None, None, self.num_heads, self.head_dim))
        self.probabilities_dropout = ExampleDropout(self.dropout_rate, self.seed, self.site,
                                                    name="probabilities_dropout")

    def head_weights(self):
        """The weights of all its heads as HeadWeights."""
        dense = (self._query_dense, self._key_dense, self._value_dense)
        return HeadWeights(*(d.kernel for d in dense), *(d.bias for d in dense), self._output_dense.kernel)

    def call(self, x, example_ids=None, training=False):
        """Attention of each position to itself and the positions before it."""
        attended = attention_heads(x, self.head_weights(), self.head_dim, self.probabilities_dropout,
                                   example_ids, training)
        return attended + tf.cast(self._output_dense.bias, attended.dtype)

    def call_with_cache(self, x, cache, slots):
        """Attention for `x` with this block's (keys, values) cache: see attention_with_cache."""
        return attention_with_cache(self, x, cache, slots, self.head_dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim,
                "dropout": self.dropout_rate, "seed": self.seed, "site": self.site}


class CacheSlots:
    """Where the tokens of one `call_with_cache` go in a block's keys or values [batch, heads,
    capacity + 1, head_dim], and which cached positions each may see (its own and those before
    it); worked out once per call and shared by every block. A padding token (one past
    lengths[b]) writes zeros into the spare last slot, which no real token sees."""

    def __init__(self, positions, lengths, heads, capacity):
        batch, time = tf.shape(positions)[0], tf.shape(positions)[1]
        self.real = None if lengths is None else tf.range(time)[None, :] < lengths[:, None]
        slots = positions if lengths is None else tf.where(self.real, positions, capacity)
        shape = [batch, time, heads]
        self.indices = tf.stack([tf.broadcast_to(tf.range(batch)[:, None, None], shape),
                                 tf.broadcast_to(tf.range(heads)[None, None, :], shape),
                                 tf.broadcast_to(slots[:, :, None], shape)], axis=-1)
        self.visible = tf.range(capacity + 1)[None, None, None, :] <= positions[:, None, :, None]

    def write(self, cache, updates):
        """`cache` (a block's keys or values) with `updates` [batch, time, heads, head_dim] written in."""
        if self.real is not None:
            updates = tf.where(self.real[:, :, None, None], updates, tf.zeros([], updates.dtype))
        return scatter_update(cache, self.indices, updates)


def block_with_cache(block, x, cache, slots, head_dim):
    """A pre-layer-norm block for `x` [batch, time, embed] with its (keys, values) cache (see
    attention_with_cache); (output, cache). `block` is tflm's DecoderBlock or keras-hub's
    TransformerDecoder with normalize_first (the same sublayers). The feed-forward runs on
    [batch * time, embed], where each Dense is one MatMul (on 3-D input it is a Tensordot: a dozen ops)."""
    y, cache = attention_with_cache(block._self_attention_layer, block._self_attention_layer_norm(x), cache, slots,
                                    head_dim)
    x = x + y
    flat = tf.reshape(x, [-1, x.shape[-1]])
    flat = flat + block._feedforward_output_dense(
        block._feedforward_intermediate_dense(block._feedforward_layer_norm(flat)))
    return tf.reshape(flat, tf.shape(x)), cache


@keras.saving.register_keras_serializable(package="tflm")
class DecoderBlock(keras.layers.Layer):
    """x + Dropout(Attention(LN(x))), then x + Dropout(FF(LN(x))): a pre-layer-norm GPT block
    with keras-nlp TransformerDecoder's sublayer names (`_self_attention_layer`, ...)."""

    def __init__(self, num_heads, ff_dim, dropout=0.0, seed=0, site=0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.ff_dim, self.dropout_rate, self.seed, self.site = num_heads, ff_dim, dropout, seed, site

    def build(self, input_shape):
        embed_dim = input_shape[-1]
        policy = self.dtype_policy
        probabilities_site, attention_site, feedforward_site = dropout_sites(self.site)
        self._self_attention_layer = CausalSelfAttention(self.num_heads, embed_dim // self.num_heads,
                                                         self.dropout_rate, self.seed, probabilities_site,
                                                         name="self_attention", dtype=policy)
        self._self_attention_layer.build(input_shape)
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="self_attention_layer_norm", dtype=policy)
        self._self_attention_layer_norm.build(input_shape)
        self._self_attention_dropout = ExampleDropout(self.dropout_rate, self.seed, attention_site,
                                                      name="self_attention_dropout")
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.ff_dim, activation="gelu", name="feedforward_intermediate_dense", dtype=policy)
        self._feedforward_intermediate_dense.build(input_shape)
        self._feedforward_output_dense = keras.layers.Dense(embed_dim, name="feedforward_output_dense", dtype=policy)
        self._feedforward_output_dense.build(tuple(input_shape[:-1]) + (self.ff_dim,))
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="feedforward_layer_norm", dtype=policy)
        self._feedforward_layer_norm.build(input_shape)
        self._feedforward_dropout = ExampleDropout(self.dropout_rate, self.seed, feedforward_site,
                                                   name="feedforward_dropout")

    def trunk(self):
        """This block's weights and dropouts outside its heads and columns (see block_segments)."""
        return Trunk(self._self_attention_layer_norm, self._feedforward_layer_norm,
                     self._self_attention_layer._output_dense.bias, self._feedforward_output_dense.bias,
                     self._self_attention_dropout, self._feedforward_dropout)

    def partial(self, kind, h, example_ids=None, training=False):
        """The ATTENTION or FEEDFORWARD sum over all of the block's heads or columns."""
        attention = self._self_attention_layer
        if kind == ATTENTION:
            return attention_heads(h, attention.head_weights(), attention.head_dim, attention.probabilities_dropout,
                                   example_ids, training)
        intermediate = self._feedforward_intermediate_dense
        return feedforward_columns(h, intermediate.kernel, intermediate.bias, self._feedforward_output_dense.kernel,
                                   intermediate.activation)

    def call(self, x, example_ids=None, training=False):
        """The block over a whole sequence (causal)."""
        state = (x,)
        for step in block_segments(self.trunk()):
            if step in (ATTENTION, FEEDFORWARD):
                state = (*state[:-1], self.partial(step, state[-1], example_ids, training))
            else:
                state = step(state, example_ids, training)
        return state[0]

    def call_with_cache(self, x, cache, slots):
        """The block for `x` with its (keys, values) cache: see block_with_cache."""
        return block_with_cache(self, x, cache, slots, self._self_attention_layer.head_dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "ff_dim": self.ff_dim,
                "dropout": self.dropout_rate, "seed": self.seed, "site": self.site}


class KeyValueCacheRows:
    """Rows of a cache that is a tuple of tensors [batch, ...] (each block's keys and values)."""

    def cache_rows(self, cache, rows):
        """The keys and values of the batch rows `rows` (int [n]): a cache for a batch of n."""
        return tuple(tf.gather(tensor, rows) for tensor in cache)

    def with_cache_rows(self, cache, rows, row_cache):
        """`cache` with the keys and values of rows `rows` replaced by `row_cache` (as `cache_rows` gives them)."""
        return tuple(tf.tensor_scatter_nd_update(tensor, rows[:, None], row_tensor)
                     for tensor, row_tensor in zip(cache, row_cache))


@keras.saving.register_keras_serializable(package="tflm")
class TransformerLM(KeyValueCacheRows, NextTokenModel):
    """TokenAndPositionEmbedding -> N x DecoderBlock (causal, pre-LN) -> LayerNorm -> Dense."""

    def __init__(self, vocabulary_size, seq_len, embed_dim, num_layers, num_heads, ff_dim,
                 dropout=0.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.seq_len, self.embed_dim = vocabulary_size, seq_len, embed_dim
        self.num_layers, self.num_heads, self.ff_dim = num_layers, num_heads, ff_dim
        self.dropout_rate, self.seed = dropout, seed
        self.embedding = keras_nlp.layers.TokenAndPositionEmbedding(
            vocabulary_size, seq_len, embed_dim, name="embedding"
        )
        for i in range(num_layers):  # attributes, not a list: see LstmLM
            setattr(self, f"decoder_{i}", DecoderBlock(num_heads, ff_dim, dropout, seed, site=i, name=f"decoder_{i}"))
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    weight_shape_keys = ("data.seq_len",)  # the rows of the position embedding

    @classmethod
    def configured(cls, model_config, vocabulary_size, seq_len, seed=0):
        """A TransformerLM of the model section's sizes with position embeddings for `seq_len` tokens."""
        m = model_config
        return cls(vocabulary_size, seq_len, m.embed_dim, m.num_layers, m.num_heads, m.ff_dim, m.dropout, seed)

    @property
    def context(self):
        """Positions the model has embeddings for: the most tokens it conditions on."""
        return self.seq_len

    @property
    def blocks(self):
        """The decoder blocks, bottom first (causal: position t sees tokens <= t)."""
        return self.stacked("decoder", self.num_layers)

    def feature_pieces(self):
        """The embedding, then each block (the last one with the final norm): the normalised last
        block's output [batch, time, embed_dim] is what the head reads."""
        def block_run(block, norm=None):
            def run(x, token_ids, example_ids, training):
                x = block(x, example_ids, training=training)
                return norm(x) if norm else x
            return run

        blocks = self.blocks
        return [Piece("embedding", (self.embedding,), lambda x, *_: self.embedding(x)),
                *(Piece(block.name, (block,), block_run(block), block=block) for block in blocks[:-1]),
                Piece(blocks[-1].name, (blocks[-1], self.final_norm), block_run(blocks[-1], self.final_norm),
                      block=blocks[-1], after=self.final_norm)]

    def call_with_cache(self, token_ids, cache, cache_index, lengths=None):
        """Logits for `token_ids` [batch, time] placed at positions cache_index... of each row
        (`cache_index` a scalar or [batch]), and the cache with their keys and values.

        The tokens attend to the cached positions up to their own, so a generation step costs one
        token's work, not a re-run over the prefix. Padding (past `lengths`) is kept out of the
        cache; cached positions a later token does not reach stay invisible to it, so a row
        restarts its window just by writing it again from position 0.
        """
        batch, time = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        positions = tf.broadcast_to(cache_index, [batch])[:, None] + tf.range(time)[None, :]
        slots = CacheSlots(positions, lengths, self.num_heads, self.seq_len)
        if lengths is not None:  # padding may run past the last position
            positions = tf.minimum(positions, self.seq_len - 1)
        embedding = self.embedding  # its two lookups, without the layer's index checks (a few ops a step)
        x = (tf.gather(tf.cast(embedding.token_embedding.embeddings, self.compute_dtype), token_ids)
             + tf.gather(tf.cast(embedding.position_embedding.position_embeddings, self.compute_dtype), positions))
        new_cache = []
        for block, block_cache in zip(self.blocks, zip(cache[0::2], cache[1::2])):
            x, block_cache = block.call_with_cache(x, block_cache, slots)
            new_cache.extend(block_cache)
        logits = self.head(self.final_norm(tf.reshape(x, [-1, self.embed_dim])))
        return tf.reshape(logits, [batch, time, self.vocabulary_size]), tuple(new_cache)

    def initial_cache(self, batch_size):
        """An empty cache for `call_with_cache`: each block's keys, then values, each [batch,
        num_heads, seq_len + 1, head_dim] (positions, and a spare last slot for padding). Separate
        tensors, not slices of one: XLA copies a tensor it reads a slice of before it writes it."""
        head_dim = self.embed_dim // self.num_heads
        return tuple(tf.zeros([batch_size, self.num_heads, self.seq_len + 1, head_dim], self.compute_dtype)
                     for _ in range(2 * self.num_layers))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "seq_len": self.seq_len, "embed_dim": self.embed_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "dropout": self.dropout_rate, "seed": self.seed}


LanguageModel = TransformerLM  # what tflm.models.build builds for model.type: transformer
