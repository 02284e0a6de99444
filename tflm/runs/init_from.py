"""`train.init_from` / `--init-from RUN_DIR`: a new run that starts from another run's weights.

The new run takes the source run's latest checkpoint (model weights only: the optimizer, its
schedule and the step start afresh) and its tokenizer, and trains on its own data. It records
where it came from in RUN_DIR/init_from.json (source, checkpoint, step, tokenizer fingerprint).
Only a new run starts from the source: resuming the new run restores its own checkpoints and
ignores train.init_from. Everything is checked before the run directory is created.

The settings the new run must share with the source (`model_keys`: the network and the tokenizer)
are taken from the source run's config unless the config file or `--set` gives them; only a given
value that differs from the source's is an error. The source's newest checkpoint whose weights
read back whole and finite is taken, as resuming does.
"""

import dataclasses
import json
import os
import sys

from tflm.config import all_keys, shown, updated
from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.models.build import weight_shape_keys
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import checkpoint_step, file_problem, first_line, newest_usable, trained_checkpoints
from tflm.tasks import task_class

RECORD_FILE = "init_from.json"
# Besides the model section, what fixes the shapes of the weights and the meaning of token ids.
MATCHING_DATA_KEYS = ("data.tokenizer", "data.vocab_size", "data.sentencepiece_model")


def model_keys(model_type):
    """The settings a run must share with the run it starts from: the model section, the tokenizer's,
    and the other settings that fix the shapes of that model's weights (e.g. a Transformer's
    data.seq_len, the size of its position embeddings)."""
    keys = [k for k in all_keys() if k.startswith("model.")] + list(MATCHING_DATA_KEYS)
    return keys + list(weight_shape_keys(model_type))


def with_source_settings(config, run_dir, resuming):
    """`config` with the model_keys it does not give (Config.given) taken from the source run, and
    one line saying which changed; when `resuming` the run in `run_dir`, taken from that run's own
    config instead (what it took when it started), so the same command resumes it."""
    path = config.train.init_from
    origin = run_dir if resuming else path
    if not path or not runs.is_run_dir(origin):
        return config  # check_source says what is wrong with the source
    source = runs.read_config(origin).to_dict()
    if not task_class(source["task"]["type"]).makes_language_model and not resuming:
        return config  # not a language model: check_source refuses it
    model_type = config.model.type if "model.type" in config.given else source["model"]["type"]
    current, changes, taken = config.to_dict(), {}, []
    for key in model_keys(model_type):
        section, name = key.split(".")
        if key not in config.given and source[section][name] != current[section][name]:
            changes.setdefault(section, {})[name] = source[section][name]
            taken.append(f"{key}={shown(source[section][name])}")
    if not changes:
        return config
    if resuming:
        print(f"tflm: resuming {run_dir} with its own {', '.join(taken)} (--init-from starts only a new run)",
              flush=True)
    else:
        print(f"tflm: --init-from: took {', '.join(taken)} from the source run {path}", flush=True)
    return dataclasses.replace(updated(config, origin=f"--init-from {path}", **changes), given=config.given)


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
    checkpoints = trained_checkpoints(path, f"--init-from {path}")
    source_config = runs.read_config(path)
    if not task_class(source_config.task.type).makes_language_model:
        raise TflmError(f"--init-from {path}: a {source_config.task.type} run; start from a language-model run")
    if source_config.train.lora_rank:
        raise TflmError(f"--init-from {path}: a LoRA run (train.lora_rank={source_config.train.lora_rank}) keeps only "
                        f"its adapters; start from its preset (model.preset={source_config.model.preset}) instead")
    check_same_model(path, source_config, config)
    return Source(path, usable_checkpoint(path, checkpoints))


def usable_checkpoint(path, checkpoints):
    """The newest of the source run's `checkpoints` whose values read back whole and finite,
    with a warning line if newer ones cannot be used; a TflmError if none can."""
    chosen, problems = newest_usable(checkpoints, file_problem)
    if chosen is None:
        newest, problem = problems[0]
        raise TflmError(f"--init-from {path}: none of its {len(checkpoints)} checkpoint(s) can be used (the newest, "
                        f"{os.path.basename(newest)}: {problem})")
    if problems:
        skipped = "; ".join(f"{os.path.basename(p)}: {problem}" for p, problem in problems)
        print(f"tflm: warning: --init-from {path}: starting from {os.path.basename(chosen)}, its newest usable "
              f"checkpoint; skipped {skipped}", file=sys.stderr, flush=True)
    return chosen


def check_not_itself(path, run_dir):
    """Raise if train.init_from names the run directory being trained (or resumed)."""
    if path and os.path.normpath(os.path.abspath(path)) == os.path.normpath(os.path.abspath(run_dir)):
        raise TflmError(f"--init-from {path} is the run directory itself; resuming it needs no --init-from")


def check_same_model(path, source_config, config):
    """Raise naming the first setting that makes `config`'s weights differ from the source's."""
    source, wanted = source_config.to_dict(), config.to_dict()
    for key in model_keys(config.model.type):
        section, name = key.split(".")
        if source[section][name] != wanted[section][name]:
            raise TflmError(f"--init-from {path}: the source run has {key}={shown(source[section][name])}, this "
                            f"run {shown(wanted[section][name])}; leave {key} out (of --set and the --config file) "
                            "to take the source run's")


def restore_source(model, source):
    """Load the source checkpoint's model weights into `model` (a language model)."""
    try:
        tf.train.Checkpoint(model=model).restore(source.checkpoint).expect_partial().assert_existing_objects_matched()
    except Exception as error:  # AssertionError, or a tf.errors.OpError for a file damaged since it was checked
        raise TflmError(f"--init-from: cannot restore {source.checkpoint} into this model: "
                        f"{first_line(error)}") from None
