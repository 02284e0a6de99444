"""Reading token ids through a language model: the next-token logits after each row of a padded
batch (the exported `serving_default` signature), and the chunking helpers scoring shares.

A model with a `context` (the Transformer) reads each row's last `context` tokens in one call; a
model without one (`context` None: the LSTM) reads whole rows in time chunks of about
CHUNK_TOKENS tokens that carry its cache from one chunk to the next, so memory stays bounded
however long the rows. That capability, not the model's type, chooses the strategy. Core TF ops
only, so the same code runs in Python and in an exported SavedModel.
"""

from tflm.data.tokenizers import PAD_ID
from tflm.lazy import tf


CHUNK_TOKENS = 8192  # tokens per model call when scoring or reading long rows: bounds memory


def next_token_logits(loaded, token_ids):
    """Logits [batch, vocab] for the token after each row of int `token_ids` [batch, time].

    Padding (id 0) at the end of a row is ignored, so rows of different lengths can share a
    batch; a model with a context reads each row's last `context` tokens, one without whole rows
    in time chunks. Core TF ops only.
    """
    token_ids = tf.cast(token_ids, tf.int32)
    token_ids = tf.pad(token_ids, [[0, 0], [0, tf.maximum(0, 1 - tf.shape(token_ids)[1])]])
    total = tf.shape(token_ids)[1]
    ends = tf.where(token_ids != PAD_ID, tf.range(1, total + 1)[None, :], 0)
    lengths = tf.maximum(tf.reduce_max(ends, axis=1), 1)
    context = loaded.model.context
    if context is None:
        return carried_last_logits(loaded.model, token_ids, lengths)
    window = tf.minimum(context, total)
    starts = tf.maximum(lengths - window, 0)
    windows = tf.gather(token_ids, starts[:, None] + tf.range(window)[None, :], batch_dims=1)
    logits = loaded.model(windows, training=False)
    return tf.gather(tf.cast(logits, tf.float32), lengths - starts - 1, batch_dims=1)


def carried_last_logits(model, token_ids, lengths):
    """Logits [batch, vocab] after token lengths[b] - 1 of each row, reading `token_ids` in time
    chunks of about CHUNK_TOKENS tokens that carry the model's cache (a model without a context)."""
    batch = tf.shape(token_ids)[0]
    steps = tf.maximum(1, CHUNK_TOKENS // tf.maximum(batch, 1))

    def body(begin, states, last_logits):
        end = tf.minimum(begin + steps, longest(lengths))
        logits, states = model.call_with_cache(token_ids[:, begin:end], states, begin)
        at = lengths - 1 - begin
        here = (at >= 0) & (at < end - begin)
        picked = tf.gather(tf.cast(logits, tf.float32), tf.clip_by_value(at, 0, end - begin - 1), batch_dims=1)
        return end, states, tf.where(here[:, None], picked, last_logits)

    _, _, last_logits = tf.while_loop(
        lambda begin, *_: begin < longest(lengths), body,
        (tf.constant(0), model.initial_cache(batch), tf.zeros([batch, model.vocabulary_size])),
        parallel_iterations=1)
    return last_logits


def longest(lengths):
    """The largest of int32 `lengths`, 0 for none."""
    return tf.reduce_max(tf.pad(lengths, [[0, 1]]))


def tokens_at(ids, rows, positions):
    """Tokens of ragged `ids` at `positions` [len(rows) or 1, P] of each row in `rows`: (ids
    [len(rows), P] with PAD_ID past a row's end, bool mask of the positions inside it)."""
    row_lengths = tf.gather(tf.cast(ids.row_lengths(), tf.int32), rows)[:, None]
    inside = positions < row_lengths
    index = tf.gather(tf.cast(ids.row_starts(), tf.int32), rows)[:, None] + tf.minimum(positions, row_lengths - 1)
    return tf.where(inside, tf.gather(ids.flat_values, index), PAD_ID), inside
