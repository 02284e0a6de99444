"""The run directory: resolved config, tokenizer vocabulary, checkpoints, history, TensorBoard.

    RUN_DIR/config.yaml      the resolved config this run trains with
    RUN_DIR/vocab.json       the character vocabulary
    RUN_DIR/checkpoints/     tf.train.CheckpointManager files (model, optimizer, step)
    RUN_DIR/history.jsonl    one JSON object per evaluation
    RUN_DIR/tensorboard/     event files

A new run directory appears whole or not at all: it is assembled under a temporary name and
renamed into place. Only the chief writes here.
"""

import datetime
import json
import os
import shutil

from tflm.atomic import staging_dir, write_text
from tflm.config import Config, dump, read_yaml
from tflm.errors import TflmError
from tflm.tokenizer import CharTokenizer

HISTORY_KEYS = ("step", "tokens_seen", "elapsed_s", "loss", "accuracy", "val_loss", "val_accuracy",
                "val_perplexity", "tokens_per_sec")


def default_run_dir(config):
    """runs/<model type>-<UTC timestamp>."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.model.type}-{stamp}")


def config_path(run_dir):
    """The resolved config of a run."""
    return os.path.join(run_dir, "config.yaml")


def vocab_path(run_dir):
    """The tokenizer vocabulary of a run."""
    return os.path.join(run_dir, "vocab.json")


def history_path(run_dir):
    """The evaluation history of a run."""
    return os.path.join(run_dir, "history.jsonl")


def is_run_dir(run_dir):
    """Whether `run_dir` holds a tflm run."""
    return os.path.isfile(config_path(run_dir)) and os.path.isfile(vocab_path(run_dir))


def check_usable(run_dir):
    """Raise unless `run_dir` is absent, empty, or a tflm run directory."""
    if os.path.exists(run_dir) and not is_run_dir(run_dir):
        if not os.path.isdir(run_dir) or os.listdir(run_dir):
            raise TflmError(f"{run_dir} exists and is not a tflm run directory")


def read_config(run_dir):
    """The config a run was created with, checked as any config is."""
    path = config_path(run_dir)
    return Config.from_dict(read_yaml(path), origin=path)


def create(run_dir, config, tokenizer):
    """Create `run_dir` with its config and vocabulary, atomically."""
    staging = staging_dir(os.path.dirname(os.path.abspath(run_dir)), ".tflm-new-",
                          f"create run directory {run_dir}")
    try:
        write_text(config_path(staging), dump(config))
        tokenizer.save(vocab_path(staging))
        if os.path.isdir(run_dir):
            os.rmdir(run_dir)  # empty, checked by check_usable
        os.rename(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_tokenizer(run_dir):
    """The tokenizer a run was trained with."""
    return CharTokenizer.load(vocab_path(run_dir))


def read_history(run_dir):
    """The evaluation records of a run, oldest first."""
    path = history_path(run_dir)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_history(run_dir, last_step):
    """Drop records after `last_step` (written after the checkpoint a run resumes from)."""
    kept = [r for r in read_history(run_dir) if r["step"] <= last_step]
    if os.path.exists(history_path(run_dir)):
        write_text(history_path(run_dir), "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_history(run_dir, record):
    """Append one evaluation record."""
    with open(history_path(run_dir), "a", encoding="utf-8") as f:
        f.write(json.dumps({k: record[k] for k in HISTORY_KEYS}) + "\n")


def write_config(run_dir, config):
    """Replace a run's config (on resume, where only steps and intervals may change)."""
    write_text(config_path(run_dir), dump(config))
