"""Run configuration: defaults, YAML files, `--set section.key=value` overrides, validation.

The config has four sections, kept apart as in TF Model Garden: `data` and `model` (what is
learned), `train` (how long and how: steps, batch, optimizer, checkpoints) and `runtime` (where:
strategy, devices, precision, XLA). The defaults below are `configs/char_transformer.yaml`.
"""

import copy
import difflib

import yaml

from tflm.errors import TflmError

DEFAULTS = {
    "data": {
        "source": "default",  # default (embedded Python manual) | files | tfds
        "paths": [],  # files: paths or globs of UTF-8 text
        "tfds_name": "",  # tfds: dataset name, e.g. "tiny_shakespeare"
        "tfds_split": "train",
        "tfds_validation_split": "validation",
        "tfds_text_feature": "text",
        "tfds_data_dir": "",  # tfds: where prepared datasets live ("" = TFDS default)
        "validation_fraction": 0.1,  # default/files: share of text held out, deterministically
        "seq_len": 64,  # tokens of context the model sees
        "max_vocab_size": 1000,  # most frequent characters kept; the rest map to OOV
        "shuffle_buffer": 10000,  # windows
        "shard_policy": "auto",  # auto (file when files >= workers, else data) | file | data
    },
    "model": {
        "type": "transformer",  # transformer | lstm
        "embed_dim": 128,
        "num_layers": 4,
        "num_heads": 4,  # transformer only
        "ff_dim": 512,  # transformer only
        "lstm_units": 256,  # lstm only
        "dropout": 0.0,
    },
    "train": {
        "steps": 2000,  # total optimizer steps; a resumed run stops here too
        "global_batch_size": 12,  # windows per step, summed over all replicas
        "eval_every": 250,
        "eval_batches": 0,  # 0 = the whole validation split
        "checkpoint_every": 0,  # 0 = at every evaluation
        "keep_checkpoints": 3,
        "learning_rate": 3.0e-3,  # peak, after linear warmup; cosine decay after
        "warmup_steps": 100,
        "min_learning_rate_ratio": 0.1,  # cosine decays to this fraction of the peak
        "weight_decay": 0.01,
        "clip_norm": 1.0,  # global norm of the all-reduced gradient
        "seed": 0,
    },
    "runtime": {
        "strategy": "auto",  # auto | default | mirrored | multi_worker
        "logical_cpus": 0,  # split the CPU into N logical devices (MirroredStrategy on a laptop)
        "jit_compile": True,  # XLA for the per-replica forward/backward
        "precision": "float32",  # float32 | mixed_bfloat16
        "cluster_timeout_s": 120,  # multi_worker: how long to wait for peers
        "intra_op_threads": 0,  # 0 = TensorFlow's default (all cores)
        "inter_op_threads": 0,
    },
}

CHOICES = {
    "data.source": ("default", "files", "tfds"),
    "data.shard_policy": ("auto", "file", "data"),
    "model.type": ("transformer", "lstm"),
    "runtime.strategy": ("auto", "default", "mirrored", "multi_worker"),
    "runtime.precision": ("float32", "mixed_bfloat16"),
}

POSITIVE = (
    "data.seq_len", "data.max_vocab_size", "data.shuffle_buffer", "model.embed_dim",
    "model.num_layers", "model.num_heads", "model.ff_dim", "model.lstm_units", "train.steps",
    "train.global_batch_size", "train.eval_every", "train.keep_checkpoints",
    "train.learning_rate", "train.clip_norm", "runtime.cluster_timeout_s",
)
NON_NEGATIVE = (
    "train.eval_batches", "train.checkpoint_every", "train.warmup_steps", "train.weight_decay",
    "train.min_learning_rate_ratio", "train.seed", "runtime.logical_cpus",
    "runtime.intra_op_threads", "runtime.inter_op_threads",
)


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file at `path`, then `section.key=value` overrides; validated."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        merge(config, read_yaml(path), origin=str(path))
    for override in overrides:
        key, value = parse_override(override)
        merge(config, {key.split(".")[0]: {key.split(".")[1]: value}}, origin="--set")
    validate(config)
    return config


def read_yaml(path):
    """The mapping in a YAML file, or a TflmError saying why there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise TflmError(f"cannot read config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise TflmError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TflmError(f"{path} must hold a mapping of sections, found {type(data).__name__}")
    return data


def parse_override(text):
    """Split `section.key=value` into ("section.key", value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or key.count(".") != 1:
        raise TflmError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def merge(config, updates, origin):
    """Copy `updates` (section -> key -> value) into `config`, checking names and types."""
    for section, values in updates.items():
        if section not in DEFAULTS:
            raise TflmError(f"{origin}: unknown section {section!r}{suggest(section, DEFAULTS)}")
        if not isinstance(values, dict):
            raise TflmError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                dotted = f"{section}.{key}"
                raise TflmError(f"{origin}: unknown key {dotted!r}{suggest(dotted, all_keys())}")
            config[section][key] = coerce(f"{section}.{key}", value, DEFAULTS[section][key])


def all_keys():
    """Every valid `section.key` name."""
    return [f"{s}.{k}" for s, keys in DEFAULTS.items() for k in keys]


def suggest(name, candidates):
    """', did you mean X?' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def coerce(key, value, default):
    """`value` converted to the type of `default`, or a TflmError naming `key`."""
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-3" as a string
            except ValueError:
                pass
    elif expected is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif expected is str:
        if isinstance(value, str):
            return value
    raise TflmError(f"{key} must be {expected.__name__}, got {value!r}")


def validate(config):
    """Raise a TflmError for the first impossible value."""
    for key, choices in CHOICES.items():
        if get(config, key) not in choices:
            raise TflmError(f"{key} must be one of {', '.join(choices)}, got {get(config, key)!r}")
    for key in POSITIVE:
        if get(config, key) <= 0:
            raise TflmError(f"{key} must be positive, got {get(config, key)}")
    for key in NON_NEGATIVE:
        if get(config, key) < 0:
            raise TflmError(f"{key} must not be negative, got {get(config, key)}")
    data, model, train = config["data"], config["model"], config["train"]
    if not 0 < data["validation_fraction"] < 1:
        raise TflmError(f"data.validation_fraction must be between 0 and 1, got {data['validation_fraction']}")
    if not 0 <= model["dropout"] < 1:
        raise TflmError(f"model.dropout must be in [0, 1), got {model['dropout']}")
    if train["min_learning_rate_ratio"] > 1:
        raise TflmError("train.min_learning_rate_ratio must be at most 1")
    if model["type"] == "transformer" and model["embed_dim"] % model["num_heads"]:
        raise TflmError(
            f"model.embed_dim ({model['embed_dim']}) must be divisible by model.num_heads ({model['num_heads']})"
        )
    if data["source"] == "files" and not data["paths"]:
        raise TflmError("data.source=files needs data.paths (files or globs)")
    if data["source"] == "tfds" and not data["tfds_name"]:
        raise TflmError("data.source=tfds needs data.tfds_name")


def get(config, dotted):
    """config["section"]["key"] for "section.key"."""
    section, key = dotted.split(".")
    return config[section][key]


def dump(config):
    """The config as YAML text, sections in their usual order."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


# Keys that may change when a run directory is resumed: how long to train, and where.
RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
                     "train.keep_checkpoints")


def check_resume_compatible(saved, requested):
    """Raise if `requested` changes what the run in a directory learns (model, data, optimizer)."""
    for key in all_keys():
        if key.startswith("runtime.") or key in RESUMABLE_CHANGES:
            continue
        if get(saved, key) != get(requested, key):
            raise TflmError(
                f"the run directory was trained with {key}={get(saved, key)!r}, not "
                f"{get(requested, key)!r}; use a new --run-dir or the same setting"
            )
