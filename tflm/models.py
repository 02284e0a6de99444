"""The language models: a stacked LSTM and a pre-layer-norm Transformer decoder.

Both map int token ids [batch, time] to next-token logits [batch, time, vocabulary_size], in
float32 even under mixed precision so the loss and sampling stay exact. Both are built from
Keras / keras-nlp layers and round-trip through `get_config`.
"""

import keras
import keras_nlp


@keras.saving.register_keras_serializable(package="tflm")
class LstmLM(keras.Model):
    """Embedding -> N x LSTM (with dropout) -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, embed_dim, num_layers, lstm_units, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.embed_dim = vocabulary_size, embed_dim
        self.num_layers, self.lstm_units, self.dropout_rate = num_layers, lstm_units, dropout
        self.embedding = keras.layers.Embedding(vocabulary_size, embed_dim, name="embedding")
        self.lstm_layers = [
            keras.layers.LSTM(lstm_units, return_sequences=True, return_state=True, dropout=dropout,
                              name=f"lstm_{i}")
            for i in range(num_layers)
        ]
        self.output_dropout = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    def call(self, token_ids, training=False):
        """Logits for every position of `token_ids`."""
        x = self.embedding(token_ids)
        for lstm in self.lstm_layers:
            x, _, _ = lstm(x, training=training)
        return self.head(self.output_dropout(x, training=training))

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
        self.blocks = [
            keras_nlp.layers.TransformerDecoder(
                intermediate_dim=ff_dim, num_heads=num_heads, dropout=dropout,
                activation="gelu", normalize_first=True, name=f"decoder_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    def call(self, token_ids, training=False):
        """Logits for every position of `token_ids` (causal: position t sees tokens <= t)."""
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(self.final_norm(x))

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "seq_len": self.seq_len, "embed_dim": self.embed_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "dropout": self.dropout_rate}


def build_model(config, vocabulary_size):
    """The model named by `model.type`, with sizes from the config, built on a dummy batch."""
    m, seq_len = config["model"], config["data"]["seq_len"]
    if m["type"] == "lstm":
        model = LstmLM(vocabulary_size, m["embed_dim"], m["num_layers"], m["lstm_units"], m["dropout"])
    else:
        model = TransformerLM(vocabulary_size, seq_len, m["embed_dim"], m["num_layers"],
                              m["num_heads"], m["ff_dim"], m["dropout"])
    model(keras.ops.zeros((1, seq_len), dtype="int32"))
    return model
