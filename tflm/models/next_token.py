"""What the language models of tflm.models share: next-token logits are the head applied to the
model's features (a classifier reads the same features), the network is a chain of pieces that
pipeline parallelism cuts into stages (tflm/training/pipeline.py), and stacked layers are kept
one attribute each (`lstm_0`, `decoder_0`, ...), not in a list: tf.train.Checkpoint does not
follow Keras 3's tracked lists, so layers kept only in a list would be missing from checkpoints.
"""

from typing import Callable, NamedTuple

import keras


class Piece(NamedTuple):
    """One link of a model's chain: `run(x, token_ids, example_ids, training)` maps the previous
    link's output (the token ids, for the first) to the next one's input, with the weights of `layers`.
    A Transformer block's link names it as `block` (tensor parallelism splits it), and what runs
    after it, if anything, as `after` (a layer)."""

    name: str
    layers: tuple
    run: Callable
    block: object = None
    after: object = None


def run_pieces(pieces, token_ids, example_ids=None, training=False):
    """The output of the chain `pieces` on `token_ids`."""
    x = token_ids
    for piece in pieces:
        x = piece.run(x, token_ids, example_ids, training)
    return x


class NextTokenModel(keras.Model):
    """A language model: `features` [batch, time, width] and a `head` over the vocabulary, both
    the chain of its `feature_pieces` (each model defines those)."""

    def call(self, token_ids, training=False, example_ids=None):
        """Logits [batch, time, vocabulary_size] for every position of `token_ids`."""
        return run_pieces(self.pieces(), token_ids, example_ids, training)

    def features(self, token_ids, training=False, example_ids=None):
        """What the head reads: [batch, time, width]."""
        return run_pieces(self.feature_pieces(), token_ids, example_ids, training)

    def feature_pieces(self):
        """The chain from token ids to features, as [Piece], bottom first."""
        raise NotImplementedError

    def pieces(self):
        """The whole chain from token ids to logits: the feature pieces, then the head."""
        return self.feature_pieces() + [Piece("head", (self.head,), lambda x, *_: self.head(x))]

    def freeze_head(self):
        """Leave the next-token head untrained (a classifier keeps it only for checkpoints)."""
        self.head.trainable = False

    def frozen_weights(self):
        """Weights that come from elsewhere and stay out of checkpoints (a preset's under LoRA)."""
        return []

    def stacked(self, name, count):
        """The layers `name`_0 ... `name`_(count - 1), bottom first."""
        return [getattr(self, f"{name}_{i}") for i in range(count)]
