"""A trained run, loaded for inference: config, tokenizer and the model at its latest checkpoint.

`tflm.score`, `tflm.generate` and `tflm.export` all start from `load_run`. Their TensorFlow
functions take the model and tokenizer as arguments, so the code that scores or samples in Python
is the code traced into the exported SavedModel.
"""

from __future__ import annotations  # LoadedRun's `keras.Model` annotation is not evaluated (tflm.lazy)

import dataclasses
import json
import os
import sys

import numpy as np

from tflm import atomic
from tflm import run_dir as runs
from tflm.checkpoint import checkpoint_dir, list_checkpoints
from tflm.errors import TflmError
from tflm.init_from import RECORD_FILE
from tflm.labelled import load_labels
from tflm.lazy import keras, tf
from tflm.store import INDEX_FILE
from tflm.tokenizer import PAD_ID, CharTokenizer

CHUNK_TOKENS = 8192  # tokens per model call when scoring or reading long rows: bounds memory
# Default limits of one request to an exported signature (`tflm.export --max-batch-size` and
# `--max-request-chars` change them; listed in assets.extra/tflm_export.json); the Python API has
# none, and score_texts sends MAX_BATCH_SIZE texts at a time. A request costs time and memory in
# proportion to its characters, so they are bounded per request: a full one takes seconds.
MAX_BATCH_SIZE = 64  # texts per `score` request, prompts per `generate`, rows per `serving_default`
MAX_REQUEST_CHARS = 65_536  # characters of all texts or prompts of a request, token ids of all its rows


@dataclasses.dataclass
class LoadedRun:
    """A run ready for inference; `functions` caches traced tf.functions between calls."""

    run_dir: str
    config: dict
    tokenizer: CharTokenizer
    model: keras.Model
    checkpoint: str
    labels: tuple = ()  # a classifier's label names, in id order (empty for a language model)
    functions: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def model_type(self):
        """"transformer" or "lstm"."""
        return self.config.model.type

    @property
    def is_classifier(self):
        """Whether the run is a text classifier (task.type: classify)."""
        return self.config.task.type == "classify"

    @property
    def context(self):
        """Tokens of context: the Transformer's position-embedding size, the LSTM's training window.

        Prompts keep their last `context` tokens; the Transformer scores longer text in windows.
        """
        return self.config.data.seq_len

    def function(self, name, build):
        """The tf.function `name`, built by `build()` on first use (its traces are reused)."""
        if name not in self.functions:
            self.functions[name] = build()
        return self.functions[name]


def load_run(run_dir):
    """Load a run directory: its config, tokenizer, and model restored from the latest checkpoint."""
    if not atomic.exists(run_dir):
        raise TflmError(f"{run_dir}: no such run directory")
    if not runs.is_run_dir(run_dir):
        raise TflmError(f"{run_dir} is not a tflm run directory (no config.yaml and vocab.json)")
    checkpoints = list_checkpoints(checkpoint_dir(run_dir))
    if not checkpoints:
        raise TflmError(f"{run_dir} has no checkpoint yet; train it first (python -m tflm.train --run-dir {run_dir})")
    config = runs.read_config(run_dir)
    tokenizer = runs.load_tokenizer(run_dir)
    check_recorded_tokenizer(run_dir, config, tokenizer)
    labels = load_labels(run_dir) if config.task.type == "classify" else ()
    # Inference runs in float32 whatever the run trained with: the variables are float32 either
    # way, and exact float32 logits make scores reproducible across Python and TF Serving.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = build_inference_model(config, tokenizer.vocabulary_size, labels)
    finally:
        keras.config.set_dtype_policy(policy)
    checkpoint = restore_newest_readable(model, checkpoints)
    check_finite(model, checkpoint)
    return LoadedRun(os.path.abspath(run_dir), config, tokenizer, model, checkpoint, labels)


def check_recorded_tokenizer(run_dir, config, tokenizer):
    """Raise a TflmError unless the run's tokenizer has the fingerprint its records hold: the
    token store's index.json (a language model's) and init_from.json (a fine-tuned run's). A run
    without either (tflm 0.1's, a classifier trained from scratch) records none: nothing to compare."""
    store = config.data.store or os.path.join(run_dir, "store")
    records = {os.path.join(store, INDEX_FILE): ("tokenizer", "fingerprint"),
               os.path.join(run_dir, RECORD_FILE): ("tokenizer_fingerprint",)}
    actual = tokenizer.fingerprint()
    for record, keys in records.items():
        fingerprint = recorded_fingerprint(record, keys)
        if fingerprint is not None and fingerprint != actual:
            files = " and ".join(os.path.join(run_dir, name) for name in tokenizer.file_names())
            fix = ("restore the run's own tokenizer files, or, if that shared store was prepared again with another "
                   "tokenizer, point data.store at the store the run was trained on") if config.data.store else \
                "restore the run's own tokenizer files"
            raise TflmError(f"{files} (tokenizer fingerprint {actual[:12]}) is not the tokenizer the run was "
                            f"trained with: {record} records {fingerprint[:12]}; {fix}")


def recorded_fingerprint(path, keys):
    """The fingerprint at `keys` in the JSON file `path`; None if there is no such file or key
    (a damaged record is reported by the code that owns it, not here)."""
    try:
        value = json.loads(atomic.read_bytes(path))
        for key in keys:
            value = value[key]
    except Exception:  # missing (OSError, tf.errors.NotFoundError), not JSON, another layout
        return None
    return value if isinstance(value, str) else None


def check_language_model(loaded):
    """Raise a TflmError if `loaded` is a classifier: scoring and generating need a language model."""
    if loaded.is_classifier:
        raise TflmError(f"{loaded.run_dir} is a text classifier (task.type: classify), not a language model; "
                        "use tflm.classify")


def build_inference_model(config, vocabulary_size, labels):
    """The run's model (a language model, or a classifier over `labels`) with fresh weights."""
    if labels:
        from tflm.classifier import build_classifier  # these define Keras classes: they load TensorFlow

        return build_classifier(config, vocabulary_size, len(labels))
    from tflm.models import build_model

    return build_model(config.model, vocabulary_size, config.data.seq_len)


def restore_newest_readable(model, checkpoints):
    """Restore the newest of `checkpoints` that reads back (warning about damaged newer ones, as
    training does); returns its path."""
    problems = []
    for path in reversed(checkpoints):
        try:
            restore_weights(model, path)
            return path
        except TflmError:
            raise
        except Exception as error:  # a damaged file: DataLossError, OutOfRange, ...
            problem = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            print(f"tflm: warning: cannot restore {path}: {problem}", file=sys.stderr, flush=True)
            problems.append(f"{os.path.basename(path)}: {problem}")
    raise TflmError(f"no checkpoint of {os.path.dirname(checkpoints[-1])} can be restored ({problems[0]})")


def restore_weights(model, checkpoint):
    """Restore every weight of `model` from a training checkpoint (the optimizer's state is
    not needed, hence expect_partial); a TflmError if the checkpoint is of another model."""
    status = tf.train.Checkpoint(model=model).restore(checkpoint)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as error:
        raise TflmError(f"checkpoint {checkpoint} does not match the model in its run's config.yaml: "
                        f"{str(error).splitlines()[0]}") from None


def check_finite(model, checkpoint):
    """Raise a TflmError if a weight restored from `checkpoint` holds NaN or inf."""
    for weight in model.weights:
        if not np.isfinite(weight.numpy()).all():
            raise TflmError(f"checkpoint {checkpoint} has non-finite weights: the run diverged (NaN or inf in "
                            f"{weight.path}); retrain it, e.g. with a lower train.learning_rate")


def next_token_logits(loaded, token_ids):
    """Logits [batch, vocab] for the token after each row of int `token_ids` [batch, time].

    Padding (id 0) at the end of a row is ignored, so rows of different lengths can share a
    batch; the Transformer reads each row's last `context` tokens, the LSTM whole rows in time
    chunks. Core TF ops only.
    """
    token_ids = tf.cast(token_ids, tf.int32)
    token_ids = tf.pad(token_ids, [[0, 0], [0, tf.maximum(0, 1 - tf.shape(token_ids)[1])]])
    total = tf.shape(token_ids)[1]
    ends = tf.where(token_ids != PAD_ID, tf.range(1, total + 1)[None, :], 0)
    lengths = tf.maximum(tf.reduce_max(ends, axis=1), 1)
    if loaded.model_type != "transformer":
        return lstm_last_logits(loaded.model, token_ids, lengths)
    window = tf.minimum(loaded.context, total)
    starts = tf.maximum(lengths - window, 0)
    windows = tf.gather(token_ids, starts[:, None] + tf.range(window)[None, :], batch_dims=1)
    logits = loaded.model(windows, training=False)
    return tf.gather(tf.cast(logits, tf.float32), lengths - starts - 1, batch_dims=1)


def lstm_last_logits(model, token_ids, lengths):
    """Logits [batch, vocab] after token lengths[b] - 1 of each row, reading `token_ids` in time
    chunks of about CHUNK_TOKENS tokens that carry the LSTM's state."""
    batch = tf.shape(token_ids)[0]
    steps = tf.maximum(1, CHUNK_TOKENS // tf.maximum(batch, 1))

    def body(begin, states, last_logits):
        end = tf.minimum(begin + steps, longest(lengths))
        logits, states = model.call_with_cache(token_ids[:, begin:end], states)
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


def read_texts(texts, path):
    """The texts given on a command line, then the lines of `path` ("-" = stdin), if any."""
    texts = list(texts)
    if path:
        texts.extend(read_lines(path))
    if not texts:
        raise TflmError("give at least one text (arguments, or --file PATH with one text per line)")
    return texts


def read_lines(path):
    """The lines of UTF-8 file `path` ("-" = stdin), split at "\n" only, less a CRLF's "\r"."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        lines = data.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise TflmError(f"cannot read {path}: {error}") from None
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def check_strings(values, what):
    """`values` as a list of str; a TflmError for a lone str (a common slip), a non-str, or a str
    that is not valid UTF-8 (such as command-line bytes decoded with surrogateescape)."""
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise TflmError(f"{what} must be a list of strings, got {type(values).__name__}")
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value if len(value) <= 60 else value[:60] + "..."
            raise TflmError(f"{what} must be valid UTF-8; {shown!r} is not") from None
    return list(values)
