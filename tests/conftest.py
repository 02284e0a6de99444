"""Shared fixtures: small configs so tests train in seconds."""

import csv
import json
import os
import random
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFLM_COMPILE_CACHE", "off")  # tests compile afresh, and leave ~/.cache alone

from tflm.config import Config, updated  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(model_type="transformer", **sections):
    """A config that trains in seconds: tiny model, short context, few steps; `sections` change it
    further: small_config("lstm", train={"steps": 5})."""
    config = updated(Config(), model=dict(type=model_type, embed_dim=32, num_layers=1, num_heads=2, ff_dim=64,
                                          lstm_units=32),
                     data=dict(seq_len=32),
                     train=dict(steps=20, eval_every=10, global_batch_size=8, warmup_steps=5, eval_batches=4))
    return updated(config, **sections)


@pytest.fixture
def make_config():
    """Factory for small configs: make_config("lstm", train={"steps": 5})."""
    return small_config


def run_tflm(module, *args, env=None, timeout=300, cwd=REPO):
    """Run `python -m tflm.<module> args...` in a fresh process; returns CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"tflm.{module}", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture
def tflm_cli():
    """Run a tflm command-line module in a subprocess."""
    return run_tflm


def model_weights(run_dir):
    """{variable path: numpy array} of the model in a run's latest checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    # A checkpoint keeps each variable under the shortest path to it: some weights (all of a
    # KerasHub preset's) are reached through the optimizer's list of the variables it trains.
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "optimizer/_trainable_variables/")) and name.endswith("VARIABLE_VALUE")}


def max_weight_difference(run_a, run_b):
    """Largest absolute difference between the final model weights of two runs."""
    import numpy as np

    a, b = model_weights(run_a), model_weights(run_b)
    assert a.keys() == b.keys() and a
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def write_config(path, config):
    """Write a config dict as YAML and return the path."""
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f)
    return str(path)


def checkpointless_run(path, config=None):
    """A run directory as one that stopped before its first checkpoint leaves it (config.yaml and
    vocab.json, no checkpoint), made without training; returns its path."""
    from tflm.data.tokenizers import CharTokenizer

    os.makedirs(path)
    write_config(os.path.join(path, "config.yaml"), config or small_config())
    CharTokenizer(list("abcdef")).save(str(path))
    return str(path)


GROUPS = {"alpha": "abcde", "beta": "fghij", "gamma": "klmno"}  # each label's letters (and "xyz" for all)


def labelled_rows(count, seed):
    """(text, label) rows whose label shows in the letters of the text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(sorted(GROUPS))
        words = ["".join(rng.choice(GROUPS[label] + "xyz") for _ in range(rng.randint(2, 6)))
                 for _ in range(rng.randint(2, 8))]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path, rows, fields=("text", "label"), delimiter=","):
    """Write labelled rows as CSV (or TSV with delimiter="\\t"); returns the path."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_jsonl(path, rows):
    """Write rows as JSON Lines; returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory):
    """{family: directory} of tiny KerasHub presets (GPT-2, Llama) built offline (tests/tiny_presets.py)."""
    from tiny_presets import build_presets

    return build_presets(str(tmp_path_factory.mktemp("presets")))
