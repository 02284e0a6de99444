"""Building the language model a config names: `model.type` is the name of its file in tflm/models/.

The model of `model.type: NAME` is the class `LanguageModel` of tflm/models/NAME.py, found by
importing that module (so nothing here lists the types: config.py's ModelConfig says which are
valid and what fields they read). The class is a keras.Model that maps int token ids [batch, time]
to float32 next-token logits [batch, time, vocabulary_size] and offers what every caller uses
without asking which model it is (`Model` is the class, `model` an instance):

    Model.configured(model_config, vocabulary_size, seq_len, seed)   a model of the config's sizes
    Model.weight_shape_keys     config keys outside `model` that fix its weights' shapes (init-from)
    model(token_ids, training=False, example_ids=None)   logits; example_ids draw dropout (randomness.py)
    model.vocabulary_size
    model.features(token_ids, training, example_ids)   what the head reads (a classifier's backbone)
    model.feature_pieces() / model.pieces()   the network as a chain of Pieces (next_token.py), which
                                pipeline parallelism cuts into stages
    model.head                  the Dense layer over the vocabulary (a classifier keeps it, untrained:
                                model.freeze_head())
    model.frozen_weights()      weights checkpoints leave out (a preset's under LoRA: `checkpointed`)
    model.context               the most tokens it conditions on; None: any length, the cache carries the past
    cache = model.initial_cache(batch_size)
    logits, cache = model.call_with_cache(token_ids, cache, cache_index, lengths=None)
    row_cache = model.cache_rows(cache, rows)          the cache of rows `rows` (a batch of len(rows))
    cache = model.with_cache_rows(cache, rows, row_cache)   ... written back

In `call_with_cache`, `token_ids` [batch, time] go at positions cache_index... of each row
(`cache_index` a scalar or one index per row, so rows of different lengths decode side by side);
with `lengths` [batch], only the first lengths[b] of row b are real and the rest is padding that
leaves no trace in the cache. So one call reads a batch of ragged prompts, or restarts some rows'
windows while the other rows take one token. The cache's layout is the model's business: callers
only pass it back, or take and put back rows of it with the two helpers.

Importing this module loads no TensorFlow; building a model does.
"""

import importlib

from tflm.lazy import keras


def model_class(model_type):
    """The Keras class of `model.type`: `LanguageModel` of tflm/models/<model_type>.py."""
    return importlib.import_module(f"tflm.models.{model_type}").LanguageModel


def weight_shape_keys(model_type):
    """Config keys outside the model section whose values fix the shapes of this model's weights."""
    return tuple(model_class(model_type).weight_shape_keys)


def new_model(model_config, vocabulary_size, seq_len, seed=0, lora_rank=0):
    """The model named by `model.type`, with its sizes and dropout seed, not built yet (a preset's
    comes built, with LoRA adapters of `lora_rank` if > 0)."""
    model = model_class(model_config.type).configured(model_config, vocabulary_size, seq_len, seed)
    if lora_rank:
        model.enable_lora(lora_rank)
    return model


def build_model(model_config, vocabulary_size, seq_len, seed=0):
    """The model named by `model.type`, with its sizes and dropout seed, built on a dummy batch."""
    return built(new_model(model_config, vocabulary_size, seq_len, seed), seq_len)


def checkpointed(model):
    """What checkpoints of `model` (a language model or a classifier) hold: the model, or, when
    some of its weights come from elsewhere (`frozen_weights`: a preset's under LoRA), a module
    of the others by path."""
    import tensorflow as tf

    frozen = {id(v) for v in getattr(model, "frozen_weights", list)()}
    if not frozen:
        return model
    module = tf.Module()
    # By path below the model: the model's own name is numbered per process (classifier_2/...).
    module.weights = {v.path.removeprefix(f"{model.name}/"): v for v in model.variables if id(v) not in frozen}
    return module


def built(model, seq_len):
    """`model` (a language model or a classifier) built on a dummy batch of `seq_len` tokens."""
    model(keras.ops.zeros((1, seq_len), dtype="int32"))
    return model
