"""The language models: a stacked LSTM and a pre-layer-norm Transformer decoder.

Both map int token ids [batch, time] to next-token logits [batch, time, vocabulary_size], in
float32 even under mixed precision so the loss and sampling stay exact, and both offer the same
decoding interface (as keras-hub's causal LMs do), so a sampler never asks which model it has:

    cache = model.initial_cache(batch_size)
    logits, cache = model.call_with_cache(token_ids, cache, cache_index, lengths=None)
    model.context   # how many tokens the model can condition on (None: unbounded, the LSTM)

`token_ids` [batch, time] go at positions cache_index... of each row (`cache_index` a scalar or
one index per row, so rows of different lengths decode side by side); with `lengths` [batch],
only the first lengths[b] of row b are real and the rest is padding that leaves no trace in the
cache. So one call reads a batch of ragged prompts, or restarts some rows' windows while the
other rows take one token. The cache is the model's business: callers only pass it back.

Dropout is a pure function of (train.seed, the dropout site, the example's global index in the
training stream, the element), not of a random-number state: `example_ids` name each row of a
batch, so N replicas or workers that split a global batch draw exactly the masks one device
would, and two different examples never share a mask. (keras.layers.Dropout draws from one
SeedGenerator variable, mirrored across replicas, so every replica drew the *same* mask for
different examples, and N replicas regularised less than one device.)

The Transformer block is written here rather than taken from keras-nlp's TransformerDecoder for
that reason and one more: keras-nlp's cached attention writes its cache with
`keras.ops.slice_update`, an XLA-only op that stock TF Serving lacks. The block keeps
TransformerDecoder's layers, names and variable shapes, so checkpoints of either load into it.
"""

import keras
import keras_nlp
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from tflm.lstm import FusedLSTM

GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters across 32 bits


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, tf.uint32)))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))


def example_uniforms(seed, site, example_ids, row_shape):
    """Uniform floats in [0, 1) of shape [batch, *row_shape], a pure function of (seed, dropout
    site, example id, position in the row): counter-based, like JAX's or Philox's generators."""
    ids = tf.cast(example_ids, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(ids, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(ids, 32), tf.uint32)
    base = _fmix32(tf.constant((seed * GOLDEN + site) % 2**32, tf.uint32))
    keys = _fmix32(_fmix32(tf.bitwise.bitwise_xor(base, low)) + high)  # [batch]
    size = 1
    for dim in row_shape:
        size *= dim
    counters = tf.reshape(tf.cast(tf.range(size), tf.uint32) * tf.constant(GOLDEN, tf.uint32), row_shape)
    keys = tf.reshape(keys, [-1] + [1] * len(row_shape))
    bits = _fmix32(_fmix32(keys + counters))
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) * (1.0 / (1 << 24))


@keras.saving.register_keras_serializable(package="tflm")
class ExampleDropout(keras.layers.Layer):
    """Dropout whose mask is a pure function of (seed, site, example id, element).

    Args:
        rate: fraction of elements dropped while training.
        seed: the run's seed (train.seed).
        site: a number unique to this dropout in the model.
        shared_axes: axes (of the input, batch excluded) along which one mask is shared; e.g.
            (1,) on [batch, time, features] drops the same features at every time step.

    Call it as `dropout(x, example_ids, training=True)`, `example_ids` int [batch].
    """

    def __init__(self, rate, seed=0, site=0, shared_axes=(), **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed, self.site, self.shared_axes = float(rate), int(seed), int(site), tuple(shared_axes)

    def call(self, inputs, example_ids=None, training=False):
        if not training or self.rate == 0:
            return inputs
        if example_ids is None:
            raise ValueError(f"{self.name}: training with dropout needs example_ids (see tflm.trainer)")
        row_shape = [1 if axis in self.shared_axes else inputs.shape[axis] for axis in range(1, inputs.shape.rank)]
        if None in row_shape:
            raise ValueError(f"{self.name}: dropout needs static shapes (except batch), got {inputs.shape}")
        keep = example_uniforms(self.seed, self.site, example_ids, row_shape) >= self.rate
        return tf.where(keep, inputs / tf.cast(1.0 - self.rate, inputs.dtype), tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "site": self.site,
                "shared_axes": self.shared_axes}


@keras.saving.register_keras_serializable(package="tflm")
class LstmLM(keras.Model):
    """Embedding -> N x LSTM (input dropout shared over time) -> dropout -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, embed_dim, num_layers, lstm_units, dropout=0.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.embed_dim = vocabulary_size, embed_dim
        self.num_layers, self.lstm_units, self.dropout_rate, self.seed = num_layers, lstm_units, dropout, seed
        self.embedding = keras.layers.Embedding(vocabulary_size, embed_dim, name="embedding")
        # One attribute per layer, not a list: tf.train.Checkpoint does not follow Keras 3's
        # tracked lists, so layers kept only in a list would be missing from checkpoints.
        for i in range(num_layers):
            setattr(self, f"lstm_{i}", FusedLSTM(lstm_units, name=f"lstm_{i}"))  # keras.layers.LSTM's weights
            setattr(self, f"input_dropout_{i}", ExampleDropout(dropout, seed, site=i, shared_axes=(1,),
                                                               name=f"input_dropout_{i}"))
        self.output_dropout = ExampleDropout(dropout, seed, site=num_layers, name="output_dropout")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    context = None  # reads any length: the recurrent state carries the past

    @property
    def lstm_layers(self):
        """The stacked LSTM layers, bottom first."""
        return [getattr(self, f"lstm_{i}") for i in range(self.num_layers)]

    def call(self, token_ids, training=False, example_ids=None):
        """Logits for every position of `token_ids`."""
        return self.head(self.features(token_ids, training, example_ids))

    def features(self, token_ids, training=False, example_ids=None):
        """The last LSTM layer's output [batch, time, lstm_units], what the head reads."""
        x = self.embedding(token_ids)
        for i, lstm in enumerate(self.lstm_layers):
            x = getattr(self, f"input_dropout_{i}")(x, example_ids, training=training)
            x, _, _ = lstm(x, training=training)
        return self.output_dropout(x, example_ids, training=training)

    def call_with_cache(self, token_ids, cache, cache_index=None, lengths=None):
        """Logits for `token_ids` [batch, time] run on from the recurrent state `cache`
        [num_layers, 2, batch, lstm_units] (h and c of each layer), and the state after them
        (after the first lengths[b] tokens of row b when `lengths` is given); `cache_index` is not
        needed (the state is the whole past)."""
        if token_ids.shape[1] == 1 and lengths is None:
            return self._step(token_ids, cache)
        mask = None if lengths is None else tf.range(tf.shape(token_ids)[1])[None, :] < lengths[:, None]
        x = self.embedding(token_ids)
        new_states = []
        for i, lstm in enumerate(self.lstm_layers):
            x, h, c = lstm(x, initial_state=[cache[i, 0], cache[i, 1]], step_mask=mask)
            new_states.append(keras.ops.stack([h, c]))
        return self.head(x), keras.ops.stack(new_states)

    def _step(self, token_ids, cache):
        """`call_with_cache` for one token per row: each layer's cell alone, without the LSTM
        layer's loop over time (the same arithmetic, a fraction of the ops)."""
        x = tf.gather(self.embedding.embeddings, token_ids[:, 0])
        states = tf.unstack(tf.reshape(cache, [2 * self.num_layers, -1, self.lstm_units]))  # h, c of each layer
        new_states = []
        for i, lstm in enumerate(self.lstm_layers):
            x, (h, c) = lstm.cell(x, states[2 * i:2 * i + 2])
            new_states += [h, c]
        return self.head(x)[:, None], tf.reshape(tf.stack(new_states), tf.shape(cache))

    def initial_cache(self, batch_size):
        """Zero recurrent states for `call_with_cache`."""
        return keras.ops.zeros((self.num_layers, 2, batch_size, self.lstm_units))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "embed_dim": self.embed_dim, "num_layers": self.num_layers,
                "lstm_units": self.lstm_units, "dropout": self.dropout_rate, "seed": self.seed}


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

    def _qkv(self, x):
        """Queries, keys and values [batch, time, heads, head_dim] from one fused matmul."""
        kernel = tf.concat([self._query_dense.kernel, self._key_dense.kernel, self._value_dense.kernel], axis=1)
        bias = tf.concat([self._query_dense.bias, self._key_dense.bias, self._value_dense.bias], axis=0)
        qkv = tf.einsum("btc,cnh->btnh", x, tf.cast(kernel, x.dtype)) + tf.cast(bias, x.dtype)
        return tf.split(qkv, 3, axis=2)

    def _attend(self, query, keys, values, mask, example_ids, training):
        """Softmax(q k^T / sqrt(d)) v over the keys `mask` allows; [batch, time, embed]."""
        scores = tf.einsum("bqnh,bknh->bnqk", query, keys) * tf.cast(self.head_dim ** -0.5, query.dtype)
        scores = tf.where(mask, tf.cast(scores, tf.float32), -1e9)
        probabilities = tf.cast(tf.nn.softmax(scores, axis=-1), query.dtype)
        probabilities = self.probabilities_dropout(probabilities, example_ids, training=training)
        return self._output_dense(tf.einsum("bnqk,bknh->bqnh", probabilities, values))

    def call(self, x, example_ids=None, training=False):
        """Attention of each position to itself and the positions before it."""
        query, keys, values = self._qkv(x)
        length = tf.shape(x)[1]
        causal = tf.range(length)[:, None] >= tf.range(length)[None, :]
        return self._attend(query, keys, values, causal[None, None], example_ids, training)

    def call_with_cache(self, x, cache, slots):
        """Attention for `x` [batch, time, embed] to the cached positions up to each token's own;
        `cache` is this block's (keys, values), each [batch, heads, capacity + 1, head_dim], and
        `slots` (CacheSlots) says where these tokens go. Returns the output and the cache with
        x's keys and values written in. Written for few ops per token: without XLA each op costs
        executor time, whatever its size."""
        def project(dense):  # [batch, time, heads, head_dim]
            return tf.einsum("btc,cnh->btnh", x, tf.cast(dense.kernel, x.dtype)) + tf.cast(dense.bias, x.dtype)

        keys, values = (slots.write(c, project(d)) for c, d in zip(cache, (self._key_dense, self._value_dense)))
        query = project(self._query_dense) * tf.cast(self.head_dim ** -0.5, x.dtype)
        scores = tf.cast(tf.einsum("btnh,bnsh->bnts", query, keys), tf.float32)
        probabilities = tf.nn.softmax(tf.where(slots.visible, scores, -1e9), axis=-1)
        attended = tf.einsum("bnts,bnsh->btnh", tf.cast(probabilities, x.dtype), values)
        output = self._output_dense
        return (tf.einsum("btnh,nhe->bte", attended, tf.cast(output.kernel, x.dtype)) + tf.cast(output.bias, x.dtype),
                (keys, values))

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


def scatter_update(tensor, indices, updates):
    """`tensor` with `updates` written at `indices`, as tf.tensor_scatter_nd_update (no index
    twice, unless every write there is of zeros onto zeros), from core ops, in place when nothing
    else holds `tensor`.

    In place matters: a decoding step writes one token into a cache that holds thousands. Without
    XLA, TensorScatterUpdate copies all of `tensor` (TF 2.21's kernel tries to reuse the buffer of
    `updates`, never that of its input), so the write is two ScatterNdNonAliasingAdd ops, which
    do reuse their input's buffer: minus the old values (leaving exact zeros), plus the new ones,
    once the new ones exist (by then the readers of `tensor` they were computed from are done, so
    its buffer is free to reuse). XLA has no kernel for that op, and
    updates its own scatter in place; whether the graph is built for XLA is TensorFlow's answer
    (control_flow_util, which tf.while_loop asks too)."""
    updates = tf.cast(updates, tensor.dtype)
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return tf.tensor_scatter_nd_update(tensor, indices, updates)
    with tf.control_dependencies([updates]):  # not before: earlier readers of `tensor` must be done
        old = tf.gather_nd(tensor, indices)
    cleared = tf.raw_ops.ScatterNdNonAliasingAdd(input=tensor, indices=indices, updates=-old)
    return tf.raw_ops.ScatterNdNonAliasingAdd(input=cleared, indices=indices, updates=updates)


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
        self._self_attention_layer = CausalSelfAttention(self.num_heads, embed_dim // self.num_heads,
                                                         self.dropout_rate, self.seed, 3 * self.site,
                                                         name="self_attention", dtype=policy)
        self._self_attention_layer.build(input_shape)
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="self_attention_layer_norm", dtype=policy)
        self._self_attention_layer_norm.build(input_shape)
        self._self_attention_dropout = ExampleDropout(self.dropout_rate, self.seed, 3 * self.site + 1,
                                                      name="self_attention_dropout")
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.ff_dim, activation="gelu", name="feedforward_intermediate_dense", dtype=policy)
        self._feedforward_intermediate_dense.build(input_shape)
        self._feedforward_output_dense = keras.layers.Dense(embed_dim, name="feedforward_output_dense", dtype=policy)
        self._feedforward_output_dense.build(tuple(input_shape[:-1]) + (self.ff_dim,))
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="feedforward_layer_norm", dtype=policy)
        self._feedforward_layer_norm.build(input_shape)
        self._feedforward_dropout = ExampleDropout(self.dropout_rate, self.seed, 3 * self.site + 2,
                                                   name="feedforward_dropout")

    def _feedforward(self, x, example_ids, training):
        y = self._feedforward_output_dense(self._feedforward_intermediate_dense(self._feedforward_layer_norm(x)))
        return x + self._feedforward_dropout(y, example_ids, training=training)

    def call(self, x, example_ids=None, training=False):
        """The block over a whole sequence (causal)."""
        y = self._self_attention_layer(self._self_attention_layer_norm(x), example_ids, training=training)
        x = x + self._self_attention_dropout(y, example_ids, training=training)
        return self._feedforward(x, example_ids, training)

    def call_with_cache(self, x, cache, slots):
        """The block for `x` [batch, time, embed] with its (keys, values) cache (see
        CausalSelfAttention's); (output, cache). The feed-forward runs on [batch * time, embed], where each Dense is one
        MatMul (on 3-D input it is a Tensordot: a dozen ops)."""
        y, cache = self._self_attention_layer.call_with_cache(self._self_attention_layer_norm(x), cache, slots)
        x = x + y
        flat = tf.reshape(x, [-1, x.shape[-1]])
        flat = flat + self._feedforward_output_dense(
            self._feedforward_intermediate_dense(self._feedforward_layer_norm(flat)))
        return tf.reshape(flat, tf.shape(x)), cache

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "ff_dim": self.ff_dim,
                "dropout": self.dropout_rate, "seed": self.seed, "site": self.site}


@keras.saving.register_keras_serializable(package="tflm")
class TransformerLM(keras.Model):
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

    @property
    def context(self):
        """Positions the model has embeddings for: the most tokens it conditions on."""
        return self.seq_len

    @property
    def blocks(self):
        """The decoder blocks, bottom first."""
        return [getattr(self, f"decoder_{i}") for i in range(self.num_layers)]

    def call(self, token_ids, training=False, example_ids=None):
        """Logits for every position of `token_ids` (causal: position t sees tokens <= t)."""
        return self.head(self.features(token_ids, training, example_ids))

    def features(self, token_ids, training=False, example_ids=None):
        """The normalised last block's output [batch, time, embed_dim], what the head reads."""
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, example_ids, training=training)
        return self.final_norm(x)

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


def build_model(model_config, vocabulary_size, seq_len, seed=0):
    """The model named by `model.type`, with its sizes and dropout seed, built on a dummy batch."""
    m = model_config
    if m.type == "lstm":
        model = LstmLM(vocabulary_size, m.embed_dim, m.num_layers, m.lstm_units, m.dropout, seed)
    else:
        model = TransformerLM(vocabulary_size, seq_len, m.embed_dim, m.num_layers, m.num_heads, m.ff_dim,
                              m.dropout, seed)
    model(keras.ops.zeros((1, seq_len), dtype="int32"))
    return model
