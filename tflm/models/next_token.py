"""What the language models of tflm.models share: next-token logits are the head applied to the
model's features (a classifier reads the same features), and stacked layers are kept one
attribute each (`lstm_0`, `decoder_0`, ...), not in a list: tf.train.Checkpoint does not follow
Keras 3's tracked lists, so layers kept only in a list would be missing from checkpoints.
"""

import keras


class NextTokenModel(keras.Model):
    """A language model: `features` [batch, time, width] and a `head` over the vocabulary."""

    def call(self, token_ids, training=False, example_ids=None):
        """Logits [batch, time, vocabulary_size] for every position of `token_ids`."""
        return self.head(self.features(token_ids, training, example_ids))

    def stacked(self, name, count):
        """The layers `name`_0 ... `name`_(count - 1), bottom first."""
        return [getattr(self, f"{name}_{i}") for i in range(count)]
