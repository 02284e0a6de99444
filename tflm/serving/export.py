"""Writing a run as a SavedModel that stock TF Serving loads (`python -m tflm.export` parses its
arguments and calls `export_run`):

    saved_models/NAME/VERSION/saved_model.pb, variables/      the graph and weights
    saved_models/NAME/VERSION/assets.extra/tflm_export.json   what the export is (model, tokenizer,
                                                              signatures, limits, non-core ops)
    saved_models/NAME/VERSION/assets.extra/tf_serving_warmup_requests

VERSION is the next integer. Locally the version is written into a hidden directory beside it
(`.tflm-export-*`, which TF Serving's poller skips: it only loads integer names) and renamed into
place, so the poller never sees a half-written version; an existing version is never replaced.
A `--base` on another filesystem (gs://, hdfs://, ...: object stores cannot rename directories)
gets the version written locally first, then copied in with saved_model.pb last: the poller
loads a version only once its saved_model.pb exists.

The signatures are those the run's task names (`task.signatures`), each derived from the
description of its kind in tflm.serving.signatures (inputs, defaults, outputs, limits, warmup
request); the tokenizer is in the graph, so REST takes text. Optional inputs are SignatureDef
defaults, which TF Serving fills in when a request leaves them out, so requests written before
they existed stay valid. TensorFlow's Python loader ignores SignatureDef defaults:
`tf.saved_model.load(d).signatures["generate"]` needs every input, while the exported object's
`generate` attribute (`tf.saved_model.load(d).generate(...)`, a tf.function with the same
defaults) takes the older calls too. The signatures trace the functions tflm's Python API runs
(tflm.serving.scoring, decoding, classifying). `generate` runs without XLA, as stock TF Serving
does; its twin `generate_xla` has the decoding loop XLA-compiled (the function keeps its
`_XlaMustCompile` attribute in the SavedModel), 3 to 8x faster on CPU, and TF Serving runs it
only when started with --xla_cpu_compilation_enabled=true (without the flag its requests fail and
the rest of the export serves as usual): tflm_export.json lists the flag under the signature, and
`export_run` says so on stderr. It has no warmup request (one would stop a server without the
flag from loading the version), so its first request of each batch size, prompt width (multiple
of 64) and stop width (of 16) compiles, seconds each. A
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

import datetime
import inspect
import os
import re
import shutil
import sys
import tempfile

from tflm import atomic
from tflm.atomic import staging_dir, write_json
from tflm.data.tokenizers import OOV_ID, PAD_ID, TF_SERVING_RELEASE
from tflm.errors import TflmError
from tflm.lazy import keras, tf
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS, load_run
from tflm.serving.scoring import default_stride
from tflm.serving.signatures import KINDS, Limits, signature_kinds
from tflm.serving.warmup import WARMUP_FILE, graph_ops, non_core_ops, warmup_requests, write_warmup_requests


def signature_functions(loaded, stride, limits=Limits()):
    """{signature name: python function} over the loaded run, one per signature its task exports."""
    return {name: exported_function(name, kind, loaded, stride, limits)
            for name, kind in signature_kinds(loaded).items()}


def exported_function(name, kind, loaded, stride, limits):
    """The function a signature of `kind` serves: arguments named after its inputs, optional ones
    defaulting to constants (which the SavedModel keeps as SignatureDef defaults), each input
    available only once every check of the request has passed."""
    signature = call_signature(kind)

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        checks = kind.checks(loaded, bound.arguments, limits)
        return kind.serve(loaded, {k: checked(v, checks) for k, v in bound.arguments.items()}, stride)

    function.__name__ = name
    function.__signature__ = signature  # what tf.function reads the argument names and defaults from
    return function


def call_signature(kind):
    """The Python signature of a function taking the inputs of `kind`."""
    parameter = inspect.Parameter
    return inspect.Signature([
        parameter(i.name, parameter.POSITIONAL_OR_KEYWORD,
                  default=parameter.empty if i.default is None else tf.constant(i.default, i.dtype))
        for i in kind.inputs])


def input_specs(kind):
    """The TensorSpecs of the inputs of `kind` (the signature's input_signature)."""
    return [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in kind.inputs]


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
    kinds = signature_kinds(loaded)
    for name, function in signature_functions(loaded, stride, limits).items():
        archive.add_endpoint(name, tf.function(function), input_signature=input_specs(kinds[name]))
    archive.write_out(path, verbose=False)


def describe(loaded, stride, ops, limits=Limits()):
    """The contents of assets.extra/tflm_export.json."""
    kinds = signature_kinds(loaded)
    return {
        "format": "tflm-export/1",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": loaded.run_dir,
        "checkpoint": os.path.basename(loaded.checkpoint),
        "model": {"type": loaded.config.model.type, "context": loaded.context,
                  "vocabulary_size": loaded.tokenizer.vocabulary_size, **model_fields(loaded.config)},
        "tokenizer": describe_tokenizer(loaded.tokenizer),
        "signatures": {name: describe_signature(kind) for name, kind in kinds.items()},
        **kind_sections(loaded, stride),
        "limits": {name: kind.limits(loaded, limits) for name, kind in kinds.items()},  # beyond: INVALID_ARGUMENT
        "ops": ops,
        "non_core_ops": non_core_ops(ops),
        "allowed_non_core_ops": list(loaded.tokenizer.non_core_ops),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def model_fields(config):
    """The model section as tflm_export.json lists it: a preset's name and LoRA rank (its sizes
    are the preset's), or every field of tflm's own models."""
    if config.model.preset:
        return {"preset": config.model.preset, "lora_rank": config.train.lora_rank}
    return config.to_dict()["model"]


def describe_signature(kind):
    """A signature's entry in tflm_export.json: its inputs, the defaults of those a request may
    leave out, its outputs, and the flags TF Serving needs to run it (if any)."""
    def spec(dtype, shape):
        return {"dtype": dtype, "shape": list(shape)}

    described = {"inputs": {i.name: spec(i.dtype, i.shape) for i in kind.inputs},
                 "defaults": {i.name: i.default for i in kind.inputs if i.default is not None},
                 "outputs": {name: spec(*output) for name, output in kind.outputs.items()}}
    return {**described, "tf_serving_flags": list(kind.tf_serving_flags)} if kind.tf_serving_flags else described


def kind_sections(loaded, stride):
    """The entries of tflm_export.json named after the kinds of the run's signatures, once per kind
    (e.g. "generate": its max_new_tokens cap and an example request)."""
    kinds = dict.fromkeys(loaded.task.signatures.values())  # distinct, in order
    return {kind: KINDS[kind].section(loaded, stride) for kind in kinds if KINDS[kind].section}


def describe_tokenizer(tokenizer):
    """The tokenizer part of tflm_export.json: what it is and what a TF Serving build needs for it."""
    described = {"type": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                 "fingerprint": tokenizer.fingerprint(), "pad_id": PAD_ID, "oov_id": OOV_ID, "in_graph": True,
                 "non_core_ops": list(tokenizer.non_core_ops)}
    if tokenizer.non_core_ops:
        described["tf_serving"] = (f"tensorflow-text ops: stock TF Serving {TF_SERVING_RELEASE} or later "
                                   "bundles them (see the README)")
    return {**described, **tokenizer.export_fields()}


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
                          warmup_requests(signature_kinds(loaded), loaded.tokenizer, limits.max_request_chars))


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
            version = publish(staging, model_dir)
        else:
            try:
                version = publish_remote(staging, model_dir)
            except Exception as error:  # tf.errors.OpError from the remote filesystem
                raise TflmError(f"cannot write an export under {model_dir}: {str(error).splitlines()[0]}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
    print_flags_note(version, signature_kinds(loaded))
    return version


def print_flags_note(version, kinds):
    """Tell on stderr which signatures of the export need a TF Serving flag, and which one."""
    for name, kind in kinds.items():
        if kind.tf_serving_flags:
            print(f"tflm: {version}: signature {name} (faster) needs TF Serving started with "
                  f"{' '.join(kind.tf_serving_flags)}; the others run on stock TF Serving", file=sys.stderr, flush=True)
