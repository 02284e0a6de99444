"""The LSTM language model (`model.type: lstm`): embedding, a stack of fused LSTM layers, a dense head.

It reads any length (`context` None): its decoding cache is each layer's recurrent state (h and c),
which carries the whole past, so scoring and generation run a text of any length through it in
chunks instead of windows, and it needs no setting outside the model section (`data.seq_len` is
only its training window). Its input dropout shares one mask over time per example (see
tflm/models/randomness.py); its layers keep keras.layers.LSTM's weights and checkpoint paths
(tflm/models/fused_lstm.py). The interface it offers is described in tflm/models/build.py.
"""

import keras
import tensorflow as tf

from tflm.models.fused_lstm import FusedLSTM
from tflm.models.next_token import NextTokenModel, Piece
from tflm.models.randomness import ExampleDropout


@keras.saving.register_keras_serializable(package="tflm")
class LstmLM(NextTokenModel):
    """Embedding -> N x LSTM (input dropout shared over time) -> dropout -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, embed_dim, num_layers, lstm_units, dropout=0.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.embed_dim = vocabulary_size, embed_dim
        self.num_layers, self.lstm_units, self.dropout_rate, self.seed = num_layers, lstm_units, dropout, seed
        self.embedding = keras.layers.Embedding(vocabulary_size, embed_dim, name="embedding")
        # One attribute per layer, not a list (tflm.models.next_token says why).
        for i in range(num_layers):
            setattr(self, f"lstm_{i}", FusedLSTM(lstm_units, name=f"lstm_{i}"))  # keras.layers.LSTM's weights
            setattr(self, f"input_dropout_{i}", ExampleDropout(dropout, seed, site=i, shared_axes=(1,),
                                                               name=f"input_dropout_{i}"))
        self.output_dropout = ExampleDropout(dropout, seed, site=num_layers, name="output_dropout")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    context = None  # reads any length: the recurrent state carries the past
    weight_shape_keys = ()  # data.seq_len is only the training window: no weight depends on it

    @classmethod
    def configured(cls, model_config, vocabulary_size, seq_len, seed=0):
        """An LstmLM of the model section's sizes (`seq_len` changes nothing)."""
        m = model_config
        return cls(vocabulary_size, m.embed_dim, m.num_layers, m.lstm_units, m.dropout, seed)

    @property
    def lstm_layers(self):
        """The stacked LSTM layers, bottom first."""
        return self.stacked("lstm", self.num_layers)

    def feature_pieces(self):
        """The embedding, then each LSTM layer with its input dropout (the last one with the
        output dropout): the last layer's output [batch, time, lstm_units] is what the head reads."""
        def layer_run(i, lstm, last):
            def run(x, token_ids, example_ids, training):
                x = getattr(self, f"input_dropout_{i}")(x, example_ids, training=training)
                x, _, _ = lstm(x, training=training)
                return self.output_dropout(x, example_ids, training=training) if last else x
            return run

        layers = self.lstm_layers
        return [Piece("embedding", (self.embedding,), lambda x, *_: self.embedding(x)),
                *(Piece(lstm.name, (lstm,), layer_run(i, lstm, i == len(layers) - 1)) for i, lstm in enumerate(layers))]

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

    def cache_rows(self, cache, rows):
        """The recurrent states of the batch rows `rows` (int [n]): a cache for a batch of n."""
        return tf.gather(cache, rows, axis=2)

    def with_cache_rows(self, cache, rows, row_cache):
        """`cache` with the states of rows `rows` replaced by `row_cache` (as `cache_rows` gives them)."""
        batch_major = tf.transpose(cache, [2, 0, 1, 3])  # scatters write along the first axis
        written = tf.tensor_scatter_nd_update(batch_major, rows[:, None], tf.transpose(row_cache, [2, 0, 1, 3]))
        return tf.transpose(written, [1, 2, 0, 3])

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "embed_dim": self.embed_dim, "num_layers": self.num_layers,
                "lstm_units": self.lstm_units, "dropout": self.dropout_rate, "seed": self.seed}


LanguageModel = LstmLM  # what tflm.models.build builds for model.type: lstm
