"""Run configuration: one typed, frozen dataclass per section, with each field's default and meaning.

The config has five sections, kept apart as in TF Model Garden: `data` and `model` (what is
learned from, and by what network), `train` (how long and how: steps, batch, optimizer,
checkpoints), `runtime` (where: strategy, devices, precision, XLA) and `task` (what is learned:
next tokens, or labels of texts). The dataclasses below are the one source of truth: the
defaults are what `python -m tflm.train` runs with no arguments, the comment beside a field is
its documentation (`--print-config` and every saved `config.yaml` repeat it), and YAML files,
`--set section.key=value` overrides and the configs saved in run directories all load through
the same checks, so an impossible value is a one-line error before anything is written (the
checks of a field's type and range: tflm/typed_fields.py; YAML bounded against alias bombs and
deep nesting: tflm/bounded_yaml.py).

    config = load_config("configs/char_lstm.yaml", ["train.steps=500"])
    config.train.steps                       # 500
    config = updated(config, model={"dropout": 0.2})
"""

import dataclasses
import difflib
import functools
import inspect
import re
from typing import Annotated

import yaml

from tflm.atomic import read_bytes
from tflm.bounded_yaml import TooLarge, safe_load
from tflm.config_checks import check_loss_scaling, check_pipeline, check_preset, check_tensor_parallel
from tflm.errors import TflmError
from tflm.tasks import task_class
from tflm.typed_fields import PATHS, OneOf, Range, convert, field_types, shown

INT32_MAX = 2**31 - 1
MANY = 10**12  # a bound for counts of steps: far beyond any run, well inside int64 and float64
COUNT = Range(0, INT32_MAX)
STEPS = Range(1, MANY)
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)


# A tokenizer kind is the module tflm/data/tokenizers/<kind>.py: list it in `tokenizer`, and any
# options of its learning as fields below (its class's `learn_options` reads them; an option that
# changes the ids also goes in tflm.data.prepare's STORE_SETTINGS and tflm.runs.init_from's
# MATCHING_DATA_KEYS, as data.sentencepiece_model does).
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What text the model learns from, and how it is cut into windows."""

    source: Annotated[str, OneOf("default", "files", "tfds")] = "default"  # default: the Python manual in CPython
    paths: PATHS = ()                     # files: paths or globs of UTF-8 text (local or any tf.io.gfile URL)
    validation_paths: PATHS = ()          # validation text (files or globs); empty: held out from the training text
    tfds_name: str = ""                   # tfds: dataset name, e.g. "tiny_shakespeare"
    tfds_split: str = "train"             # tfds: the split to train on
    tfds_validation_split: str = "validation"  # tfds: the split to validate on
    tfds_text_feature: str = "text"       # tfds: the feature that holds the text
    tfds_data_dir: str = ""               # tfds: where prepared datasets live ("" = TFDS's default)
    validation_fraction: Annotated[float, Range(0, 1, open_low=True)] = 0.1  # without validation_paths: share held out
    seq_len: Annotated[int, Range(1, 2**20)] = 64  # tokens of context the model sees
    tokenizer: Annotated[str, OneOf("char", "byte", "wordpiece", "sentencepiece", "preset")] = "char"  # text -> token ids; preset: model.preset's (implied by it)
    vocab_size: Annotated[int, Range(3, INT32_MAX)] = 1000  # char: at most this many ids; subword: exactly; byte: 257
    sentencepiece_model: Annotated[str, OneOf("unigram", "bpe")] = "unigram"  # sentencepiece: the algorithm
    store: str = ""                       # the prepared token store ("" = RUN_DIR/store); a path runs can share

    def check(self):
        """Raise for values that are wrong together (or past bounds a field's Range cannot say)."""
        if self.validation_fraction >= 1:
            raise TflmError(f"data.validation_fraction must be between 0 and 1, got {self.validation_fraction}")
        if self.source == "files" and not self.paths:
            raise TflmError("data.source=files needs data.paths (files or globs)")
        if self.source == "tfds" and not self.tfds_name:
            raise TflmError("data.source=tfds needs data.tfds_name")


# A model type is the file tflm/models/<type>.py (see tflm/models/build.py): list it in `type`, add
# the fields it reads below, and their checks to `check`.
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: a Transformer decoder, a stacked LSTM, or a pretrained KerasHub model."""

    type: Annotated[str, OneOf("transformer", "lstm", "preset")] = "transformer"  # the architecture; preset: model.preset's (implied by it)
    preset: str = ""                      # a KerasHub preset: a local directory, or a kaggle:// or hf:// handle ("" = none)
    embed_dim: Annotated[int, Range(1, 65536)] = 128  # width of token embeddings (and of the Transformer)
    num_layers: Annotated[int, Range(1, 1024)] = 4  # decoder blocks or LSTM layers
    num_heads: Annotated[int, Range(1, 1024)] = 4  # transformer: attention heads (divide embed_dim)
    ff_dim: Annotated[int, Range(1, 2**20)] = 512  # transformer: feed-forward width
    lstm_units: Annotated[int, Range(1, 65536)] = 256  # lstm: units per layer
    dropout: Annotated[float, Range(0, 1)] = 0.0  # fraction of activations dropped while training

    def check(self):
        """Raise for values that are wrong together (or past bounds a field's Range cannot say)."""
        if self.dropout >= 1:
            raise TflmError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if (self.type == "preset") != bool(self.preset):
            raise TflmError("model.type=preset needs model.preset (a KerasHub preset directory or handle)"
                            if self.preset == "" else f"model.preset is set, so model.type must be preset, not {self.type}")
        if self.preset and self.dropout:
            raise TflmError("model.dropout applies to tflm's own models; a preset fine-tunes without dropout "
                            "(KerasHub's dropout draws no per-example masks, so N devices would not equal one)")
        if self.type == "transformer" and self.embed_dim % self.num_heads:
            raise TflmError(f"model.embed_dim ({self.embed_dim}) must be divisible by "
                            f"model.num_heads ({self.num_heads})")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how: steps, batch, optimizer, evaluations and checkpoints."""

    steps: Annotated[int, STEPS] = 2000   # total optimizer steps; a resumed run stops here too
    global_batch_size: Annotated[int, Range(1, 2**24)] = 12  # windows per step, summed over all replicas
    eval_every: Annotated[int, STEPS] = 250  # steps between evaluations (and history lines)
    eval_batches: Annotated[int, COUNT] = 0  # global batches per evaluation; 0 = about 10% of training time
    steps_per_loop: Annotated[int, Range(1, 10**6)] = 50  # steps per host call; logs, evaluations, checkpoints, preemption checks between
    checkpoint_every: Annotated[int, Range(0, MANY)] = 0  # steps between checkpoints; 0 = at every evaluation
    keep_checkpoints: Annotated[int, Range(1, 10**6)] = 3  # newest checkpoints kept
    learning_rate: Annotated[float, POSITIVE] = 3.0e-3  # peak, after linear warmup; cosine decay after
    warmup_steps: Annotated[int, Range(0, MANY)] = 100  # steps of linear warmup from 0
    min_learning_rate_ratio: Annotated[float, Range(0, 1)] = 0.1  # cosine decays to this fraction of the peak
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.01  # AdamW's, not applied to biases and norms
    clip_norm: Annotated[float, POSITIVE] = 1.0  # global norm of the all-reduced gradient
    seed: Annotated[int, Range(0, INT32_MAX)] = 0  # initial weights, shuffling and dropout
    microbatches: Annotated[int, Range(1, 2**16)] = 1  # each replica's batch in this many parts, gradients summed: less memory, same results
    max_nonfinite_steps: Annotated[int, Range(0, 10**6)] = 0  # steps with a NaN/inf gradient skipped before stopping (exit 4)
    init_from: str = ""                   # a run directory: start from its latest weights and tokenizer ("" = random)
    lora_rank: Annotated[int, Range(0, 65536)] = 0  # preset: > 0 trains only LoRA adapters of this rank (and a classifier head); 0 = every weight


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and with what: distribution strategy, devices, threads, precision, XLA."""

    strategy: Annotated[str, OneOf("auto", "default", "mirrored", "multi_worker")] = "auto"  # auto: TF_CONFIG -> multi_worker, >= 2 devices -> mirrored
    cluster: Annotated[str, OneOf("tf_config", "slurm")] = "tf_config"  # tf_config: the cluster is in TF_CONFIG; slurm: built from srun's SLURM_* variables
    logical_cpus: Annotated[int, Range(0, 256)] = 0  # >= 2 splits the CPU so MirroredStrategy runs on a laptop
    jit_compile: bool = True              # XLA for the per-replica forward/backward
    pipeline_stages: Annotated[int, Range(1, 1024)] = 1  # > 1: the model cut into this many stages, one device each (pipeline parallelism)
    pipeline_schedule: Annotated[str, OneOf("gpipe", "1f1b")] = "1f1b"  # gpipe: all forwards, then all backwards; 1f1b: at most pipeline_stages micro-batches held
    pipeline_trace_steps: Annotated[int, Range(0, 10**4)] = 0  # record each stage's work for this many steps: RUN/pipeline_trace.jsonl, tflm.plot --pipeline
    tensor_parallel: Annotated[int, Range(1, 1024)] = 1  # > 1: each Transformer block's heads and feed-forward columns split over this many devices per stage
    precision: Annotated[str, OneOf("float32", "mixed_bfloat16", "mixed_float16", "auto")] = "float32"  # mixed_*: bf16/fp16 compute, fp32 weights (fp16 with loss scaling); auto: bf16 where the devices and the step reach fast bf16, else float32 (tflm/training/precision.py)
    cluster_timeout_s: Annotated[int, Range(1, 7 * 86400)] = 120  # multi_worker: how long an unreachable peer is waited for
    intra_op_threads: Annotated[int, Range(0, 4096)] = 0  # 0 = TensorFlow's default (all cores)
    inter_op_threads: Annotated[int, Range(0, 4096)] = 0  # 0 = TensorFlow's default


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What is learned: next tokens of plain text, or labels of labelled text."""

    type: Annotated[str, OneOf("lm", "classify")] = "lm"  # lm: next-token prediction; classify: a label per text
    text_field: str = "text"              # classify: the column (CSV/TSV), field (JSONL) or TFDS feature of the text
    label_field: str = "label"            # classify: the column, field or TFDS feature of the label
    pooling: Annotated[str, OneOf("last", "mean")] = "last"  # classify: the last real token's features, or their mean
    freeze_backbone_steps: Annotated[int, Range(0, MANY)] = 0  # classify: steps that train only the head at first
    class_weights: Annotated[str, OneOf("none", "balanced")] = "none"  # classify: balanced weighs classes by 1 / frequency


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "runtime": RuntimeConfig,
            "task": TaskConfig}


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run's configuration: build it with `load_config`, `Config.from_dict` or `updated`."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    # The `section.key` names set explicitly (by a config file, --set or `updated`), not defaults.
    given: frozenset = dataclasses.field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, sections, origin="config", saved=False):
        """A validated Config from {section: {key: value}}; missing keys take their defaults,
        except in a `saved` config (a run directory's), which must be whole."""
        if saved:
            sections = migrate(sections)
            check_complete(sections, origin)
        return updated(cls(), origin=origin, **sections)

    def to_dict(self):
        """{section: {key: value}} with plain YAML/JSON types (lists, not tuples)."""
        return {name: {f.name: _plain(getattr(getattr(self, name), f.name))
                       for f in dataclasses.fields(SECTIONS[name])} for name in SECTIONS}


# How keys changed since tflm 0.1: configs saved in run directories are migrated; a config a
# user writes is told (one line) what to use instead.
ADDED_SINCE_0_1 = ("train.max_nonfinite_steps", "runtime.cluster", "data.validation_paths", "data.tokenizer",
                   "data.sentencepiece_model", "data.store", "train.steps_per_loop", "train.init_from",
                   "task.type", "task.text_field", "task.label_field", "task.pooling",
                   "task.freeze_backbone_steps", "task.class_weights", "train.microbatches",
                   "runtime.pipeline_stages", "runtime.pipeline_schedule", "runtime.pipeline_trace_steps",
                   "runtime.tensor_parallel", "model.preset", "train.lora_rank")  # saved configs without them take the defaults
RENAMED = {"data.max_vocab_size": "data.vocab_size"}
RETIRED = {"data.shuffle_buffer": "windows are shuffled over the whole token store, with no buffer",
           "data.shard_policy": "every worker reads the token store by window index"}


def migrate(sections):
    """A saved config's sections with renamed keys renamed and retired ones dropped."""
    migrated = {}
    for section, values in sections.items():
        if not isinstance(values, dict):
            migrated[section] = values
            continue
        migrated[section] = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted in RETIRED:
                continue
            migrated[section][RENAMED.get(dotted, dotted).split(".")[1]] = value
    return migrated


def check_complete(sections, origin):
    """Raise unless a saved config names every key (a truncated file would otherwise load with
    defaults in place of what the run was trained with)."""
    for key in all_keys():
        section, name = key.split(".")
        values = sections.get(section)
        if key not in ADDED_SINCE_0_1 and name not in (values if isinstance(values, dict) else {}):
            raise TflmError(f"{origin} has no {key}: the file is damaged; restore it from a copy "
                            "(it must match the run's checkpoints)")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def updated(config, origin="--set", **sections):
    """`config` with {key: value} changes per section, checked as a config file is: unknown
    names get a suggestion, values are converted to the field's type and range-checked."""
    changes, given = {}, set()
    sections = with_preset_implied(config, sections)
    for section, values in sections.items():
        if section not in SECTIONS:
            raise TflmError(f"{origin}: unknown section {shown(section)}{suggest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise TflmError(f"{origin}: section {section!r} must be a mapping")
        fields = field_types(SECTIONS[section])
        converted = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted in RENAMED:
                raise TflmError(f"{origin}: {dotted} is now {RENAMED[dotted]}")
            if dotted in RETIRED:
                raise TflmError(f"{origin}: {dotted} no longer exists: {RETIRED[dotted]}")
            if key not in fields:
                raise TflmError(f"{origin}: unknown key {shown(dotted)}{suggest(dotted, all_keys())}")
            converted[key] = convert(dotted, value, *fields[key])
        changes[section] = dataclasses.replace(getattr(config, section), **converted)
        given |= {f"{section}.{key}" for key in converted}
    config = dataclasses.replace(config, **changes, given=config.given | given)
    validate(config)
    return config


# What a preset brings: its network (model.type: preset) and its tokenizer (data.tokenizer: preset).
PRESET_IMPLIES = {"model.type": "preset", "data.tokenizer": "preset"}


def with_preset_implied(config, sections):
    """`sections` with what a newly set model.preset implies (PRESET_IMPLIES) in place of defaults
    (a config file that lists every key names model.type: transformer); another value stays, and
    validate says it cannot go with a preset."""
    if not isinstance(sections.get("model"), dict) or not sections["model"].get("preset"):
        return sections
    sections = {name: dict(values) if isinstance(values, dict) else values for name, values in sections.items()}
    for key, value in PRESET_IMPLIES.items():
        section, name = key.split(".")
        values = sections.setdefault(section, {})
        default = getattr(SECTIONS[section](), name)
        if isinstance(values, dict) and values.get(name, getattr(getattr(config, section), name)) == default:
            values[name] = value
    return sections


def validate(config):
    """Raise a TflmError for the first impossible value (fields are checked as they are set)."""
    for section in SECTIONS:
        check = getattr(getattr(config, section), "check", None)
        if check:
            check()
    task_class(config.task.type).check_config(config)
    check_pipeline(config)
    check_tensor_parallel(config)
    check_loss_scaling(config)
    check_preset(config)


def load_config(path=None, overrides=(), saved=False):
    """Defaults, then the YAML file at `path`, then `section.key=value` overrides; validated.

    A `saved` file (a run directory's own config.yaml, passed back to resume it) is migrated from
    older tflm versions as the run directory's copy is."""
    config = Config()
    if path:
        sections = read_yaml(path)
        config = updated(config, origin=str(path), **(migrate(sections) if saved else sections))
    changes = {}
    for override in overrides:  # checked together: one may need another (task.type=classify, data.source)
        key, value = parse_override(override)
        section, name = key.split(".")
        changes.setdefault(section, {})[name] = value
    return updated(config, **changes) if changes else config


def read_yaml(path):
    """The mapping in a YAML file, or a TflmError saying why there is none."""
    try:
        raw = read_bytes(path)
    except OSError as error:
        raise TflmError(f"cannot read config {path}: {error.strerror}") from None
    except Exception as error:  # tf.errors from a remote filesystem
        raise TflmError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    try:
        data = safe_load(raw.decode("utf-8"))
    except TooLarge as error:
        raise TflmError(f"{path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:  # ValueError: an int of > 4300 digits
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
        raise TflmError(f"--set expects section.key=value, got {shown(text)}")
    try:
        value = safe_load(raw) if raw.strip() else raw
    except TooLarge as error:
        raise TflmError(f"--set {shown(key.strip())}: {error}") from None
    except (yaml.YAMLError, ValueError):  # not YAML: the text itself (checked as the key's type)
        value = raw
    return key.strip(), value


def all_keys():
    """Every valid `section.key` name."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def suggest(name, candidates):
    """', did you mean X?' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


@functools.cache
def field_comments(cls):
    """{field name: the comment beside it in this file} for a section class."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): .*?  # (.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def dump(config):
    """The config as YAML, every key with the comment from its dataclass."""
    lines = []
    for section, values in config.to_dict().items():
        cls = SECTIONS[section]
        lines.append(f"{section}:  # {cls.__doc__}")
        comments = field_comments(cls)
        for key, value in values.items():
            text = yaml.safe_dump({key: value}, default_flow_style=True, allow_unicode=True, width=10**6)
            text = text.strip()[1:-1]  # "{key: value}" -> "key: value"
            lines.append((f"  {text:<36}" + (f"  # {comments[key]}" if key in comments else "")).rstrip())
    return "\n".join(lines) + "\n"


# Keys that may change when a run directory is resumed: how long to train, and how often to look.
RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.max_nonfinite_steps", "train.steps_per_loop",
                     "train.init_from", "train.microbatches")  # init_from: only a new run starts from it


def check_resume_compatible(saved, requested):
    """Raise if `requested` changes what the run in a directory learns (model, data, optimizer)."""
    saved_values, requested_values = saved.to_dict(), requested.to_dict()
    for key in all_keys():
        section, name = key.split(".")
        if section == "runtime" or key in RESUMABLE_CHANGES:
            continue
        if saved_values[section][name] != requested_values[section][name]:
            raise TflmError(
                f"the run directory was trained with {key}={shown(saved_values[section][name])}, not "
                f"{shown(requested_values[section][name])}; use a new --run-dir or the same setting"
            )
