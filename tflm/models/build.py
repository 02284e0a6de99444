"""TODO docstring."""

import keras
from tflm.models.lstm import LstmLM
from tflm.models.transformer import TransformerLM


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
