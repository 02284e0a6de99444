"""A trained run, loaded for inference: config, tokenizer and the model at its latest checkpoint.

Scoring, decoding, classifying and the export (tflm.serving) all start from `load_run`. Their
TensorFlow functions take the model and tokenizer as arguments, so the code that scores or
samples in Python is the code traced into the exported SavedModel. The run's task (tflm.tasks)
builds its model and says what the run serves.
"""

from __future__ import annotations  # LoadedRun's annotations are not evaluated (keras is tflm.lazy's)

import dataclasses
import os
import sys

import numpy as np

from tflm import atomic
from tflm.config import Config
from tflm.data.tokenizers import CharTokenizer
from tflm.errors import TflmError
from tflm.lazy import keras, tf
from tflm.models.build import checkpointed
from tflm.presets import check_recorded_preset
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import trained_checkpoints
from tflm.runs.fingerprints import check_recorded_tokenizer
from tflm.tasks import task_for
from tflm.tasks.base import Task

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
    config: Config
    tokenizer: CharTokenizer
    model: keras.Model
    checkpoint: str
    task: Task  # what the run learned (tflm.tasks): what it serves, its labels
    functions: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def labels(self):
        """A classifier's label names, in id order (empty for a language model)."""
        return tuple(self.task.labels)

    @property
    def context(self):
        """Tokens of context: prompts keep their last `context` tokens, classified texts their
        first, and a model with a bounded context (the Transformer) scores longer text in windows."""
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
    checkpoints = trained_checkpoints(run_dir)
    config = runs.read_config(run_dir)
    tokenizer = runs.load_tokenizer(run_dir)
    check_recorded_tokenizer(run_dir, config, tokenizer)
    check_recorded_preset(run_dir, config.model.preset)
    task = task_for(config)
    task.load_for_inference(run_dir)
    # Inference runs in float32 whatever the run trained with: the variables are float32 either
    # way, and exact float32 logits make scores reproducible across Python and TF Serving.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = task.build_model(tokenizer.vocabulary_size)
    finally:
        keras.config.set_dtype_policy(policy)
    checkpoint = restore_newest_readable(model, checkpoints)
    check_finite(model, checkpoint)
    return LoadedRun(os.path.abspath(run_dir), config, tokenizer, model, checkpoint, task)


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
    status = tf.train.Checkpoint(model=checkpointed(model)).restore(checkpoint)
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


