"""A pretrained KerasHub model as a tflm language model (`model.preset`, model.type: preset).

The network is the preset's backbone, loaded by KerasHub with its weights (tflm/presets.py finds
and checks the preset), wrapped in tflm's interface (tflm/models/build.py): a chain of pieces (the
token embedding, each of the backbone's decoder blocks, the last with the final norm, then the
head), so the trainer, the classifier and every strategy use it as they use tflm's own models.
Training runs KerasHub's own layers (causal by construction), so tflm's logits are KerasHub's.

Ids: tflm's ids are the preset's plus one (id 0 is tflm's padding: tflm/data/tokenizers/preset.py);
the embedding piece subtracts the one, and the head gives id 0 the logit MASKED.

Decoding: KerasHub's own cache is written with `slice_update`, an XLA op that stock TF Serving
lacks, and takes one position for the whole batch; tflm's cache (tflm/models/transformer.py's
CacheSlots: each row at its own position, ragged prompts, core TF ops) is used instead, with each
family's block math written over the block's own layers (`FAMILIES`). The tests hold each
family's cached logits equal to its full forward pass, and that equal to KerasHub's.

Its `context` is data.seq_len (at most the preset's positions, for GPT-2): the window it was
fine-tuned on, the cache's capacity, and scoring's window, as for tflm's Transformer. No weight
depends on it (`weight_shape_keys` is empty).

LoRA (`train.lora_rank`): KerasHub's `enable_lora` on the backbone freezes every weight and adds
adapters to the attention's query and value projections; the checkpoint then keeps only what
trains (`frozen_weights`: tflm.models.build.checkpointed), the preset supplying the rest.
"""

import keras
import tensorflow as tf

from tflm.errors import TflmError
from tflm.models.next_token import NextTokenModel, Piece
from tflm.models.transformer import CacheSlots, KeyValueCacheRows, block_with_cache
from tflm.presets import open_preset

MASKED = -1e9  # the padding id's logit: never predicted, and finite for the loss


class Gpt2:
    """GPT-2: token and learned position embeddings, TransformerDecoder blocks (pre-norm), tied head."""

    @staticmethod
    def embed(backbone, ids, positions=None):
        """Token plus position embeddings of the preset's ids [batch, time] (positions 0... by default)."""
        tokens = backbone.token_embedding(ids)
        if positions is None:
            return backbone.embeddings_add((tokens, backbone.position_embedding(tokens)))
        table = backbone.position_embedding.position_embeddings
        return tokens + tf.cast(tf.gather(table, positions), tokens.dtype)

    @staticmethod
    def cache_heads(block):
        """The heads a block's key/value cache holds, and their width."""
        attention = block._self_attention_layer
        return attention._num_heads, attention._key_dim

    @staticmethod
    def block_with_cache(block, x, cache, slots, positions):
        """One block over `x` with its cache: tflm's Transformer's, which has the same sublayers."""
        return block_with_cache(block, x, cache, slots, block._self_attention_layer._key_dim)



class Llama:
    """Llama: token embedding, RMS-norm blocks with rotary grouped-query attention and a SwiGLU feed-forward."""

    @staticmethod
    def embed(backbone, ids, positions=None):
        """The token embeddings of the preset's ids (rotary positions are applied inside attention)."""
        return backbone.token_embedding(ids)

    @staticmethod
    def cache_heads(block):
        """The key/value heads a block's cache holds (fewer than its query heads), and their width."""
        attention = block._self_attention_layer
        return attention.num_key_value_heads, attention._key_dense.partial_output_shape[-1]  # not .kernel: LoRA merges it

    @staticmethod
    def block_with_cache(block, x, cache, slots, positions):
        """LlamaTransformerDecoder's math for `x` at `positions` [batch, time] with its cache (see Gpt2)."""
        attention = block._self_attention_layer
        h = block._self_attention_layernorm(x)
        rotate = attention.rotary_embedding_layer
        query = rotate(attention._query_dense(h), positions=positions)  # [batch, time, heads, head_dim]
        keys = slots.write(cache[0], rotate(attention._key_dense(h), positions=positions))
        values = slots.write(cache[1], attention._value_dense(h))  # [batch, kv_heads, capacity + 1, head_dim]
        batch, time = tf.shape(x)[0], tf.shape(x)[1]
        groups, head_dim = attention.num_key_value_groups, query.shape[-1]
        grouped = tf.reshape(query, [batch, time, attention.num_key_value_heads, groups, head_dim])
        scores = tf.einsum("btkgh,bksh->bkgts", grouped, keys) * tf.cast(attention._inv_norm_factor, query.dtype)
        probabilities = tf.nn.softmax(tf.where(slots.visible[:, :, None], tf.cast(scores, tf.float32), -1e9), axis=-1)
        attended = tf.einsum("bkgts,bksh->btkgh", tf.cast(probabilities, values.dtype), values)
        x = x + attention._output_dense(tf.reshape(attended, [batch, time, -1, head_dim]))
        h = block._feedforward_layernorm(x)
        gate = tf.cast(block.activation(tf.cast(block._feedforward_gate_dense(h), tf.float32)), h.dtype)
        return x + block._feedforward_output_dense(block._feedforward_intermediate_dense(h) * gate), (keys, values)


FAMILIES = {"GPT2Backbone": Gpt2, "LlamaBackbone": Llama}  # tflm.presets.SUPPORTED_BACKBONES


class PresetLM(KeyValueCacheRows, NextTokenModel):
    """A KerasHub backbone (GPT-2, Llama) behind tflm's language-model interface."""

    weight_shape_keys = ()  # the preset fixes every shape

    def __init__(self, backbone, seq_len, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.seq_len = backbone, seq_len
        self.family = FAMILIES[type(backbone).__name__]
        self.vocabulary_size = backbone.vocabulary_size + 1
        self.head = PresetHead(backbone.token_embedding)

    @classmethod
    def configured(cls, model_config, vocabulary_size, seq_len, seed=0):
        """The preset's backbone with its weights, behind tflm's interface (see the module doc);
        `vocabulary_size` must be the preset tokenizer's."""
        import keras_hub

        directory = open_preset(model_config.preset)  # data.seq_len fits its positions: tflm.presets.check_preset_config
        backbone = keras_hub.models.Backbone.from_preset(directory, dtype=keras.config.dtype_policy().name, dropout=0.0)
        if backbone.vocabulary_size + 1 != vocabulary_size:
            raise TflmError(f"model.preset={model_config.preset} has {backbone.vocabulary_size} token ids, its "
                            f"tokenizer {vocabulary_size - 1}: the run's tokenizer is not this preset's")
        return cls(backbone, seq_len)

    def build(self, input_shape):
        self.built = True  # the backbone came built, with its weights

    @property
    def context(self):
        """data.seq_len: the most tokens it conditions on (see the module doc)."""
        return self.seq_len

    @property
    def blocks(self):
        """The backbone's decoder blocks, bottom first."""
        return list(self.backbone.transformer_layers)

    def feature_pieces(self):
        """The embedding, then each decoder block (the last one with the final norm)."""
        backbone, blocks = self.backbone, self.blocks

        def embed(ids, *_):
            return self.family.embed(backbone, tf.maximum(ids - 1, 0))

        def block_run(block, norm=None):
            def run(x, token_ids, example_ids, training):
                x = block(x, training=training)
                return norm(x) if norm else x
            return run

        embedding_layers = tuple(layer for layer in (backbone.token_embedding,
                                                     getattr(backbone, "position_embedding", None)) if layer)
        return [Piece("embedding", embedding_layers, embed),
                *(Piece(block.name, (block,), block_run(block)) for block in blocks[:-1]),
                Piece(blocks[-1].name, (blocks[-1], backbone.layer_norm), block_run(blocks[-1], backbone.layer_norm))]

    def freeze_head(self):
        """Leave the next-token head untrained (a classifier's): an untied head's weights; a tied
        one is the token embedding, which trains."""
        if not self.backbone.token_embedding.tie_weights:
            self.backbone.token_embedding.reverse_embeddings.trainable = False

    def enable_lora(self, rank):
        """Freeze every weight and train rank-`rank` adapters of the attention's query and value
        projections (KerasHub's `enable_lora`, which would also train those projections' biases)."""
        self.backbone.enable_lora(rank)
        for variable in self.backbone.trainable_variables:
            if "lora_kernel" not in variable.path:
                variable.trainable = False

    def frozen_weights(self):
        """Under LoRA, every weight but the adapters: the preset holds them, checkpoints do not."""
        return [v for v in self.variables if not v.trainable] if getattr(self.backbone, "_lora_enabled_layers", None) \
            else []

    def call_with_cache(self, token_ids, cache, cache_index, lengths=None):
        """Logits for `token_ids` [batch, time] at positions cache_index... of each row, and the
        cache with their keys and values (tflm's decoding interface: tflm/models/build.py)."""
        batch, time = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        positions = tf.broadcast_to(cache_index, [batch])[:, None] + tf.range(time)[None, :]
        heads, _ = self.family.cache_heads(self.blocks[0])
        slots = CacheSlots(positions, lengths, heads, self.seq_len)
        if lengths is not None:  # padding may run past the last position
            positions = tf.minimum(positions, self.seq_len - 1)
        x = self.family.embed(self.backbone, tf.maximum(token_ids - 1, 0), positions)
        new_cache = []
        for block, block_cache in zip(self.blocks, zip(cache[0::2], cache[1::2])):
            x, block_cache = self.family.block_with_cache(block, x, block_cache, slots, positions)
            new_cache.extend(block_cache)
        return self.head(self.backbone.layer_norm(x)), tuple(new_cache)

    def initial_cache(self, batch_size):
        """Each block's keys, then values, each [batch, cached heads, seq_len + 1, head_dim] (as
        tflm's Transformer: a spare last slot for padding)."""
        cache = []
        for block in self.blocks:
            heads, head_dim = self.family.cache_heads(block)
            cache += [tf.zeros([batch_size, heads, self.seq_len + 1, head_dim], self.compute_dtype) for _ in range(2)]
        return tuple(cache)


class PresetHead(keras.layers.Layer):
    """float32 logits [..., 1 + vocabulary]: the backbone's reverse embedding (tied or not), after
    MASKED for tflm's padding id. Holds no weights of its own: the embedding layer owns them, so
    freezing this head (a classifier's) freezes nothing the embedding needs."""

    def __init__(self, token_embedding, **kwargs):
        super().__init__(name="logits", **kwargs)
        self._reverse = lambda x: token_embedding(x, reverse=True)  # a function: not tracked as a sublayer

    def call(self, features):
        """Logits of every preset id, with MASKED for id 0 in front."""
        logits = tf.cast(self._reverse(features), tf.float32)
        return tf.concat([tf.fill(tf.concat([tf.shape(logits)[:-1], [1]], 0), MASKED), logits], axis=-1)


LanguageModel = PresetLM  # what tflm.models.build builds for model.type: preset
