"""A trained run, loaded for inference: config, tokenizer and the model at its latest checkpoint.

`tflm.score`, `tflm.generate` and `tflm.export` all start from `load_run`. Their TensorFlow
functions take the model and tokenizer as arguments, so the code that scores or samples in Python
is the code traced into the exported SavedModel.
"""

from __future__ import annotations  # LoadedRun's `keras.Model` annotation is not evaluated (tflm.lazy)

import dataclasses
import os
import sys

import numpy as np

from tflm import atomic
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import checkpoint_dir, list_checkpoints
from tflm.errors import TflmError
from tflm.data.labelled import load_labels
from tflm.lazy import keras, tf
from tflm.data.tokenizers import CharTokenizer
from tflm.runs.fingerprints import check_recorded_tokenizer

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


def check_language_model(loaded):
    """Raise a TflmError if `loaded` is a classifier: scoring and generating need a language model."""
    if loaded.is_classifier:
        raise TflmError(f"{loaded.run_dir} is a text classifier (task.type: classify), not a language model; "
                        "use tflm.classify")


def build_inference_model(config, vocabulary_size, labels):
    """The run's model (a language model, or a classifier over `labels`) with fresh weights."""
    if labels:
        from tflm.models.classifier import build_classifier  # these define Keras classes: they load TensorFlow

        return build_classifier(config, vocabulary_size, len(labels))
    from tflm.models.build import build_model

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


