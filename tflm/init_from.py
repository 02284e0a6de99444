"""`train.init_from` / `--init-from RUN_DIR`: a new run that starts from another run's weights.

The new run takes the source run's latest checkpoint (model weights only: the optimizer, its
schedule and the step start afresh) and its tokenizer, and trains on its own data. It records
where it came from in RUN_DIR/init_from.json (source, checkpoint, step, tokenizer fingerprint).
Only a new run starts from the source: resuming the new run restores its own checkpoints and
ignores train.init_from. Everything is checked before the run directory is created.
"""

import dataclasses
import json
import os

from tflm import run_dir as runs
from tflm.checkpoint import checkpoint_dir, checkpoint_step, list_checkpoints
from tflm.config import all_keys
from tflm.errors import TflmError
from tflm.lazy import tf

RECORD_FILE = "init_from.json"
# Besides the model section, what fixes the shapes of the weights and the meaning of token ids.
MATCHING_DATA_KEYS = ("data.tokenizer", "data.vocab_size", "data.sentencepiece_model")


@dataclasses.dataclass(frozen=True)
class Source:
    """The run a new run starts from, and the checkpoint it takes."""

    run_dir: str
    checkpoint: str

    @property
    def step(self):
        """The source run's step at that checkpoint."""
        return checkpoint_step(self.checkpoint)

    def tokenizer(self):
        """The source run's tokenizer."""
        return runs.load_tokenizer(self.run_dir)

    def record(self):
        """The contents of init_from.json."""
        return json.dumps({"source": os.path.abspath(self.run_dir), "checkpoint": os.path.abspath(self.checkpoint),
                           "step": self.step, "tokenizer_fingerprint": self.tokenizer().fingerprint()},
                          indent=1) + "\n"


def check_source(config, run_dir, resuming):
    """The Source of a new run with train.init_from, None without one (or when resuming), or a
    TflmError: the source is this run, is no run, has no checkpoint, or has another model."""
    path = config.train.init_from
    check_not_itself(path, run_dir)
    if not path or resuming:
        return None
    if not runs.is_run_dir(path):
        raise TflmError(f"--init-from {path}: no such tflm run directory (no config.yaml and vocab.json)")
    checkpoints = list_checkpoints(checkpoint_dir(path))
    if not checkpoints:
        raise TflmError(f"--init-from {path}: the run has no checkpoint yet")
    source_config = runs.read_config(path)
    if source_config.task.type != "lm":
        raise TflmError(f"--init-from {path}: a {source_config.task.type} run; start from a language-model run")
    check_same_model(path, source_config, config)
    return Source(path, checkpoints[-1])


def check_not_itself(path, run_dir):
    """Raise if train.init_from names the run directory being trained (or resumed)."""
    if path and os.path.normpath(os.path.abspath(path)) == os.path.normpath(os.path.abspath(run_dir)):
        raise TflmError(f"--init-from {path} is the run directory itself; resuming it needs no --init-from")


def check_same_model(path, source_config, config):
    """Raise naming the first setting that makes `config`'s weights differ from the source's."""
    source, wanted = source_config.to_dict(), config.to_dict()
    keys = [k for k in all_keys() if k.startswith("model.")] + list(MATCHING_DATA_KEYS)
    if config.model.type == "transformer":
        keys.append("data.seq_len")  # the position embeddings' size
    for key in keys:
        section, name = key.split(".")
        if source[section][name] != wanted[section][name]:
            raise TflmError(f"--init-from {path}: the source run has {key}={source[section][name]!r}, this run "
                            f"{wanted[section][name]!r}; the model must match the source run's")


def restore_source(model, source):
    """Load the source checkpoint's model weights into `model` (a language model)."""
    status = tf.train.Checkpoint(model=model).restore(source.checkpoint)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as error:
        raise TflmError(f"--init-from: {source.checkpoint} does not match this model: "
                        f"{str(error).splitlines()[0]}") from None
