"""`python -m tflm.export`: write a run as a SavedModel that stock TF Serving loads.

    saved_models/NAME/VERSION/saved_model.pb, variables/      the graph and weights
    saved_models/NAME/VERSION/assets.extra/tflm_export.json   what the export is (model, tokenizer,
                                                              signatures, non-core ops)
    saved_models/NAME/VERSION/assets.extra/tf_serving_warmup_requests

VERSION is the next integer. Locally the version is written into a hidden directory beside it
(`.tflm-export-*`, which TF Serving's poller skips: it only loads integer names) and renamed into
place, so the poller never sees a half-written version; an existing version is never replaced.
A `--base` on another filesystem (gs://, hdfs://, ...: object stores cannot rename directories)
gets the version written locally first, then copied in with saved_model.pb last: the poller
loads a version only once its saved_model.pb exists.

Signatures (named inputs -> named outputs); the tokenizer is in the graph, so REST takes text:
    serving_default: token_ids int32 [batch, time] -> logits float32 [batch, vocab]
    score:    texts string [batch] -> log_prob, mean_nll, perplexity, bits_per_byte float32 [batch],
              num_tokens int32
    generate: prompts string [batch], max_new_tokens, temperature, top_k, seed (scalars), and
              optionally top_p (default 1.0) and stop (default "") -> completions string [batch]
A classifier's export (task.type: classify) has instead:
    classify (and serving_default, the same): texts string [batch] -> labels string [batch],
              label_ids int32 [batch], probabilities float32 [batch, classes]
Optional inputs are SignatureDef defaults, which TF Serving fills in when a request leaves them
out, so requests written before they existed stay valid. TensorFlow's Python loader ignores
SignatureDef defaults: `tf.saved_model.load(d).signatures["generate"]` needs every input, while
the exported object's `generate` attribute (`tf.saved_model.load(d).generate(...)`, a tf.function
with the same defaults) takes the older calls too. The signatures trace the same functions
`tflm.score` and `tflm.generate` run in Python, without XLA: a jit-compiled function in a
SavedModel needs an XLA-enabled TF Serving build, and each request shape would compile anew. A
request over the limits (`Limits`: texts, prompts or rows per request; characters of all its texts
or prompts, token ids of all its rows, characters of the stop string), text that is not valid
UTF-8, a token id outside the vocabulary, or a bad sampling input fails with INVALID_ARGUMENT
before any work is done.

The graph may use core TensorFlow ops only (those in tf.raw_ops, which stock TF Serving runs)
and the ops the tokenizer declares (`non_core_ops`: none for the char and byte tokenizers,
tensorflow-text's for wordpiece and sentencepiece, which TF Serving bundles; tflm_export.json
names them and the TF Serving release known to carry them); an export that needs any other op
fails with a TflmError naming them, and nothing is published.
"""

import dataclasses
import datetime
import os
import re
import shutil
import tempfile

from tflm import atomic
from tflm.atomic import staging_dir, write_json
from tflm.errors import TflmError
from tflm.serving.decoding import MAX_NEW_TOKENS, MAX_SEED, generate_strings
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS, load_run
from tflm.serving.reading import next_token_logits
from tflm.serving.classifying import classify_strings
from tflm.lazy import keras, tf
from tflm.serving.scoring import default_stride, score_strings
from tflm.serving.warmup import WARMUP_FILE, graph_ops, non_core_ops, warmup_inputs, write_warmup_requests
from tflm.data.tokenizers import INT32_MAX, OOV_ID, PAD_ID, TF_SERVING_RELEASE


def signature_inputs(classifier=False):
    """{signature: its input TensorSpecs} (built on use: importing this module loads no TensorFlow)."""
    if classifier:
        texts = [tf.TensorSpec([None], tf.string, name="texts")]
        return {"classify": texts, "serving_default": texts}
    return {
        "serving_default": [tf.TensorSpec([None, None], tf.int32, name="token_ids")],
        "score": [tf.TensorSpec([None], tf.string, name="texts")],
        "generate": [tf.TensorSpec([None], tf.string, name="prompts"),
                     tf.TensorSpec([], tf.int32, name="max_new_tokens"),
                     tf.TensorSpec([], tf.float32, name="temperature"),
                     tf.TensorSpec([], tf.int32, name="top_k"),
                     tf.TensorSpec([], tf.int32, name="seed"),
                     tf.TensorSpec([], tf.float32, name="top_p"),
                     tf.TensorSpec([], tf.string, name="stop")],
    }


DEFAULTS = {"generate": {"top_p": 1.0, "stop": ""}}  # inputs a request may leave out
# How a generate request reads (REST, columnar form); in tflm_export.json too.
GENERATE_REQUEST = {"signature_name": "generate",
                    "inputs": {"prompts": ["def "], "max_new_tokens": 80, "temperature": 0.8, "top_k": 20,
                               "seed": 1, "top_p": 0.95, "stop": "\n\n"}}
OUTPUTS = {
    "serving_default": {"logits": ("float32", [None, None])},
    "score": {"log_prob": ("float32", [None]), "mean_nll": ("float32", [None]),
              "perplexity": ("float32", [None]), "bits_per_byte": ("float32", [None]),
              "num_tokens": ("int32", [None])},
    "generate": {"completions": ("string", [None])},
}
CLASSIFY_OUTPUTS = {"labels": ("string", [None]), "label_ids": ("int32", [None]),
                    "probabilities": ("float32", [None, None])}
CLASSIFIER_OUTPUTS = {"classify": CLASSIFY_OUTPUTS, "serving_default": CLASSIFY_OUTPUTS}


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


def signature_functions(loaded, stride, limits=Limits()):
    """{signature name: python function} over the loaded run; argument names are input names."""
    if loaded.is_classifier:
        def classify(texts):
            return classify_strings(loaded, checked(texts, text_checks(texts, "texts", limits)))

        return {"classify": classify, "serving_default": classify}
    vocabulary_size = loaded.tokenizer.vocabulary_size

    def serving_default(token_ids):
        token_ids = checked(token_ids, [
            tf.debugging.assert_less_equal(tf.shape(token_ids)[0], limits.max_batch_size,
                                           message=f"at most {limits.max_batch_size} rows of token_ids per request"),
            tf.debugging.assert_less_equal(tf.size(token_ids, tf.int64),
                                           tf.constant(limits.max_request_chars, tf.int64),
                                           message=f"at most {limits.max_request_chars} token_ids per request"),
            tf.debugging.assert_non_negative(token_ids, message="token_ids must be >= 0"),
            tf.debugging.assert_less(token_ids, vocabulary_size,
                                     message=f"token_ids must be < the vocabulary size, {vocabulary_size}"),
        ])
        return {"logits": next_token_logits(loaded, token_ids)}

    def score(texts):
        return score_strings(loaded, checked(texts, text_checks(texts, "texts", limits)), stride)

    def generate(prompts, max_new_tokens, temperature, top_k, seed,
                 top_p=tf.constant(DEFAULTS["generate"]["top_p"]), stop=tf.constant(DEFAULTS["generate"]["stop"])):
        prompts = checked(prompts, text_checks(prompts, "prompts", limits) + [
            tf.debugging.assert_greater(max_new_tokens, 0, message="max_new_tokens must be at least 1"),
            tf.debugging.assert_less_equal(max_new_tokens, MAX_NEW_TOKENS,
                                           message=f"max_new_tokens must be at most {MAX_NEW_TOKENS}"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0 (0 = greedy)"),
            tf.debugging.assert_less(temperature, float("inf"), message="temperature must be finite"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 = no limit)"),
            tf.debugging.assert_non_negative(seed, message=f"seed must be from 0 to {MAX_SEED}"),
            tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1] (1 = no limit)"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1] (1 = no limit)"),
            tf.debugging.assert_less_equal(tf.strings.length(stop, unit="UTF8_CHAR"), limits.max_request_chars,
                                           message=f"stop may have at most {limits.max_request_chars} characters"),
            tf.debugging.assert_equal(is_utf8(stop), True, message="stop must be valid UTF-8"),
        ])
        return {"completions": generate_strings(loaded, prompts, max_new_tokens, temperature, top_k, top_p,
                                                seed, stop)}

    return {"serving_default": serving_default, "score": score, "generate": generate}


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


def checked(value, checks):
    """`value`, available only once every assertion in `checks` has passed."""
    with tf.control_dependencies(checks):
        return tf.identity(value)


def write_saved_model(loaded, path, stride, limits=Limits()):
    """The SavedModel with its signatures, through keras.export.ExportArchive (which also sets
    each as a tf.function attribute of the exported object, defaults included)."""
    archive = keras.export.ExportArchive()
    archive.track(loaded.model)
    for trackable in loaded.tokenizer.trackables:  # lookup tables, a SentencePiece model
        archive.track(trackable)
    inputs = signature_inputs(loaded.is_classifier)
    for name, function in signature_functions(loaded, stride, limits).items():
        archive.add_endpoint(name, tf.function(function), input_signature=inputs[name])
    archive.write_out(path, verbose=False)


def describe(loaded, stride, ops, limits=Limits()):
    """The contents of assets.extra/tflm_export.json."""
    def spec(dtype, shape):
        return {"dtype": dtype, "shape": shape}

    outputs = CLASSIFIER_OUTPUTS if loaded.is_classifier else OUTPUTS
    described = {
        "format": "tflm-export/1",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": loaded.run_dir,
        "checkpoint": os.path.basename(loaded.checkpoint),
        "model": {"type": loaded.model_type, "context": loaded.context,
                  "vocabulary_size": loaded.tokenizer.vocabulary_size, **loaded.config.to_dict()["model"]},
        "tokenizer": describe_tokenizer(loaded.tokenizer),
        "signatures": {
            name: {"inputs": {s.name: spec(s.dtype.name, s.shape.as_list()) for s in inputs},
                   "defaults": DEFAULTS.get(name, {}),  # inputs a request may leave out
                   "outputs": {k: spec(*v) for k, v in outputs[name].items()}}
            for name, inputs in signature_inputs(loaded.is_classifier).items()
        },
        "score": {"stride": stride},
        "generate": {"max_new_tokens_cap": MAX_NEW_TOKENS, "greedy_when_temperature": 0,
                     "request": GENERATE_REQUEST},
        "limits": described_limits(loaded.tokenizer.vocabulary_size, limits),
        "ops": ops,
        "non_core_ops": non_core_ops(ops),
        "allowed_non_core_ops": list(loaded.tokenizer.non_core_ops),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    if loaded.is_classifier:
        for key in ("score", "generate"):
            del described[key]
        described["classify"] = {"labels": list(loaded.labels), "max_tokens": loaded.context,
                                 "pooling": loaded.config.task.pooling}
        described["limits"] = {name: {"max_texts": limits.max_batch_size,
                                      "max_chars_per_request": limits.max_request_chars}
                               for name in CLASSIFIER_OUTPUTS}
    return described


def describe_tokenizer(tokenizer):
    """The tokenizer part of tflm_export.json: what it is and what a TF Serving build needs for it."""
    described = {"type": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                 "fingerprint": tokenizer.fingerprint(), "pad_id": PAD_ID, "oov_id": OOV_ID, "in_graph": True,
                 "non_core_ops": list(tokenizer.non_core_ops)}
    if tokenizer.non_core_ops:
        described["tf_serving"] = (f"tensorflow-text ops: stock TF Serving {TF_SERVING_RELEASE} or later "
                                   "bundles them (see the README)")
    if tokenizer.kind == "char":
        described["characters"] = tokenizer.characters
    return described


def described_limits(vocabulary_size, limits):
    """What one request to each signature may hold (larger ones fail with INVALID_ARGUMENT)."""
    return {
        "serving_default": {"max_rows": limits.max_batch_size, "max_token_ids_per_request": limits.max_request_chars,
                            "token_ids": [0, vocabulary_size - 1]},
        "score": {"max_texts": limits.max_batch_size, "max_chars_per_request": limits.max_request_chars,
                  "texts": "valid UTF-8"},
        "generate": {"max_prompts": limits.max_batch_size, "max_chars_per_request": limits.max_request_chars,
                     "prompts": "valid UTF-8", "max_new_tokens": [1, MAX_NEW_TOKENS], "temperature": ">= 0, finite",
                     "top_k": ">= 0", "top_p": "> 0, <= 1", "seed": [0, MAX_SEED],
                     "stop": f"valid UTF-8, at most {limits.max_request_chars} characters"},
    }


def check_core_ops(ops, allowed):
    """Raise a TflmError naming the ops in `ops` that stock TF Serving lacks (not in tf.raw_ops)
    and that are not in `allowed` (those the tokenizer declares)."""
    missing = [op for op in non_core_ops(ops) if op not in allowed]
    if missing:
        raise TflmError(f"the exported graph needs ops stock TF Serving lacks: {', '.join(missing)} "
                        "(only core TensorFlow ops and those the tokenizer declares may be exported); "
                        "nothing was published")


def default_name(run_dir):
    """The run directory's name, made safe for a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(os.path.normpath(os.path.abspath(run_dir))))


def check_name(name):
    """Raise unless `name` is a plain directory name."""
    if not name or name.startswith(".") or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise TflmError(f"model name must be letters, digits, '_', '.' or '-' (not starting with '.'), got {name!r}")
    return name


def versions(model_dir):
    """The version numbers in `model_dir`: its entries named by ASCII digits, as TF Serving reads
    them (other entries, such as a file named "²", which str.isdigit accepts, are not versions)."""
    return sorted(int(d) for d in atomic.listdir(model_dir) if re.fullmatch(r"[0-9]+", d))


def next_version(model_dir):
    """The path of the version after the newest in `model_dir`."""
    return f"{model_dir.rstrip('/')}/{(versions(model_dir) or [0])[-1] + 1}"


def publish(staging, model_dir):
    """Rename `staging` to the next free version; returns its path. Never replaces a version."""
    while True:
        target = next_version(model_dir)
        if os.path.exists(target):
            continue  # another exporter just took it; versions() now sees it
        try:
            os.rename(staging, target)
            return target
        except OSError:
            if not os.path.exists(target):
                raise


def publish_remote(staging, model_dir):
    """Copy the local `staging` to the next version in the remote `model_dir`, saved_model.pb last
    (the file whose presence makes TF Serving load a version); returns its path."""
    target = next_version(model_dir)
    files = sorted(os.path.relpath(os.path.join(root, name), staging)
                   for root, _, names in os.walk(staging) for name in names)
    try:
        for name in sorted(files, key=lambda name: name == "saved_model.pb"):
            atomic.makedirs(atomic.parent_of(f"{target}/{name}"))
            atomic.write_bytes(f"{target}/{name}", atomic.read_bytes(os.path.join(staging, name)))
    except BaseException:
        atomic.gfile().rmtree(target)  # without saved_model.pb it was never loadable: leave nothing
        raise
    return target


def write_export(loaded, path, model_name, limits=Limits()):
    """The SavedModel, its tflm_export.json and its warmup requests, in the local directory `path`."""
    stride = default_stride(loaded.context)
    write_saved_model(loaded, path, stride, limits)
    ops = graph_ops(path)
    check_core_ops(ops, loaded.tokenizer.non_core_ops)
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra)
    write_json(os.path.join(extra, "tflm_export.json"), describe(loaded, stride, ops, limits))
    write_warmup_requests(os.path.join(extra, WARMUP_FILE), model_name,
                          warmup_inputs(loaded.tokenizer, loaded.is_classifier, limits.max_request_chars))


def export_run(run_dir, base="saved_models", name=None, max_batch_size=MAX_BATCH_SIZE,
               max_request_chars=MAX_REQUEST_CHARS):
    """Export the run's latest checkpoint to base/NAME/VERSION, its signatures taking requests of
    at most `max_batch_size` texts and `max_request_chars` characters; returns that directory."""
    limits = Limits(max_batch_size, max_request_chars)
    name = check_name(name or default_name(run_dir))
    model_dir = f"{base.rstrip('/')}/{name}" if not atomic.is_local(base) else os.path.join(base, name)
    loaded = load_run(run_dir)
    local = atomic.is_local(model_dir)
    staging = (staging_dir(model_dir, ".tflm-export-", f"write an export under {model_dir}") if local
               else tempfile.mkdtemp(prefix="tflm-export-"))
    try:
        write_export(loaded, staging, name, limits)
        if local:
            return publish(staging, model_dir)
        try:
            return publish_remote(staging, model_dir)
        except Exception as error:  # tf.errors.OpError from the remote filesystem
            raise TflmError(f"cannot write an export under {model_dir}: {str(error).splitlines()[0]}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
