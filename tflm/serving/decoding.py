"""Sampling continuations of prompts from a trained run: the library half of `python -m tflm.generate`
(tflm/generate.py) and of the exported `generate` signature.

Decoding goes through the model's decoding interface (tflm/models/build.py), so the sampler never
asks which model it has. The prompts go through the model in one `call_with_cache` call (a batched
prefill: each row keeps its own positions, so prompts of different lengths need no token-by-token
start), then each new token costs one single-token step on the model's cache (the Transformer's
keys and values, the LSTM's recurrent state), not a re-run over the prefix. The loop is one
`tf.function` (`decode_function`), traced once: its inputs are tensors of any batch size and
width. Python runs it XLA-compiled; the export traces it into two signatures, `generate` without
XLA (what stock TF Serving runs) and `generate_xla` XLA-compiled (3 to 8x faster on CPU; TF
Serving runs it only when started with --xla_cpu_compilation_enabled=true). A row's greedy
completion does not depend on the rest of its batch.

Prompts keep their last `data.seq_len` tokens; an empty prompt starts from a single padding id.
`model.context` alone decides whether the window slides: when a row of a model with a context (the
Transformer's seq_len) fills it, that row's last context / 2 tokens go through the model again
from position 0 (in the same call in which the other rows take their next token) and decoding
goes on; the LSTM's state carries any length.

Sampling: temperature 0 is greedy; otherwise logits / temperature, keeping the `top_k` most likely
tokens (0 = all; tokens tied with the k-th stay) and then the smallest set of the most likely whose
probability reaches `top_p` (1 = all; tokens tied with the last one kept stay), so the set never
depends on the order of the vocabulary. Without top_k and top_p nothing is sorted. Draws are
Gumbel-max over uniforms hashed from (seed, number of the new token, row, token), integer
arithmetic that XLA and TensorFlow compute alike, so a seed gives the same text in Python and from
the SavedModel. The padding id is never sampled.

Stop string: a row's completion ends before the first occurrence of `stop` in it ("" = none), and
decoding ends as soon as every row has met it.

keras-nlp's samplers are not used: they take temperature, k, p and the seed as Python constants
when constructed, so an exported signature whose temperature and top_k arrive with each request
would need one traced graph per value, and their seeded draws go through a Keras SeedGenerator
variable. The loop below uses core TF ops only.
"""

import math
import numbers
import random

from tflm.data.tokenizers import PAD_ID
from tflm.errors import TflmError
from tflm.lazy import LazyModule, tf
from tflm.serving.inputs import check_strings

# Imported when decoding starts (they load TensorFlow and Keras):
randomness = LazyModule("tflm.models.randomness")
scatter = LazyModule("tflm.models.scatter")

MAX_NEW_TOKENS = 1024  # the most tokens one request may ask for (Python and the SavedModel)
LENGTH_BUCKET = 64  # under XLA prompts are padded to a multiple of this (one XLA program each)
STOP_BUCKET = 16  # ... and stop strings' token ids to a multiple of this
MAX_SEED = 2**31 - 1  # seeds are 0..MAX_SEED (int32, as the SavedModel takes them)
MASKED = -math.inf  # logit of a token that must not be drawn
SAMPLING_SITE = 0x5A4D1E  # the sampler's stream of tflm.models.randomness.example_uniforms (dropout has its own)


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


def sample(logits, temperature, top_k, top_p, seed, step):
    """Next token ids [batch] from float32 logits [batch, vocab] (see the module docstring):
    greedy when temperature is 0, else a draw from the filtered softmax (Gumbel-max)."""
    allowed = tf.where(tf.range(tf.shape(logits)[1]) != PAD_ID, logits, MASKED)

    def draw():
        # Masked before scaling, with -inf: a huge temperature cannot bring a masked logit back.
        scaled = allowed / tf.maximum(temperature, 1e-6)
        filtering = ((top_k > 0) & (top_k < tf.shape(logits)[1])) | (top_p < 1)
        scaled = tf.cond(filtering, lambda: keep_top_k_top_p(scaled, top_k, top_p), lambda: scaled)
        return tf.argmax(scaled + gumbel_noise(seed, step, tf.shape(logits)[0], logits.shape[1]), axis=-1,
                         output_type=tf.int32)

    return tf.cond(temperature > 0, draw, lambda: tf.argmax(allowed, axis=-1, output_type=tf.int32))


def gumbel_noise(seed, step, batch, vocab):
    """-log(-log(U)) [batch, vocab] for uniforms U that are a pure function of (seed, step, row,
    token), from integer hashing (tflm.models.randomness.example_uniforms): TensorFlow's random kernels and
    XLA's draw different numbers from one seed, so Python (XLA) and the SavedModel would not agree."""
    rows = tf.range(tf.cast(batch, tf.int64))
    ids = (tf.cast(seed, tf.int64) * MAX_NEW_TOKENS + tf.cast(step, tf.int64)) * 2**22 + rows  # rows < 2**22
    return -tf.math.log(-tf.math.log(randomness.example_uniforms(0, SAMPLING_SITE, ids, [vocab])))


def keep_top_k_top_p(scaled, top_k, top_p):
    """`scaled` logits with every token outside the top_k, then outside the top_p mass, MASKED
    (ties with the last token kept stay); one sort."""
    vocab = tf.shape(scaled)[1]
    ranked = tf.sort(scaled, axis=-1, direction="DESCENDING")
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    ranked = tf.where(ranked < tf.gather(ranked, [k - 1], axis=1), MASKED, ranked)  # still sorted
    mass_before = tf.math.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)
    # A token stays while the mass before it is under top_p, less 1e-6 for float32 rounding: a
    # top_p that lands on a cumulative boundary keeps the set that reaches it, not one more.
    inside = ((mass_before < top_p - 1e-6) | (top_p >= 1) | (tf.range(vocab) == 0)) & (ranked > MASKED)
    smallest_kept = tf.reduce_min(tf.where(inside, ranked, -MASKED), axis=-1, keepdims=True)
    return tf.where(scaled < smallest_kept, MASKED, scaled)


def stop_pattern(tokenizer, stop):
    """The token ids whose texts spell the scalar string `stop`, one per character ([chars]; -1,
    which is never drawn, for a character no id produces), and how many of them a match needs
    (0 for "" and for a stop longer than MAX_NEW_TOKENS, which no completion can hold)."""
    characters = tf.strings.unicode_split(stop, "UTF-8", errors="replace")
    ids = tokenizer.tokenize(stop)
    ids = tf.where(tokenizer.detokenize(ids[:, None]) == characters, ids, -1)[:MAX_NEW_TOKENS]
    length = tf.size(characters)
    return ids, tf.where(length <= MAX_NEW_TOKENS, length, 0)


def meets_stop(completions, step, stop_ids, stop_length):
    """Whether each row's completion, up to and including token `step`, ends with the last
    `stop_length` of `stop_ids` (never when stop_length is 0)."""
    width = tf.size(stop_ids)
    recent = tf.gather(completions, tf.maximum(step + 1 - width + tf.range(width), 0), axis=1)
    matches = (recent == stop_ids) | (tf.range(width) < width - stop_length)
    return tf.reduce_all(matches, axis=1) & (stop_length > 0) & (step + 1 >= stop_length)


def completion_texts(tokenizer, ids, stop):
    """Detokenized completion ids [batch, time], each cut before its first `stop` ("" = no cut)."""
    texts = tokenizer.detokenize(ids)
    before_stop = tf.strings.split(texts, sep=stop, maxsplit=1).to_tensor("", shape=[None, 1])[:, 0]
    return tf.where(stop == "", texts, before_stop)


class CachedSteps:
    """Decoding on the model's cache: a call feeds each row some tokens, the rest is the cache's."""

    def __init__(self, model):
        self.model = model

    def initial_state(self, batch):
        """The model's empty decoding cache for `batch` rows."""
        return self.model.initial_cache(batch)

    def feed(self, tokens, index, lengths, cache):
        """Logits [batch, vocab] after tokens[b, :lengths[b]] (all of them when `lengths` is None)
        placed at positions index[b]... of each row, and the cache with them."""
        logits, cache = self.model.call_with_cache(tokens, cache, index, lengths)
        return last_logits(logits, lengths), cache


class RecomputedSteps:
    """No cache: each feed re-runs the model over each row's whole window (of at most `capacity`
    tokens). The reference that tests hold cached decoding to, and the benchmark's baseline."""

    def __init__(self, model, capacity):
        self.model, self.capacity = model, capacity

    def initial_state(self, batch):
        """The windows' tokens [batch, capacity], and a spare last column where padding goes."""
        return tf.zeros([batch, self.capacity + 1], tf.int32)

    def feed(self, tokens, index, lengths, window):
        """As CachedSteps.feed."""
        time = tf.shape(tokens)[1]
        if lengths is None:
            lengths = tf.fill(tf.shape(index), time)
        real = tf.range(time)[None, :] < lengths[:, None]
        columns = tf.where(real, index[:, None] + tf.range(time)[None, :], self.capacity)
        rows = tf.broadcast_to(tf.range(tf.shape(tokens)[0])[:, None], tf.shape(tokens))
        window = scatter.scatter_update(window, tf.stack([rows, columns], axis=-1), tf.where(real, tokens, 0))
        ends = index + lengths  # causal: tokens after a row's end do not change its logits
        return last_logits(self.model(window[:, :tf.reduce_max(ends)], training=False), ends), window


def last_logits(logits, lengths):
    """float32 logits [batch, vocab] at position lengths[b] - 1 of `logits` [batch, time, vocab]
    (the last position when `lengths` is None)."""
    if lengths is None:
        return tf.cast(logits[:, -1], tf.float32)
    return tf.cast(tf.gather(logits, lengths - 1, batch_dims=1), tf.float32)


def decode(model, prompts, lengths, max_new_tokens, sampling, stop, cached=True):
    """Completion ids [batch, MAX_NEW_TOKENS] for the prompts in `prompts` [batch, width] (row b's
    first lengths[b] ids, right-padded): the first `max_new_tokens` columns are drawn, except
    that a row's ids after it met the stop string are PAD_ID, and decoding ends once every row has.

    `sampling` is (temperature, top_k, top_p, seed) and `stop` is (ids, length) from
    `stop_pattern`. A row restarts its window when it holds model.context tokens (see the module
    docstring); `cached=False` runs the same loop without a cache (RecomputedSteps).
    """
    batch, width = tf.shape(prompts)[0], tf.shape(prompts)[1]
    context = model.context
    steps = CachedSteps(model) if cached else RecomputedSteps(model, context or width + MAX_NEW_TOKENS)
    kept = None if context is None else max(1, context // 2)

    def draw(i, completions, logits, stopped):
        """Token i of every row, written into `completions`; which rows have met the stop string."""
        token = sample(logits, *sampling, i)
        completions = put(completions, i, tf.where(stopped, PAD_ID, token))
        return token, completions, stopped | meets_stop(completions, i, *stop)

    def step(i, completions, logits, state, filled, stopped):
        """Draw token i and feed it to the model."""
        token, completions, stopped = draw(i, completions, logits, stopped)
        logits, state = steps.feed(token[:, None], filled, None, state)
        return i + 1, completions, logits, state, filled + 1, stopped

    def slide(i, completions, logits, state, filled, stopped):
        """As `step`, but a row whose window is full feeds its last `kept` tokens from position 0."""
        token, completions, stopped = draw(i, completions, logits, stopped)
        full = filled >= context
        tokens = tf.where(full[:, None], last_tokens(prompts, lengths, completions, i + 1, kept),
                          tf.pad(token[:, None], [[0, 0], [0, kept - 1]]))
        logits, state = steps.feed(tokens, tf.where(full, 0, filled), tf.where(full, kept, 1), state)
        return i + 1, completions, logits, state, tf.where(full, kept, filled + 1), stopped

    def running(i, stopped):
        return (i < max_new_tokens) & ~tf.reduce_all(stopped)

    def steps_until(end, loop):
        """`step` until token `end` or until every row met the stop string: two steps per turn
        of the loop (without XLA each turn costs ops for every value the loop carries), then the
        one that may be left."""
        loop = tf.while_loop(lambda i, *rest: running(i, rest[-1]) & (i + 1 < end), lambda *v: step(*step(*v)), loop)
        return tf.while_loop(lambda i, *rest: running(i, rest[-1]) & (i < end), step, loop)

    def until_full(*loop):
        """Steps while every row's window has room, then one `slide`."""
        i, filled = loop[0], loop[4]
        loop = steps_until(tf.minimum(max_new_tokens, i + context - tf.reduce_max(filled)), loop)
        return tf.cond(running(loop[0], loop[-1]), lambda: slide(*loop), lambda: loop)

    logits, state = steps.feed(prompts, tf.zeros([batch], tf.int32), lengths, steps.initial_state(batch))
    loop = (tf.constant(0), tf.fill([batch, MAX_NEW_TOKENS], PAD_ID), logits, state, lengths,
            tf.zeros([batch], tf.bool))
    if context is None:
        return steps_until(max_new_tokens, loop)[1]
    return tf.while_loop(lambda i, *rest: running(i, rest[-1]), until_full, loop)[1]


def last_tokens(prompts, lengths, completions, count, n):
    """The last `n` tokens [batch, n] of each row's prompt and its first `count` completion tokens
    (positions before the start come out clipped: callers use only rows that hold n tokens)."""
    positions = lengths[:, None] + count - n + tf.range(n)[None, :]
    from_prompt = tf.gather(prompts, tf.clip_by_value(positions, 0, tf.shape(prompts)[1] - 1), batch_dims=1)
    from_completion = tf.gather(completions, tf.maximum(positions - lengths[:, None], 0), batch_dims=1)
    return tf.where(positions < lengths[:, None], from_prompt, from_completion)


def put(tokens, column, values):
    """`tokens` [batch, time] with values[b] at `column` of each row, in place where the runtime can."""
    rows = tf.range(tf.shape(tokens)[0])
    return scatter.scatter_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), column)], axis=1), values)


def generate_strings(loaded, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, jit_compile=False):
    """Completion strings for a 1-D string tensor `prompts`, in graph (the exported signatures
    `generate` and, with `jit_compile`, `generate_xla`)."""
    tokens, lengths = prepare_prompts(loaded.tokenizer.tokenize(prompts), loaded.context)
    ids = decode_ids(loaded, tokens, lengths, max_new_tokens, (temperature, top_k, top_p, seed),
                     stop_pattern(loaded.tokenizer, stop), jit_compile=jit_compile)
    return completion_texts(loaded.tokenizer, ids[:, :max_new_tokens], stop)


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
    """The decoding loop as one tf.function, traced once (its input signature takes any batch,
    prompt width and stop width, all as tensors); XLA compiles one program per batch size, prompt
    width and stop width, which `decode_ids` buckets."""
    signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)] + [
        tf.TensorSpec([], dtype) for dtype in (tf.int32, tf.float32, tf.int32, tf.float32, tf.int32)] + [
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)]
    return loaded.function(("decode", cached, jit_compile), lambda: tf.function(
        lambda prompts, lengths, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, stop_length: decode(
            loaded.model, prompts, lengths, max_new_tokens, (temperature, top_k, top_p, seed),
            (stop_ids, stop_length), cached),
        input_signature=signature, jit_compile=jit_compile))


def decode_ids(loaded, tokens, lengths, max_new_tokens, sampling, stop, cached=True, jit_compile=False):
    """`decode` through `decode_function`, eagerly or in graph; under XLA the prompt and stop
    widths are bucketed (LENGTH_BUCKET, STOP_BUCKET), so few shapes compile."""
    if jit_compile:
        tokens, stop = bucketed(tokens, LENGTH_BUCKET, loaded.context), (bucketed(stop[0], STOP_BUCKET), stop[1])
    return decode_function(loaded, cached, jit_compile)(tokens, lengths, max_new_tokens, *sampling, *stop)


def bucketed(tensor, bucket, limit=None):
    """`tensor` padded along its last axis to a multiple of `bucket` (at most `limit`, which a
    prompt's width never exceeds): PAD_ID at the end of a 2-D tensor, -1 in front of a 1-D one."""
    size = tf.shape(tensor)[-1]
    target = (size + bucket - 1) // bucket * bucket
    target = target if limit is None else tf.minimum(target, limit)
    if tensor.shape.rank == 1:
        return tf.pad(tensor, [[target - size, 0]], constant_values=-1)
    return tf.pad(tensor, [[0, 0], [0, target - size]], constant_values=PAD_ID)


def request_function(loaded):
    """Prompt strings [batch] and a stop string -> (prompt tokens, their lengths, stop ids, stop
    length) for `decode`, as one tf.function traced once (eagerly its ops cost more than decoding
    a few dozen tokens)."""
    return loaded.function("request", lambda: tf.function(
        lambda prompts, stop: (*prepare_prompts(loaded.tokenizer.tokenize(prompts), loaded.context),
                               *stop_pattern(loaded.tokenizer, stop)),
        input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.string)]))


def generate_ids(loaded, prompts, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None, stop="",
                 cached=True, jit_compile=None):
    """Completion ids [batch, max_new_tokens] (numpy) for a list of prompt strings; PAD_ID after
    decoding ended early, once every row met `stop`.

    `cached=False` re-runs the model over the whole window at each step (the reference and the
    benchmark's baseline); XLA (`jit_compile`, default: when cached) needs the cached loop's
    fixed shapes.
    """
    loaded.task.check_serves("generate", loaded.run_dir)
    prompts = check_strings(prompts, "prompts")
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    check_strings([stop], "stop")
    if not prompts:
        raise TflmError("give at least one prompt")
    seed = random.randint(0, MAX_SEED) if seed is None else int(seed)
    tokens, lengths, stop_ids, stop_length = request_function(loaded)(tf.constant(prompts), tf.constant(stop))
    sampling = (tf.constant(float(temperature)), tf.constant(top_k), tf.constant(float(top_p)), tf.constant(seed))
    jit_compile = cached if jit_compile is None else jit_compile
    ids = decode_ids(loaded, tokens, lengths, tf.constant(max_new_tokens), sampling, (stop_ids, stop_length), cached,
                     jit_compile)
    return ids[:, :max_new_tokens].numpy()


def generate(loaded, prompts, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None, stop=""):
    """Completions (the new text only) of each prompt, each ending before its first `stop` (""
    = none); greedy when temperature is 0."""
    ids = generate_ids(loaded, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop)
    texts = completion_texts(loaded.tokenizer, ids, tf.constant(stop))
    return [text.decode("utf-8") for text in texts.numpy()]
