"""A text classifier on a language model's backbone (the network; tflm.tasks.classify trains it).

    Classifier: token ids [batch, seq_len] -> backbone features [batch, seq_len, width]
                -> pooling (the last real token's, or the mean over real tokens; padding masked)
                -> Dense -> logits [batch, classes] (float32)

The backbone is any language model of tflm.models, whole (its next-token head too, not trained
here, so a checkpoint of the language model restores into it unchanged). Texts are cut to
data.seq_len tokens (the first ones) and padded with PAD_ID (tflm.data.examples).
"""

import keras
import tensorflow as tf

from tflm.data.tokenizers import PAD_ID
from tflm.models.build import new_model
from tflm.models.next_token import Piece, run_pieces


@keras.saving.register_keras_serializable(package="tflm")
class Classifier(keras.Model):
    """A language model's features, pooled over the real tokens, then a dense head over the classes.

    Args:
        backbone: an LstmLM or TransformerLM (anything with `features(token_ids, training, example_ids)`).
        num_classes: the number of labels.
        pooling: "last" (the last real token's features) or "mean" (their mean over real tokens).
    """

    def __init__(self, backbone, num_classes, pooling="last", **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("last", "mean"):
            raise ValueError(f"`pooling` must be 'last' or 'mean', received {pooling!r}")
        self.backbone, self.num_classes, self.pooling = backbone, num_classes, pooling
        backbone.freeze_head()  # the next-token head: kept for checkpoints, never trained here
        self.classifier_head = keras.layers.Dense(num_classes, dtype="float32", name="classifier_head")

    def build(self, input_shape):
        # The whole backbone, its next-token head too (a language model's checkpoint holds it),
        # before the classifier head, the order a language model and then this head are built in.
        self.backbone(keras.ops.zeros((1, *input_shape[1:]), dtype="int32"))

    def call(self, token_ids, training=False, example_ids=None):
        """Logits [batch, num_classes] of padded token ids [batch, time]."""
        return run_pieces(self.pieces(), token_ids, example_ids, training)

    def frozen_weights(self):
        """The backbone's weights that stay out of checkpoints (a preset's under LoRA)."""
        return self.backbone.frozen_weights()

    def pieces(self):
        """The chain from token ids to logits (see tflm.models.next_token): the backbone's
        feature pieces, then pooling and the classifier head."""
        def classify(features, token_ids, example_ids, training):
            return self.classifier_head(pool(features, token_ids != PAD_ID, self.pooling))

        return self.backbone.feature_pieces() + [Piece("classifier_head", (self.classifier_head,), classify)]


def pool(features, real, pooling):
    """[batch, width] from features [batch, time, width] over the positions `real` marks."""
    if pooling == "last":
        last = tf.maximum(tf.reduce_sum(tf.cast(real, tf.int32), axis=1) - 1, 0)
        return tf.gather(features, last, batch_dims=1)
    weights = tf.cast(real, features.dtype)[:, :, None]
    return tf.reduce_sum(features * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1)


def new_classifier(config, vocabulary_size, num_classes, seed=0):
    """The configured backbone (its dropout seeded with `seed`) with a head for `num_classes`
    labels, not built yet."""
    backbone = new_model(config.model, vocabulary_size, config.data.seq_len, seed, config.train.lora_rank)
    return Classifier(backbone, num_classes, config.task.pooling)


