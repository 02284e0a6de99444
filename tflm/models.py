"""The language models: a stacked LSTM and a pre-layer-norm Transformer decoder.

Both map int token ids [batch, time] to next-token logits [batch, time, vocabulary_size], in
float32 even under mixed precision so the loss and sampling stay exact. Both are built from
Keras / keras-nlp layers and round-trip through `get_config`.
"""

import contextlib

import keras
import keras_nlp
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tflm")
class LstmLM(keras.Model):
    """Embedding -> N x LSTM (with dropout) -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, embed_dim, num_layers, lstm_units, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.embed_dim = vocabulary_size, embed_dim
        self.num_layers, self.lstm_units, self.dropout_rate = num_layers, lstm_units, dropout
        self.embedding = keras.layers.Embedding(vocabulary_size, embed_dim, name="embedding")
        # One attribute per layer, not a list: tf.train.Checkpoint does not follow Keras 3's
        # tracked lists, so layers kept only in a list would be missing from checkpoints.
        for i in range(num_layers):
            setattr(self, f"lstm_{i}", keras.layers.LSTM(
                lstm_units, return_sequences=True, return_state=True, dropout=dropout, name=f"lstm_{i}"))
        self.output_dropout = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    @property
    def lstm_layers(self):
        """The stacked LSTM layers, bottom first."""
        return [getattr(self, f"lstm_{i}") for i in range(self.num_layers)]

    def call(self, token_ids, training=False):
        """Logits for every position of `token_ids`."""
        x = self.embedding(token_ids)
        for lstm in self.lstm_layers:
            x, _, _ = lstm(x, training=training)
        return self.head(self.output_dropout(x, training=training))

    def call_with_state(self, token_ids, states):
        """Logits for `token_ids` [batch, time] run on from `states`, and the states after them.

        `states` is [num_layers, 2, batch, lstm_units] (h and c of each layer; zeros to start), so
        generation feeds one token per step instead of re-running the prefix.
        """
        x = self.embedding(token_ids)
        new_states = []
        for i, lstm in enumerate(self.lstm_layers):
            x, h, c = lstm(x, initial_state=[states[i, 0], states[i, 1]])
            new_states.append(keras.ops.stack([h, c]))
        return self.head(x), keras.ops.stack(new_states)

    def initial_state(self, batch_size):
        """Zero recurrent states for `call_with_state`."""
        return keras.ops.zeros((self.num_layers, 2, batch_size, self.lstm_units))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "embed_dim": self.embed_dim, "num_layers": self.num_layers,
                "lstm_units": self.lstm_units, "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="tflm")
class TransformerLM(keras.Model):
    """TokenAndPositionEmbedding -> N x TransformerDecoder (causal, pre-LN) -> LayerNorm -> Dense."""

    def __init__(self, vocabulary_size, seq_len, embed_dim, num_layers, num_heads, ff_dim,
                 dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.seq_len, self.embed_dim = vocabulary_size, seq_len, embed_dim
        self.num_layers, self.num_heads, self.ff_dim, self.dropout_rate = num_layers, num_heads, ff_dim, dropout
        self.embedding = keras_nlp.layers.TokenAndPositionEmbedding(
            vocabulary_size, seq_len, embed_dim, name="embedding"
        )
        for i in range(num_layers):  # attributes, not a list: see LstmLM
            setattr(self, f"decoder_{i}", keras_nlp.layers.TransformerDecoder(
                intermediate_dim=ff_dim, num_heads=num_heads, dropout=dropout,
                activation="gelu", normalize_first=True, name=f"decoder_{i}"))
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    @property
    def blocks(self):
        """The decoder blocks, bottom first."""
        return [getattr(self, f"decoder_{i}") for i in range(self.num_layers)]

    def call(self, token_ids, training=False):
        """Logits for every position of `token_ids` (causal: position t sees tokens <= t)."""
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(self.final_norm(x))

    def call_with_cache(self, token_ids, cache, cache_index):
        """Logits for `token_ids` placed at positions `cache_index`..., and the updated cache.

        `cache` is [num_layers, batch, 2, seq_len, num_heads, head_dim] (keys and values of each
        block, from `initial_cache`); the tokens attend to cached positions before them, so a
        generation step costs one token's work, not a re-run over the prefix.
        """
        x = self.embedding(token_ids, start_index=cache_index)
        new_cache = []
        with core_op_cache_updates():
            for i, block in enumerate(self.blocks):
                x, block_cache = block(x, self_attention_cache=cache[i],
                                       self_attention_cache_update_index=cache_index)
                new_cache.append(block_cache)
        return self.head(self.final_norm(x)), keras.ops.stack(new_cache)

    def initial_cache(self, batch_size):
        """An empty key/value cache for `call_with_cache`."""
        head_dim = self.embed_dim // self.num_heads
        return keras.ops.zeros((self.num_layers, batch_size, 2, self.seq_len, self.num_heads, head_dim))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "seq_len": self.seq_len, "embed_dim": self.embed_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "dropout": self.dropout_rate}


def update_along_time(inputs, start_indices, updates):
    """`keras.ops.slice_update` for a key/value cache [batch, time, heads, head_dim] written at
    start [0, index, 0, 0], from core TF ops (gather + select; fixed shapes, so XLA compiles it).
    """
    index, length = start_indices[1], tf.shape(updates)[1]
    offsets = tf.range(tf.shape(inputs)[1]) - index
    inside = tf.reshape((offsets >= 0) & (offsets < length), [1, -1, 1, 1])
    spread = tf.gather(updates, tf.clip_by_value(offsets, 0, length - 1), axis=1)
    return tf.where(inside, tf.cast(spread, inputs.dtype), inputs)


@contextlib.contextmanager
def core_op_cache_updates():
    """Route keras-nlp's cache writes through `update_along_time` while the blocks run.

    Keras' TensorFlow backend implements `slice_update` with XlaDynamicUpdateSlice, an op stock
    TF Serving lacks, and keras-nlp's CachedMultiHeadAttention offers no other hook; swapping the
    function while our own code traces (or runs) the cached call keeps exported graphs core-only.
    """
    original = keras.ops.slice_update
    keras.ops.slice_update = update_along_time
    try:
        yield
    finally:
        keras.ops.slice_update = original


def build_model(model_config, vocabulary_size, seq_len):
    """The model named by `model.type`, with its sizes, built on a dummy batch of `seq_len`."""
    m = model_config
    if m.type == "lstm":
        model = LstmLM(vocabulary_size, m.embed_dim, m.num_layers, m.lstm_units, m.dropout)
    else:
        model = TransformerLM(vocabulary_size, seq_len, m.embed_dim, m.num_layers, m.num_heads, m.ff_dim, m.dropout)
    model(keras.ops.zeros((1, seq_len), dtype="int32"))
    return model
