"""`python -m tflm.generate`: sample a continuation of prompts from a trained run.

Decoding is cached: the Transformer keeps each block's keys and values (keras-nlp's
TransformerDecoder `self_attention_cache`) and the LSTM carries its recurrent state, so each new
token costs one single-token model step, not a re-run over the prefix. The whole loop is one
`tf.function`, XLA-compiled in Python; the exported `generate` signature traces the same loop.

Prompts keep their last `data.seq_len` tokens; an empty prompt starts from a single padding id.
When a Transformer's sequence reaches seq_len, the window slides: its last seq_len / 2 tokens are
re-encoded into a fresh cache (one batched step) and decoding goes on from there.

Sampling: temperature 0 is greedy; otherwise logits / temperature, keeping the `top_k` most likely
tokens (0 = all) and then the smallest set whose probability reaches `top_p` (1 = all). Draws use
stateless random ops seeded by (seed, position), so a seed gives the same text in Python and
from the SavedModel. The padding id is never sampled.

keras-nlp's samplers are not used: they take temperature, k, p and the seed as Python constants
when constructed, so an exported signature whose temperature and top_k arrive with each request
would need one traced graph per value, and their seeded draws go through a Keras SeedGenerator
variable. The loop below uses core TF ops (tf.sort, tf.random.stateless_categorical) only.
"""

import argparse
import math
import numbers
import random
import sys

from tflm.errors import TflmError, exit_on_user_error
from tflm.inference import check_strings, load_run
from tflm.lazy import tf
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.tokenizer import PAD_ID

MAX_NEW_TOKENS = 1024  # the most tokens one request may ask for (Python and the SavedModel)
LENGTH_BUCKET = 64  # Python pads the token buffer to a multiple of this (one XLA program each)
MAX_SEED = 2**31 - 1  # seeds are 0..MAX_SEED (int32, as the SavedModel takes them)
MASKED = -math.inf  # logit of a token that must not be drawn


def prepare_prompts(ids, context):
    """Ragged prompt ids -> (tokens [batch, longest] right-padded with 0, lengths [batch]).

    Each prompt keeps its last `context` tokens; an empty prompt becomes one padding id.
    """
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    keep = tf.minimum(lengths, context)
    positions = tf.ragged.range(lengths - keep, lengths)
    ids = tf.gather(ids, positions, batch_dims=1)
    tokens = ids.to_tensor(default_value=PAD_ID)
    tokens = tf.pad(tokens, [[0, 0], [0, tf.maximum(0, 1 - tf.shape(tokens)[1])]])
    return tokens, tf.maximum(keep, 1)


def sample(logits, temperature, top_k, top_p, seed, position):
    """Next token ids [batch] from float32 logits [batch, vocab] (see the module docstring)."""
    vocab = tf.shape(logits)[1]
    is_padding = tf.range(vocab)[None, :] == PAD_ID

    def draw():
        # Masked after scaling: a huge temperature would bring a masked logit back to the others.
        scaled = tf.where(is_padding, MASKED, logits / tf.maximum(temperature, 1e-6))
        k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
        kth_largest = tf.gather(tf.sort(scaled, direction="DESCENDING"), k - 1, axis=1)
        scaled = tf.where(scaled < kth_largest[:, None], MASKED, scaled)
        ranked = tf.sort(scaled, direction="DESCENDING")
        mass_before = tf.math.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)
        smallest_kept = tf.reduce_min(tf.where(mass_before < top_p, ranked, -MASKED), axis=-1)
        scaled = tf.where(scaled < smallest_kept[:, None], MASKED, scaled)
        return tf.random.stateless_categorical(scaled, 1, seed=tf.stack([seed, position]), dtype=tf.int32)[:, 0]

    # Greedy requests skip the sorting (a third of a graph-mode step for a small model).
    return tf.cond(temperature > 0, draw,
                   lambda: tf.argmax(tf.where(is_padding, MASKED, logits), axis=-1, output_type=tf.int32))


def column(tokens, q):
    """tokens[:, q:q + 1] for a tensor q. (Inside an XLA while loop, TF 2.21 compiles that
    strided slice to wrong values; a gather is exact.)"""
    return tf.gather(tokens, q[None], axis=1)


class TransformerSteps:
    """One Transformer step: logits for position q + 1 from tokens up to q, cached or not.

    State: (cache, offset), the cache holding tokens[offset:] at indices 0.... Uncached steps
    keep the same window (and slide it at the same moment) but re-run the model over all of it,
    so the two give the same tokens; the uncached one is the reference and the benchmark baseline.
    """

    def __init__(self, model, cached):
        self.model, self.cached = model, cached
        self.context, self.kept = model.seq_len, max(1, model.seq_len // 2)

    def initial_state(self, batch):
        return (self.model.initial_cache(batch) if self.cached else tf.zeros([]), tf.constant(0))

    def step(self, tokens, q, state):
        cache, offset = state
        full = q - offset >= self.context
        if not self.cached:
            offset = tf.where(full, q + 1 - self.kept, offset)
            return self.model(tokens[:, offset:q + 1], training=False)[:, -1], (cache, offset)

        def slide():
            window = tf.gather(tokens, q + 1 - self.kept + tf.range(self.kept), axis=1)
            logits, new_cache = self.model.call_with_cache(window, cache, 0)
            return logits[:, -1], new_cache, q + 1 - self.kept

        def extend():
            logits, new_cache = self.model.call_with_cache(column(tokens, q), cache, q - offset)
            return logits[:, -1], new_cache, offset

        logits, cache, offset = tf.cond(full, slide, extend)
        return logits, (cache, offset)


class LstmSteps:
    """One LSTM step: feed token q to the carried state, or (uncached) re-run tokens[:q + 1]."""

    def __init__(self, model, cached):
        self.model, self.cached = model, cached

    def initial_state(self, batch):
        return self.model.initial_cache(batch) if self.cached else tf.zeros([])

    def step(self, tokens, q, state):
        if not self.cached:
            return self.model(tokens[:, :q + 1], training=False)[:, -1], state
        logits, state = self.model.call_with_cache(column(tokens, q), state)
        return logits[:, -1], state


def decode(model, tokens, lengths, end, temperature, top_k, top_p, seed, cached=True):
    """Fill positions lengths[b] to `end` - 1 of `tokens` [batch, >= end] (prompts right-padded).

    All rows advance together, one position per step from position 1: a row still inside its
    prompt keeps its prompt token, the others get a sampled one. Returns the filled tokens.
    """
    steps = TransformerSteps(model, cached) if model.context is not None else LstmSteps(model, cached)
    total = tf.shape(tokens)[1]
    columns = tf.range(total)[None, :]

    def body(position, tokens, state):
        logits, state = steps.step(tokens, position - 1, state)
        drawn = sample(tf.cast(logits, tf.float32), temperature, top_k, top_p, seed, position)
        chosen = tf.where(position < lengths, tf.gather(tokens, position, axis=1), drawn)
        return position + 1, tf.where(columns == position, chosen[:, None], tokens), state

    _, tokens, _ = tf.while_loop(lambda position, *_: position < end, body,
                                 (tf.constant(1), tokens, steps.initial_state(tf.shape(tokens)[0])))
    return tokens


def completions(tokens, lengths, max_new_tokens):
    """The `max_new_tokens` ids after each row's prompt: [batch, max_new_tokens]."""
    return tf.gather(tokens, lengths[:, None] + tf.range(max_new_tokens)[None, :], batch_dims=1)


def generate_strings(loaded, prompts, max_new_tokens, temperature, top_k, top_p, seed):
    """Completion strings for a 1-D string tensor `prompts`, in graph (the exported signature)."""
    tokens, lengths = prepare_prompts(loaded.tokenizer.tokenize(prompts), loaded.context)
    end = tf.reduce_max(lengths) + max_new_tokens
    tokens = tf.pad(tokens, [[0, 0], [0, end - tf.shape(tokens)[1]]])
    tokens = decode(loaded.model, tokens, lengths, end, temperature, top_k, top_p, seed)
    return loaded.tokenizer.detokenize(completions(tokens, lengths, max_new_tokens))


def check_sampling(max_new_tokens, temperature, top_k, top_p, seed):
    """Raise a TflmError naming the first impossible sampling argument."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise TflmError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise TflmError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise TflmError(f"top_k must be an integer >= 0 (0 = no limit), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise TflmError(f"top_p must be in (0, 1] (1 = no limit), got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed <= MAX_SEED):
        raise TflmError(f"seed must be an integer from 0 to {MAX_SEED} (2**31 - 1), got {seed!r}")


def decode_function(loaded, cached, jit_compile):
    """The compiled decoding loop: traced once with unknown shapes; XLA compiles one program per
    batch size and buffer length (a multiple of LENGTH_BUCKET)."""
    return loaded.function(("decode", cached, jit_compile), lambda: tf.function(
        lambda tokens, lengths, end, temperature, top_k, top_p, seed: decode(
            loaded.model, tokens, lengths, end, temperature, top_k, top_p, seed, cached),
        jit_compile=jit_compile, reduce_retracing=True))


def generate_ids(loaded, prompts, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                 cached=True, jit_compile=None):
    """Completion ids [batch, max_new_tokens] (numpy) for a list of prompt strings.

    `cached=False` re-runs the model over the whole window at each step (the reference and the
    benchmark's baseline); XLA (`jit_compile`, default: when cached) needs the cached loop's
    fixed shapes.
    """
    prompts = check_strings(prompts, "prompts")
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if not prompts:
        raise TflmError("give at least one prompt")
    seed = random.randint(0, MAX_SEED) if seed is None else int(seed)
    tokens, lengths = prepare_prompts(loaded.tokenizer.tokenize(tf.constant(prompts)), loaded.context)
    end = int(tf.reduce_max(lengths)) + max_new_tokens
    padded = -(-end // LENGTH_BUCKET) * LENGTH_BUCKET  # fewer shapes, fewer XLA compilations
    tokens = tf.pad(tokens, [[0, 0], [0, padded - tokens.shape[1]]])
    decode_loop = decode_function(loaded, cached, cached if jit_compile is None else jit_compile)
    tokens = decode_loop(tokens, lengths, tf.constant(end), tf.constant(float(temperature)), tf.constant(top_k),
                         tf.constant(float(top_p)), tf.constant(seed))
    return completions(tokens, lengths, max_new_tokens).numpy()


def generate(loaded, prompts, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None):
    """Completions (the new text only) of each prompt; greedy when temperature is 0."""
    ids = generate_ids(loaded, prompts, max_new_tokens, temperature, top_k, top_p, seed)
    return [text.decode("utf-8") for text in loaded.tokenizer.detokenize(ids).numpy()]


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--prompt", action="append", default=[], help="text to continue (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help=f"1 to {MAX_NEW_TOKENS}")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy, < 1 less random, > 1 more random")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
    parser.add_argument("--seed", type=int, help=f"0 to {MAX_SEED}, for reproducible samples (default: random)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.generate`: prints prompt + completion for each prompt."""
    args = parse_args(argv)
    prompts = args.prompt or [""]
    outputs = generate(load_run(args.run_dir), prompts, args.max_new_tokens, args.temperature,
                       args.top_k, args.top_p, args.seed)
    for prompt, completion in zip(prompts, outputs):
        print(prompt + completion, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
