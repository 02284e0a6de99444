"""`python -m tflm.train`: train a language model (or a text classifier) into a run directory.

Runs alone, or on every worker of a `TF_CONFIG` cluster (see `tflm.launch` for localhost).
Running the same command on an existing run directory resumes from its latest checkpoint; a run
directory is never restarted, truncated or overwritten unless `--restart` says so (and then the
old one is moved aside, not deleted).

Start-up order, so that bad input fails before anything is written: check the config and the
cluster description; check the run directory and lock it (a new one: reserve it, see
tflm.run_dir.reserve, so that its store is prepared in the reservation); load TensorFlow (seconds,
more on a busy host: before any deadline); meet the other workers (deadline:
runtime.cluster_timeout_s); start TensorFlow's cluster (same deadline, enforced by a watchdog);
read the data (no deadline: it can take long on a large corpus); build the model; restore; only
then create the run directory, and train.

`--init-from RUN_DIR` (train.init_from) starts a new run from another run's weights and tokenizer
(tflm.init_from); `task.type: classify` trains a classifier on labelled text (tflm.labelled,
tflm.classifier) through the same loop.
"""

import argparse
import os
import shlex
import sys

from tflm import run_dir as runs
from tflm.atomic import check_persistent, is_local
from tflm.cluster import use_cluster
from tflm.checkpoint import Checkpointer, list_checkpoints, checkpoint_dir
from tflm.config import check_resume_compatible, dump, load_config
from tflm.controller import Controller
from tflm.data import check_fits, eval_batches_per_pass, eval_dataset_fn, train_dataset_fn
from tflm.errors import TflmError, exit_on_user_error
from tflm.inference import check_recorded_tokenizer
from tflm.init_from import RECORD_FILE, check_not_itself, check_source, restore_source, with_source_settings
from tflm.labelled import LABELS_FILE, load_labels, read_labelled, save_labels
from tflm.lazy import keras, tf
from tflm.prepare import StoreExists, check_store_matches, prepare_store
from tflm.progress import Progress
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.store import TokenStore
from tflm.strategy import (current_task, exit_if_a_peer_is_lost, leave_cluster_at_once, leave_when_done,
                           make_strategy, resolve_strategy_name, startup_watchdog, wait_for_every_worker,
                           wait_for_peers)
from tflm.tokenizer import load_tokenizer


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: the built-in char_transformer)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--run-dir", help="where to write (default: runs/<model>-<time>-<id>); resumes if it exists")
    parser.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi_worker"),
                        help="shorthand for --set runtime.strategy=...")
    parser.add_argument("--restart", action="store_true",
                        help="start over in an existing --run-dir: it is first renamed to RUN_DIR.replaced-<time>")
    parser.add_argument("--init-from", metavar="RUN_DIR",
                        help="a new run starts from this run's latest weights and tokenizer "
                             "(shorthand for --set train.init_from=RUN_DIR)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@leave_cluster_at_once
@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.train` and `tflm train`."""
    args = parse_args(argv)
    overrides = args.set + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    overrides += [f"train.init_from={args.init_from}"] if args.init_from else []
    config = load_config(args.config, overrides, saved=is_own_config(args.config, args.run_dir))
    if args.print_config:
        print(dump(config), end="")
        return 0
    for option, path in (("--run-dir", args.run_dir), ("data.store", config.data.store)):
        if path:
            check_persistent(path, option)
    command = ["python", "-m", "tflm.train", *(sys.argv[1:] if argv is None else argv)]
    train(config, args.run_dir, restart=args.restart, command=command)
    return 0


def is_own_config(config_path, run_dir):
    """Whether `config_path` is the config.yaml that `run_dir` saved (resuming with it as --config)."""
    if not config_path or not run_dir:
        return False
    return os.path.normpath(config_path) == os.path.normpath(os.path.join(run_dir, "config.yaml"))


def train(config, run_dir=None, restart=False, command=None):
    """Train (or resume) the run in `run_dir` as configured; returns the run directory.
    `command`: the command line (a list) that called this, to say how to resume if it stops early."""
    use_cluster(config.runtime)
    task = current_task()
    check_strategy_matches_cluster(config.runtime, task)
    if task.num_workers > 1 and not run_dir:
        raise TflmError("multi-worker training needs --run-dir, the same shared path on every worker")
    chosen = not run_dir
    run_dir = run_dir or runs.default_run_dir(config)
    resume = resume_command(command, run_dir, chosen, restart, task.num_workers)
    prefix = f"[{task.name}] " if task.num_workers > 1 else ""
    check_not_itself(config.train.init_from, run_dir)
    if config.train.init_from:  # before the run directory's config is compared with it
        config = with_source_settings(config, run_dir, resuming=not restart and has_progress(run_dir))
    try:
        resuming = open_run_dir(run_dir, config, task, restart)
        source = check_source(config, run_dir, resuming)
        tf.import_now()  # not under the deadlines below: it takes longer on a busy host
        if task.num_workers > 1:
            wait_for_peers(task, config.runtime.cluster_timeout_s)
        with startup_watchdog(task, config.runtime.cluster_timeout_s, prefix):
            strategy = make_strategy(config.runtime)
        with exit_if_a_peer_is_lost(task, prefix, lambda: None):
            return train_in(config, run_dir, task, strategy, resuming, prefix, source, resume)
    finally:
        runs.release_lock(run_dir)  # if this process holds it; and what it assembled of a new run_dir


def resume_command(command, run_dir, chosen, restart, workers=1):
    """What resumes this run if it stops early, when running `command` again would not (it
    chose its run directory, or moves the run aside with --restart); None when it would."""
    if not chosen and not restart:
        return None
    if command is None:  # called from Python
        return f"train(config, run_dir={run_dir!r})"
    if workers > 1:  # each worker's own command line lacks its TF_CONFIG and the launcher around it
        return "the same command on every worker, without --restart"
    restarts = [arg for arg in command if len(arg) > 4 and "--restart".startswith(arg)]  # argparse takes --rest
    return shlex.join([arg for arg in command if arg not in restarts] + (["--run-dir", run_dir] if chosen else []))


def check_strategy_matches_cluster(runtime, task):
    """Raise if TF_CONFIG describes several workers but the strategy would train each alone."""
    if task.num_workers > 1 and resolve_strategy_name(runtime, probe_devices=False) != "multi_worker":
        raise TflmError(f"TF_CONFIG describes a cluster of {task.num_workers} workers, but "
                        f"runtime.strategy={runtime.strategy} would train each of them alone on the same "
                        "run directory; use runtime.strategy=multi_worker (or auto)")


def open_run_dir(run_dir, config, task, restart):
    """Check `run_dir` before anything else is done; returns whether training resumes.

    The chief locks an existing run directory, or reserves a new one (tflm.run_dir.reserve), at
    once, so a second trainer stops here, before it prepares anything. `restart` moves an
    existing directory aside. A directory that holds no checkpoint and no history (a run that
    failed before its first checkpoint) starts again with the new config.
    """
    runs.check_usable(run_dir)
    if not task.is_chief:
        return runs.is_run_dir(run_dir) and has_progress(run_dir) and not restart
    if not runs.is_run_dir(run_dir) and runs.reserve(run_dir):
        return False
    runs.acquire_lock(run_dir)
    if restart:
        moved = runs.move_aside(run_dir)
        print(f"tflm: --restart: moved the previous run to {moved}", flush=True)
        if not runs.reserve(run_dir):
            raise TflmError(f"{run_dir} was created by another process meanwhile; use another --run-dir")
        return False
    if has_progress(run_dir):
        check_resume_compatible(runs.read_config(run_dir), config)
        return True
    return False


def has_progress(run_dir):
    """Whether a run directory holds anything a run produced: a checkpoint or a history record."""
    return bool(list_checkpoints(checkpoint_dir(run_dir))) or bool(runs.read_history(run_dir))


def train_in(config, run_dir, task, strategy, resuming, prefix, source=None, resume_command=None):
    """Data, model, restore, then the loop (strategy started)."""
    from tflm.trainer import make_optimizer  # defines Keras classes, so it loads Keras

    replicas, global_batch = strategy.num_replicas_in_sync, config.train.global_batch_size
    if global_batch % replicas:
        raise TflmError(f"train.global_batch_size={global_batch} is not divisible by the {replicas} replicas")
    task_parts = classify_parts if config.task.type == "classify" else lm_parts
    data = task_parts(config, run_dir, task, strategy, resuming, source)

    keras.mixed_precision.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = data.build_model()
        optimizer = make_optimizer(config.train)
        optimizer.build(model.trainable_variables)
    trainer = data.trainer(strategy, model, optimizer)
    checkpointer = Checkpointer(run_dir, task, model, optimizer, config.train.keep_checkpoints, trainer.state())
    try:
        with exit_if_a_peer_is_lost(task, prefix, lambda: trainer.step):
            restored = checkpointer.restore_latest()
            if source and not restored:
                restore_source(data.language_model(model), source)
                print(f"{prefix}tflm: initialised from {source.checkpoint} (step {source.step})", flush=True)
            if resuming and not restored:
                raise TflmError(f"{run_dir} has training history but no checkpoint in {checkpointer.shared_dir}; "
                                "restore the checkpoint files, or start over with --restart")
            if task.is_chief and resuming:
                runs.replace_config(run_dir, config)
            print(f"{prefix}tflm: run directory {run_dir} ({strategy_name(strategy)}, {replicas} replica(s))",
                  flush=True)
            step = trainer.step
            progress = Progress(config.train.steps, data.units_per_step, prefix, unit=data.unit)
            if step >= config.train.steps:
                progress.log(f"run already finished: step {step} of train.steps={config.train.steps}; nothing to do")
                leave_when_done(strategy)
                return run_dir
            if restored:
                progress.log(f"resuming from {restored} at step {step}")
            history = runs.repair_history(run_dir, step) if task.is_chief else []
            train_fn, eval_fn, eval_batches = data.datasets(step)
            train_iterator = iter(strategy.distribute_datasets_from_function(train_fn))
            eval_iterator = iter(strategy.distribute_datasets_from_function(eval_fn))
            controller = Controller(trainer, checkpointer, config.train, data.units_per_step, run_dir, task, progress,
                                    resume_command)
            controller.run(train_iterator, eval_iterator, eval_batches,
                           strategy.cluster_resolver if task.num_workers > 1 else None,
                           history[-1]["elapsed_s"] if history else 0.0)
            leave_when_done(strategy)
    finally:
        checkpointer.close()
    return run_dir


def strategy_name(strategy):
    """The start line's name of a strategy: its class, or "default strategy, one device" for
    TensorFlow's default (a private class, _DefaultDistributionStrategy)."""
    name = type(strategy).__name__
    return "default strategy, one device" if name.startswith("_Default") else name


class TaskParts:
    """What a task brings to the shared loop: its model, trainer and input pipelines."""

    def __init__(self, build_model, trainer, datasets, units_per_step, unit="tok",
                 language_model=lambda model: model):
        self.build_model, self.trainer, self.datasets = build_model, trainer, datasets
        self.units_per_step, self.unit, self.language_model = units_per_step, unit, language_model


def lm_parts(config, run_dir, task, strategy, resuming, source):
    """A language model on the token store."""
    from tflm.models import build_model
    from tflm.trainer import Trainer

    seq_len, global_batch = config.data.seq_len, config.train.global_batch_size
    store, tokenizer = open_data(config, run_dir, task, strategy, resuming, source)

    def datasets(step):
        batches = eval_batches_per_pass(store, seq_len, global_batch, config.train.eval_batches,
                                        config.train.eval_every)
        return (train_dataset_fn(store, seq_len, global_batch, config.train.seed, step),
                eval_dataset_fn(store, seq_len, global_batch, batches), batches)

    return TaskParts(
        lambda: build_model(config.model, tokenizer.vocabulary_size, seq_len, config.train.seed),
        lambda strategy, model, optimizer: Trainer(strategy, model, optimizer, config.train, seq_len,
                                                   config.runtime.jit_compile, tokenizer.byte_lengths()),
        datasets, global_batch * seq_len)


def classify_parts(config, run_dir, task, strategy, resuming, source):
    """A classifier on labelled examples held in memory (tflm.classifier)."""
    from tflm import classifier

    data, tokenizer = open_labelled(config, run_dir, task, strategy, resuming, source)
    global_batch, seq_len = config.train.global_batch_size, config.data.seq_len
    train_ids, val_ids = (classifier.padded_ids(tokenizer, [e.text for e in getattr(data, split)], seq_len)
                          for split in ("train", "validation"))
    train_labels, val_labels = data.ids("train"), data.ids("validation")
    weights = classifier.class_weights(train_labels, len(data.labels), config.task.class_weights)

    def datasets(step):
        return (classifier.train_dataset_fn(train_ids, train_labels, global_batch, config.train.seed, step),
                classifier.eval_dataset_fn(val_ids, val_labels, global_batch),
                classifier.eval_batches(len(val_labels), global_batch))

    return TaskParts(
        lambda: classifier.build_classifier(config, tokenizer.vocabulary_size, len(data.labels)),
        lambda strategy, model, optimizer: classifier.ClassifierTrainer(strategy, model, optimizer, config, weights),
        datasets, global_batch, unit="examples", language_model=lambda model: model.backbone)


def open_labelled(config, run_dir, task, strategy, resuming, source):
    """(labelled data, tokenizer) of a classification run. Every worker reads the (small) files
    itself; the chief learns or takes the tokenizer and creates the run directory with its
    labels.json once the data are known good, and the others load both from there."""
    data = read_labelled(config.data, config.task)
    if resuming:
        saved = load_labels(run_dir)
        if saved != data.labels:
            raise TflmError(f"the run was trained with the labels {', '.join(saved)} ({run_dir}/{LABELS_FILE}), "
                            f"the data now has {', '.join(data.labels)}; use a new --run-dir")
    if task.is_chief and not resuming:
        tokenizer = source.tokenizer() if source else learned_tokenizer(config.data, [e.text for e in data.train])
        extra = {LABELS_FILE: save_labels(data.labels), **({RECORD_FILE: source.record()} if source else {})}
        if runs.is_run_dir(run_dir):
            runs.replace_config(run_dir, config, tokenizer, extra)
        else:
            runs.create(run_dir, config, tokenizer, extra_files=extra)
    if task.num_workers > 1:
        wait_for_every_worker(strategy)
    return data, runs.load_tokenizer(run_dir)


def learned_tokenizer(data_config, texts):
    """A data.tokenizer tokenizer learned from the training texts."""
    from tflm.tokenizer import learn_tokenizer

    options = {"model_type": data_config.sentencepiece_model} if data_config.tokenizer == "sentencepiece" else {}
    return learn_tokenizer(data_config.tokenizer, texts, data_config.vocab_size, **options)


def open_data(config, run_dir, task, strategy, resuming, source=None):
    """(token store, tokenizer) of the run. The chief opens the store, or prepares it (no
    deadline: a large corpus takes long), and creates a new run directory once the data are
    known good; the other workers wait for it at a barrier without deadline, then open it."""
    path = config.data.store or os.path.join(run_dir, "store")
    if task.is_chief:
        store = chief_store(config, run_dir, path, resuming, source)
        check_fits(store, config.data.seq_len, config.train.global_batch_size)
        if not resuming:
            create_run_dir(config, run_dir, store, path, {RECORD_FILE: source.record()} if source else None)
    if task.num_workers > 1:
        wait_for_every_worker(strategy)
    store = TokenStore.open(path)
    check_fits(store, config.data.seq_len, config.train.global_batch_size)
    return store, load_tokenizer(os.path.join(path, "tokenizer"))


def chief_store(config, run_dir, path, resuming, source=None):
    """The store at `path`, checked against the config (and the run's tokenizer when resuming, or
    the source run's when starting from one), or a new one: prepared in place, or, for a new
    run's own store, in the run directory's reservation (tflm.run_dir.reserve)."""
    run_tokenizer = runs.load_tokenizer(run_dir) if resuming else source.tokenizer() if source else None
    if resuming:
        check_recorded_tokenizer(run_dir, config, run_tokenizer)  # names the swapped files, unlike the store's check
    if not TokenStore.exists(path):
        # A new local run's own store is prepared in its reservation, which becomes the run directory
        # when it is created, so the directory appears whole; elsewhere (no atomic rename) in place.
        beside = path == os.path.join(run_dir, "store") and not runs.is_run_dir(run_dir) and is_local(run_dir)
        try:
            return prepare_store(config.data, os.path.join(runs.reservation_path(run_dir), "store") if beside
                                 else path, run_tokenizer, wait=True)
        except StoreExists:
            pass  # another process prepared this shared store while this one waited: check it as any other
    store = TokenStore.open(path)
    check_store_matches(store, config.data, run_tokenizer)
    if resuming:
        # Resuming stays O(1) in the store's size: every shard's size and the validation split's
        # checksums now, the training shards' checksums while training resumes, before the first
        # history record or checkpoint is written (a damaged shard stops the run there, exit 2).
        store.verify(checksums=False)
        store.verify(("validation",))
        runs.check_before_writing(run_dir, store.verify_in_background(("train",)))
    else:
        store.verify()  # once, before a run starts on a store
    return store


def create_run_dir(config, run_dir, store, path, extra_files=None):
    """A new run's directory with its config and tokenizer (and `extra_files`), and its store
    moved in if it has one of its own (prepared beside it)."""
    tokenizer = load_tokenizer(os.path.join(store.path, "tokenizer"))
    own_store = store.path if store.path != path else None
    if runs.is_run_dir(run_dir):  # a directory that never trained: it takes the new config
        runs.replace_config(run_dir, config, tokenizer, extra_files)
    else:
        runs.create(run_dir, config, tokenizer, own_store, extra_files)


if __name__ == "__main__":
    sys.exit(run_command(main))
