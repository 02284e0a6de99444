"""`python -m tflm.score`: the log-probability of texts under a trained run.

    score(S) = sum over i >= 1 of log P(t_i | t_<i)

The first token has nothing to be conditioned on, so a text of n tokens scores n - 1 of them
(`num_tokens`); an empty or one-character text scores log_prob 0, mean_nll 0, perplexity 1.
The LSTM reads each text in one pass. The Transformer sees at most `data.seq_len` tokens, so a
longer text is scored in windows of seq_len that start every `stride` tokens: the first window
scores all its tokens, each later one only the last `stride` (those no window scored yet), so
every token is conditioned on at least seq_len - stride earlier tokens (all of them near the
start). stride = seq_len is plain chunking; stride = 1 gives every token a full context.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tflm.errors import TflmError, exit_on_user_error  # noqa: E402
from tflm.inference import check_strings, load_run, read_texts  # noqa: E402


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


def score_ids(model, ids, context, stride):
    """(log_prob [batch] float32, num_tokens [batch] int32) for ragged int32 `ids` [batch, None].

    `context` None reads each row in one pass (LSTM); otherwise windows of at most `context`
    tokens start every `stride` tokens (see the module docstring). Core TF ops only.
    """
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    tokens = ids.to_tensor(default_value=0)
    tokens = tf.pad(tokens, [[0, 0], [0, tf.maximum(0, 2 - tf.shape(tokens)[1])]])
    total = tf.shape(tokens)[1]
    window = total - 1 if context is None else tf.minimum(context, total - 1)
    stride = window if context is None else tf.minimum(stride, window)
    num_windows = 1 + (tf.maximum(0, total - 1 - window) + stride - 1) // stride
    padded = (num_windows - 1) * stride + window + 1
    tokens = tf.pad(tokens, [[0, 0], [0, padded - total]])

    starts = tf.range(num_windows) * stride
    offsets = tf.range(window)
    indices = starts[:, None] + tf.range(window + 1)[None, :]  # [windows, window + 1]
    windows = tf.reshape(tf.gather(tokens, indices, axis=1), [-1, window + 1])
    logits = model(windows[:, :-1], training=False)
    token_log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=windows[:, 1:], logits=tf.cast(logits, tf.float32))
    token_log_probs = tf.reshape(token_log_probs, [-1, num_windows, window])

    target_positions = starts[:, None] + offsets[None, :] + 1  # [windows, window]
    first_scoring = (tf.range(num_windows)[:, None] == 0) | (offsets[None, :] >= window - stride)
    scored = first_scoring[None] & (target_positions[None] < lengths[:, None, None])
    log_prob = tf.reduce_sum(tf.where(scored, token_log_probs, 0.0), axis=[1, 2])
    return log_prob, tf.maximum(lengths - 1, 0)


def score_strings(loaded, texts, stride):
    """{log_prob, mean_nll, perplexity, num_tokens} tensors for a 1-D string tensor `texts`."""
    context = loaded.context if loaded.model_type == "transformer" else None
    log_prob, num_tokens = score_ids(loaded.model, loaded.tokenizer.tokenize(texts), context, stride)
    mean_nll = 0.0 - log_prob / tf.cast(tf.maximum(num_tokens, 1), tf.float32)
    return {"log_prob": log_prob, "mean_nll": mean_nll, "perplexity": tf.exp(mean_nll),
            "num_tokens": num_tokens}


def score_function(loaded, stride):
    """The traced scorer for `stride`, shared by `score_texts` and the exported `score` signature."""
    return loaded.function(("score", stride), lambda: tf.function(
        lambda texts: score_strings(loaded, texts, stride),
        input_signature=[tf.TensorSpec([None], tf.string, name="texts")]))


def score_texts(loaded, texts, stride=None):
    """Score each text: [{text, log_prob, mean_nll, perplexity, num_tokens}], in order."""
    texts = check_strings(texts, "texts")
    stride = check_stride(stride, loaded.context)
    if not texts:
        return []
    results = {k: v.numpy().tolist() for k, v in score_function(loaded, stride)(tf.constant(texts)).items()}
    return [{"text": text, **{k: results[k][i] for k in ("log_prob", "mean_nll", "perplexity", "num_tokens")}}
            for i, text in enumerate(texts)]


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.score", description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to score")
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--file", help="also score each line of this UTF-8 file ('-' = stdin)")
    parser.add_argument("--stride", type=int, help="Transformer window stride (default: seq_len / 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.score`."""
    args = parse_args(argv)
    texts = read_texts(args.texts, args.file)
    for result in score_texts(load_run(args.run_dir), texts, args.stride):
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"log_prob {result['log_prob']:.4f}  mean_nll {result['mean_nll']:.4f}  "
                  f"perplexity {result['perplexity']:.3f}  tokens {result['num_tokens']}  {result['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
