"""Scoring texts under a trained run: log-probability, per-token NLL, perplexity, bits per byte.

The library half of `python -m tflm.score` (tflm/score.py) and of the exported `score` signature:

    score(S) = sum over i >= 1 of log P(t_i | t_<i)

The first token has nothing to be conditioned on, so a text of n tokens scores n - 1 of them
(`num_tokens`); an empty or one-character text scores log_prob 0, mean_nll 0, perplexity 1.
`bits_per_byte` is -log_prob in bits over the UTF-8 bytes of those scored tokens: unlike the
per-token figures, it compares models with different tokenizers.
A model without a context (`model.context` None: the LSTM) reads each text in one pass, its cache
carrying the past. A model with one (the Transformer: `data.seq_len`) sees at most `context`
tokens, so a longer text is scored in windows of `context` that start every `stride` tokens: the
first window scores all its tokens, each later one only the last `stride` (those no window scored
yet), so every token is conditioned on at least context - stride earlier tokens (all of them near
the start). stride = context is plain chunking; stride = 1 gives every token a full context.

Cost is linear in the tokens sent: each text gets only the windows (or carried steps) it needs, the
windows of all texts run together, CHUNK_TOKENS tokens per model call in a tf.while_loop, and their
log-probs are summed back per text; memory holds one chunk, however long the texts.
"""

import math

from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.serving.inputs import check_strings
from tflm.serving.loading import MAX_BATCH_SIZE
from tflm.serving.reading import CHUNK_TOKENS, longest, tokens_at


SCORES = ("log_prob", "mean_nll", "perplexity", "bits_per_byte", "num_tokens")


def default_stride(context):
    """Half a context: each scored token sees between seq_len / 2 and seq_len tokens."""
    return max(1, context // 2)


def check_stride(stride, context):
    """`stride`, or the default; a TflmError unless 1 <= stride <= context."""
    if stride is None:
        return default_stride(context)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context:
        raise TflmError(f"stride must be an integer from 1 to the context ({context}), got {stride!r}")
    return stride


def score_ids(model, ids, stride):
    """(log_prob [batch] float32, num_tokens [batch] int32) for ragged int32 `ids` [batch, None].

    A model without a context reads each row in one pass, carrying its cache; otherwise windows of
    at most `model.context` tokens start every `stride` tokens (see the module docstring). Each
    row costs only its own tokens, and the model sees about CHUNK_TOKENS tokens at a time, so
    memory stays bounded however long the texts. Core TF ops only.
    """
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    if model.context is None:
        log_prob = carried_log_probs(model, ids, lengths)
    else:
        log_prob = windowed_log_probs(model, ids, lengths, model.context, stride)
    return tf.cast(log_prob, tf.float32), tf.maximum(lengths - 1, 0)


def token_log_probs(model, tokens, cache=None, cache_index=0):
    """log P(tokens[:, i + 1] | tokens[:, :i + 1]) [rows, time - 1], and the model's cache after
    them when a `cache` is given (the rows' carried past, tokens going at `cache_index`...)."""
    if cache is None:
        logits = model(tokens[:, :-1], training=False)
    else:
        logits, cache = model.call_with_cache(tokens[:, :-1], cache, cache_index)
    log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:],
                                                                logits=tf.cast(logits, tf.float32))
    return log_probs, cache


def window_starts(lengths, window, stride):
    """(row, start) [windows] of each scoring window, row after row: a row of n >= 2 tokens
    gets 1 + ceil(max(0, n - 1 - window) / stride) windows starting every `stride`, others none."""
    counts = tf.where(lengths >= 2, 1 + (tf.maximum(0, lengths - 1 - window) + stride - 1) // stride, 0)
    rows = tf.repeat(tf.range(tf.size(lengths)), counts)
    first_of_row = tf.gather(tf.cumsum(counts, exclusive=True), rows)
    return rows, (tf.range(tf.size(rows)) - first_of_row) * stride


def windowed_log_probs(model, ids, lengths, context, stride):
    """Summed log-probs [batch] float64 over each row's own windows, run CHUNK_TOKENS at a time."""
    window = tf.clip_by_value(longest(lengths) - 1, 1, context)
    stride = tf.minimum(stride, window)
    rows, starts = window_starts(lengths, window, stride)
    offsets = tf.range(window)[None, :]

    def window_sums(begin, end):
        chunk_rows, chunk_starts = rows[begin:end], starts[begin:end]
        tokens, inside = tokens_at(ids, chunk_rows, chunk_starts[:, None] + tf.range(window + 1)[None, :])
        log_probs, _ = token_log_probs(model, tokens)
        # The first window scores all its tokens, a later one those after the previous window's.
        scored = inside[:, 1:] & ((chunk_starts[:, None] == 0) | (offsets >= window - stride))
        return tf.reduce_sum(tf.where(scored, log_probs, 0.0), axis=1)

    return sum_by_row(window_sums, rows, tf.size(lengths), tf.maximum(1, CHUNK_TOKENS // window))


def sum_by_row(item_sums, rows, num_rows, chunk):
    """Add `item_sums(begin, end)` [end - begin] into [num_rows] float64 by `rows`, `chunk` items
    per call, one call after another (so only one chunk's activations are alive at a time)."""
    count = tf.size(rows)

    def body(begin, totals):
        end = tf.minimum(begin + chunk, count)
        sums = tf.cast(item_sums(begin, end), tf.float64)
        return end, tf.tensor_scatter_nd_add(totals, rows[begin:end, None], sums)

    _, totals = tf.while_loop(lambda begin, _: begin < count, body,
                              (tf.constant(0), tf.zeros([num_rows], tf.float64)), parallel_iterations=1)
    return totals


def carried_log_probs(model, ids, lengths):
    """Summed log-probs [batch] float64 from a model without a context: it reads all rows in time
    chunks of about CHUNK_TOKENS tokens, carrying each row's cache; a chunk runs only rows with
    tokens left to score."""
    batch = tf.size(lengths)
    last_input = longest(lengths) - 1  # positions before it have a target

    def body(begin, cache, totals):
        active = tf.cast(tf.where(lengths - 1 > begin)[:, 0], tf.int32)
        end = tf.minimum(begin + tf.maximum(1, CHUNK_TOKENS // tf.size(active)), last_input)
        tokens, inside = tokens_at(ids, active, tf.range(begin, end + 1)[None, :])
        log_probs, row_cache = token_log_probs(model, tokens, model.cache_rows(cache, active), begin)
        cache = model.with_cache_rows(cache, active, row_cache)
        sums = tf.cast(tf.reduce_sum(tf.where(inside[:, 1:], log_probs, 0.0), axis=1), tf.float64)
        return end, cache, tf.tensor_scatter_nd_add(totals, active[:, None], sums)

    _, _, totals = tf.while_loop(lambda begin, *_: begin < last_input, body,
                                 (tf.constant(0), model.initial_cache(batch), tf.zeros([batch], tf.float64)),
                                 parallel_iterations=1)
    return totals


def score_strings(loaded, texts, stride):
    """{log_prob, mean_nll, perplexity, bits_per_byte, num_tokens} tensors for a 1-D string
    tensor `texts`. bits_per_byte: -log_prob in bits over the UTF-8 bytes the scored tokens (all
    but the first) decode to, so it compares runs with different tokenizers (0 with none scored)."""
    ids = loaded.tokenizer.tokenize(texts)
    log_prob, num_tokens = score_ids(loaded.model, ids, stride)
    mean_nll = 0.0 - log_prob / tf.cast(tf.maximum(num_tokens, 1), tf.float32)
    byte_lengths = tf.constant(loaded.tokenizer.byte_lengths(), tf.int32)
    target_bytes = tf.cast(tf.reduce_sum(tf.gather(byte_lengths, ids[:, 1:]), axis=1), tf.float32)
    bits_per_byte = 0.0 - log_prob / math.log(2) / tf.maximum(target_bytes, 1.0)
    return {"log_prob": log_prob, "mean_nll": mean_nll, "perplexity": tf.exp(mean_nll),
            "bits_per_byte": bits_per_byte, "num_tokens": num_tokens}


def score_function(loaded, stride):
    """The traced scorer for `stride`, shared by `score_texts` and the exported `score` signature."""
    return loaded.function(("score", stride), lambda: tf.function(
        lambda texts: score_strings(loaded, texts, stride),
        input_signature=[tf.TensorSpec([None], tf.string, name="texts")]))


def score_texts(loaded, texts, stride=None):
    """Score any number of texts, MAX_BATCH_SIZE at a time: [{text, log_prob, mean_nll, perplexity,
    bits_per_byte, num_tokens}], in order."""
    loaded.task.check_serves("score", loaded.run_dir)
    texts = check_strings(texts, "texts")
    scorer = score_function(loaded, check_stride(stride, loaded.context))
    results = []
    for begin in range(0, len(texts), MAX_BATCH_SIZE):
        batch = texts[begin:begin + MAX_BATCH_SIZE]
        scores = {k: v.numpy().tolist() for k, v in scorer(tf.constant(batch)).items()}
        results += [{"text": text, **{k: scores[k][i] for k in SCORES}} for i, text in enumerate(batch)]
    return results
