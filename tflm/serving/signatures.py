"""The kinds of signature an export can have, each described once (`KINDS`):

    logits    token_ids int32 [batch, time] -> logits float32 [batch, vocab] (the next token's)
    score     texts string [batch] -> log_prob, mean_nll, perplexity, bits_per_byte float32 [batch],
              num_tokens int32 [batch]
    generate  prompts string [batch], max_new_tokens, temperature, top_k, seed (scalars), and
              optionally top_p (default 1.0) and stop (default "") -> completions string [batch]
    generate_xla  the same, its decoding loop XLA-compiled: 3 to 8x faster on CPU, but TF Serving
              runs it only when started with --xla_cpu_compilation_enabled=true (without it a
              request fails); each new batch size, prompt width (a multiple of 64) and stop width
              (of 16) compiles once, seconds each, then runs at the speed of tflm.generate
    classify  texts string [batch] -> labels string [batch], label_ids int32 [batch],
              probabilities float32 [batch, classes]

A run's task names the signatures its export has and their kinds (`task.signatures`: a language
model's serving_default is logits, then score and generate; a classifier's classify and
serving_default are both classify); a signature of kind generate comes with its XLA twin,
NAME_xla (`XLA_TWINS`), so one export serves stock TF Serving and the faster XLA-enabled one. A
`Kind` holds its inputs (optional ones with the default
TF Serving fills in), its outputs, its request limits (the checks, and how tflm_export.json lists
them), its warmup request, the section it adds to tflm_export.json and the function it serves;
tflm.serving.export derives the SavedModel's signatures and tflm_export.json from it, and
tflm.serving.warmup the warmup file. A new kind is one `Kind` here, named by the task exporting it.

Every request is checked before any work is done: each input is available only once all of its
kind's checks have passed, and a failed one is INVALID_ARGUMENT naming the limit. The functions
trace the code tflm's Python API runs (tflm.serving.scoring, decoding, reading, classifying),
with core TensorFlow ops only (and the tokenizer's).
"""

import dataclasses
from typing import Callable, Optional

from tflm.data.tokenizers import INT32_MAX
from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.serving.classifying import classify_strings
from tflm.serving.decoding import MAX_NEW_TOKENS, MAX_SEED, generate_strings
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS
from tflm.serving.reading import next_token_logits
from tflm.serving.scoring import score_strings


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request to an exported signature may hold; a request costs in proportion to its
    characters (README: Export for TF Serving), so they are counted per request."""

    max_batch_size: int = MAX_BATCH_SIZE  # texts, prompts or token_ids rows
    max_request_chars: int = MAX_REQUEST_CHARS  # characters of all texts or prompts, token ids of all rows

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT32_MAX:
                raise TflmError(f"{name} must be an integer from 1 to {INT32_MAX}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a signature; a request may leave it out if it has a default."""

    name: str
    dtype: str  # "int32", "float32" or "string"
    shape: tuple  # () for a scalar, None for a dimension of any size
    default: object = None  # None: every request must send it


@dataclasses.dataclass(frozen=True)
class Kind:
    """Everything about one kind of signature. `loaded` is the LoadedRun; `inputs` is
    {input name: tensor} with every input, defaults filled in."""

    inputs: tuple  # Input, required ones first
    outputs: dict  # {name: (dtype, shape)}
    serve: Callable  # (loaded, inputs, stride) -> {output name: tensor}, on checked inputs
    checks: Callable  # (loaded, inputs, limits) -> [assertion]: the request limits
    limits: Callable  # (loaded, limits) -> what tflm_export.json's "limits" says of them
    warmup: Callable  # (sample text, its token ids) -> {input name: python value}: one valid request
    section: Optional[Callable] = None  # (loaded, stride) -> tflm_export.json's entry named after the kind
    tf_serving_flags: tuple = ()  # what TF Serving must be started with to run it (no warmup request then)


def text_checks(texts, name, limits):
    """Assertions that the 1-D string tensor `texts` is within `limits` and valid UTF-8."""
    characters = tf.reduce_sum(tf.cast(tf.strings.length(texts, unit="UTF8_CHAR"), tf.int64))
    return [
        tf.debugging.assert_less_equal(tf.size(texts), limits.max_batch_size,
                                       message=f"at most {limits.max_batch_size} {name} per request"),
        tf.debugging.assert_less_equal(characters, tf.constant(limits.max_request_chars, tf.int64),
                                       message=f"at most {limits.max_request_chars} characters of {name} per request"),
        # As tflm's command line and Python API refuse it, rather than decode it with replacement.
        tf.debugging.assert_equal(tf.reduce_all(is_utf8(texts)), True, message=f"{name} must be valid UTF-8"),
    ]


def is_utf8(texts):
    """Whether each string of `texts` is valid UTF-8 (transcoding it replaces nothing)."""
    return tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace") == texts


def texts_checks(loaded, inputs, limits):
    """The limits of a request of `texts`."""
    return text_checks(inputs["texts"], "texts", limits)


def texts_limits(loaded, limits):
    """How tflm_export.json lists the limits of a request of `texts`."""
    return {"max_texts": limits.max_batch_size, "max_chars_per_request": limits.max_request_chars,
            "texts": "valid UTF-8"}


def logits_checks(loaded, inputs, limits):
    """The limits of a request of token_ids rows."""
    token_ids, vocabulary_size = inputs["token_ids"], loaded.tokenizer.vocabulary_size
    return [
        tf.debugging.assert_less_equal(tf.shape(token_ids)[0], limits.max_batch_size,
                                       message=f"at most {limits.max_batch_size} rows of token_ids per request"),
        tf.debugging.assert_less_equal(tf.size(token_ids, tf.int64), tf.constant(limits.max_request_chars, tf.int64),
                                       message=f"at most {limits.max_request_chars} token_ids per request"),
        tf.debugging.assert_non_negative(token_ids, message="token_ids must be >= 0"),
        tf.debugging.assert_less(token_ids, vocabulary_size,
                                 message=f"token_ids must be < the vocabulary size, {vocabulary_size}"),
    ]


def logits_limits(loaded, limits):
    """How tflm_export.json lists the limits of a request of token_ids rows."""
    return {"max_rows": limits.max_batch_size, "max_token_ids_per_request": limits.max_request_chars,
            "token_ids": [0, loaded.tokenizer.vocabulary_size - 1]}


def generate_checks(loaded, inputs, limits):
    """The limits of a generate request: its prompts and its sampling inputs."""
    max_new_tokens, top_p, stop = inputs["max_new_tokens"], inputs["top_p"], inputs["stop"]
    return text_checks(inputs["prompts"], "prompts", limits) + [
        tf.debugging.assert_greater(max_new_tokens, 0, message="max_new_tokens must be at least 1"),
        tf.debugging.assert_less_equal(max_new_tokens, MAX_NEW_TOKENS,
                                       message=f"max_new_tokens must be at most {MAX_NEW_TOKENS}"),
        tf.debugging.assert_non_negative(inputs["temperature"], message="temperature must be >= 0 (0 = greedy)"),
        tf.debugging.assert_less(inputs["temperature"], float("inf"), message="temperature must be finite"),
        tf.debugging.assert_non_negative(inputs["top_k"], message="top_k must be >= 0 (0 = no limit)"),
        tf.debugging.assert_non_negative(inputs["seed"], message=f"seed must be from 0 to {MAX_SEED}"),
        tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1] (1 = no limit)"),
        tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1] (1 = no limit)"),
        tf.debugging.assert_less_equal(tf.strings.length(stop, unit="UTF8_CHAR"), limits.max_request_chars,
                                       message=f"stop may have at most {limits.max_request_chars} characters"),
        tf.debugging.assert_equal(is_utf8(stop), True, message="stop must be valid UTF-8"),
    ]


def generate_limits(loaded, limits):
    """How tflm_export.json lists the limits of a generate request."""
    return {"max_prompts": limits.max_batch_size, "max_chars_per_request": limits.max_request_chars,
            "prompts": "valid UTF-8", "max_new_tokens": [1, MAX_NEW_TOKENS], "temperature": ">= 0, finite",
            "top_k": ">= 0", "top_p": "> 0, <= 1", "seed": [0, MAX_SEED],
            "stop": f"valid UTF-8, at most {limits.max_request_chars} characters"}


# How a generate request reads (REST, columnar form); in tflm_export.json too.
GENERATE_REQUEST = {"signature_name": "generate",
                    "inputs": {"prompts": ["def "], "max_new_tokens": 80, "temperature": 0.8, "top_k": 20,
                               "seed": 1, "top_p": 0.95, "stop": "\n\n"}}

TEXTS = Input("texts", "string", (None,))

KINDS = {
    "logits": Kind(
        inputs=(Input("token_ids", "int32", (None, None)),),
        outputs={"logits": ("float32", [None, None])},
        serve=lambda loaded, inputs, stride: {"logits": next_token_logits(loaded, inputs["token_ids"])},
        checks=logits_checks, limits=logits_limits,
        warmup=lambda sample, token_ids: {"token_ids": [token_ids]}),
    "score": Kind(
        inputs=(TEXTS,),
        outputs={"log_prob": ("float32", [None]), "mean_nll": ("float32", [None]),
                 "perplexity": ("float32", [None]), "bits_per_byte": ("float32", [None]),
                 "num_tokens": ("int32", [None])},
        serve=lambda loaded, inputs, stride: score_strings(loaded, inputs["texts"], stride),
        checks=texts_checks, limits=texts_limits,
        warmup=lambda sample, token_ids: {"texts": [sample]},
        section=lambda loaded, stride: {"stride": stride}),
    "generate": Kind(
        inputs=(Input("prompts", "string", (None,)), Input("max_new_tokens", "int32", ()),
                Input("temperature", "float32", ()), Input("top_k", "int32", ()), Input("seed", "int32", ()),
                Input("top_p", "float32", (), default=1.0), Input("stop", "string", (), default="")),
        outputs={"completions": ("string", [None])},
        serve=lambda loaded, inputs, stride: {"completions": generate_strings(loaded, **inputs)},
        checks=generate_checks, limits=generate_limits,
        warmup=lambda sample, token_ids: {"prompts": [sample], "max_new_tokens": 8, "temperature": 0.0,
                                          "top_k": 0, "seed": 0, "top_p": 1.0, "stop": ""},
        section=lambda loaded, stride: {"max_new_tokens_cap": MAX_NEW_TOKENS, "greedy_when_temperature": 0,
                                        "request": GENERATE_REQUEST}),
    "classify": Kind(
        inputs=(TEXTS,),
        outputs={"labels": ("string", [None]), "label_ids": ("int32", [None]),
                 "probabilities": ("float32", [None, None])},
        serve=lambda loaded, inputs, stride: classify_strings(loaded, inputs["texts"]),
        checks=texts_checks,
        limits=lambda loaded, limits: {"max_texts": limits.max_batch_size,
                                       "max_chars_per_request": limits.max_request_chars},
        warmup=lambda sample, token_ids: {"texts": [sample]},
        section=lambda loaded, stride: {"labels": list(loaded.labels), "max_tokens": loaded.context,
                                        "pooling": loaded.config.task.pooling}),
}
XLA_FLAG = "--xla_cpu_compilation_enabled=true"  # TF Serving's switch for XLA on CPU (off by default)
KINDS["generate_xla"] = dataclasses.replace(
    KINDS["generate"], tf_serving_flags=(XLA_FLAG,),
    serve=lambda loaded, inputs, stride: {"completions": generate_strings(loaded, **inputs, jit_compile=True)})
XLA_TWINS = {"generate": "generate_xla"}  # kind: the kind of the XLA-compiled signature exported beside it


def signature_kinds(loaded):
    """{exported signature name: its Kind}, in the order the run's task lists them, each followed
    by its XLA twin (`XLA_TWINS`) if it has one."""
    kinds = {}
    for name, kind in loaded.task.signatures.items():
        kinds[name] = KINDS[kind]
        if kind in XLA_TWINS:
            kinds[f"{name}_xla"] = KINDS[XLA_TWINS[kind]]
    return kinds
