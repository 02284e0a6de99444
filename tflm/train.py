"""`python -m tflm.train`: train a language model into a run directory.

Runs alone, or on every worker of a `TF_CONFIG` cluster (see `tflm.launch` for localhost).
Running the same command on an existing run directory resumes from its latest checkpoint; a run
directory is never restarted, truncated or overwritten unless `--restart` says so (and then the
old one is moved aside, not deleted).

Start-up order, so that bad input fails before anything is written: check the config and the
cluster description; check the run directory (and lock it if it exists); load TensorFlow (seconds,
more on a busy host: before any deadline); meet the other workers (deadline:
runtime.cluster_timeout_s); start TensorFlow's cluster (same deadline, enforced by a watchdog);
read the data (no deadline: it can take long on a large corpus); build the model; restore; only
then create the run directory, and train.
"""

import argparse
import os
import sys

from tflm import run_dir as runs
from tflm.atomic import is_local
from tflm.cluster import use_cluster
from tflm.checkpoint import Checkpointer, list_checkpoints, checkpoint_dir
from tflm.config import check_resume_compatible, dump, load_config
from tflm.controller import Controller
from tflm.data import check_fits, eval_batches_per_pass, eval_dataset_fn, train_dataset_fn
from tflm.errors import TflmError, exit_on_user_error
from tflm.lazy import keras, tf
from tflm.prepare import check_store_matches, prepare_store, staging_path
from tflm.progress import Progress
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.store import TokenStore
from tflm.strategy import (current_task, exit_if_a_peer_is_lost, make_strategy, resolve_strategy_name,
                           startup_watchdog, wait_for_every_worker, wait_for_peers)
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
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.train` and `tflm train`."""
    args = parse_args(argv)
    overrides = args.set + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    config = load_config(args.config, overrides, saved=is_own_config(args.config, args.run_dir))
    if args.print_config:
        print(dump(config), end="")
        return 0
    train(config, args.run_dir, restart=args.restart)
    return 0


def is_own_config(config_path, run_dir):
    """Whether `config_path` is the config.yaml that `run_dir` saved (resuming with it as --config)."""
    if not config_path or not run_dir:
        return False
    return os.path.normpath(config_path) == os.path.normpath(os.path.join(run_dir, "config.yaml"))


def train(config, run_dir=None, restart=False):
    """Train (or resume) the run in `run_dir` as configured; returns the run directory."""
    use_cluster(config.runtime)
    task = current_task()
    check_strategy_matches_cluster(config.runtime, task)
    if task.num_workers > 1 and not run_dir:
        raise TflmError("multi-worker training needs --run-dir, the same shared path on every worker")
    run_dir = run_dir or runs.default_run_dir(config)
    prefix = f"[{task.name}] " if task.num_workers > 1 else ""
    locked = False
    try:
        resuming, locked = open_run_dir(run_dir, config, task, restart)
        tf.import_now()  # not under the deadlines below: it takes longer on a busy host
        if task.num_workers > 1:
            wait_for_peers(task, config.runtime.cluster_timeout_s)
        with startup_watchdog(task, config.runtime.cluster_timeout_s, prefix):
            strategy = make_strategy(config.runtime)
        with exit_if_a_peer_is_lost(task, prefix, lambda: None):
            return train_in(config, run_dir, task, strategy, resuming, prefix)
    finally:
        if locked or (task.is_chief and runs.is_run_dir(run_dir)):
            runs.release_lock(run_dir)


def check_strategy_matches_cluster(runtime, task):
    """Raise if TF_CONFIG describes several workers but the strategy would train each alone."""
    if task.num_workers > 1 and resolve_strategy_name(runtime, probe_devices=False) != "multi_worker":
        raise TflmError(f"TF_CONFIG describes a cluster of {task.num_workers} workers, but "
                        f"runtime.strategy={runtime.strategy} would train each of them alone on the same "
                        "run directory; use runtime.strategy=multi_worker (or auto)")


def open_run_dir(run_dir, config, task, restart):
    """Check `run_dir` before anything else is done; returns (resuming, locked).

    The chief locks an existing run directory at once, so a second trainer stops here. `restart`
    moves an existing directory aside. A directory that holds no checkpoint and no history (a
    run that failed before its first checkpoint) starts again with the new config.
    """
    runs.check_usable(run_dir)
    if not runs.is_run_dir(run_dir):
        return False, False
    if not task.is_chief:
        return has_progress(run_dir) and not restart, False
    runs.acquire_lock(run_dir)
    if restart:
        moved = runs.move_aside(run_dir)
        os.remove(os.path.join(moved, runs.LOCK_FILE))
        print(f"tflm: --restart: moved the previous run to {moved}", flush=True)
        return False, False
    if has_progress(run_dir):
        check_resume_compatible(runs.read_config(run_dir), config)
        return True, True
    return False, True


def has_progress(run_dir):
    """Whether a run directory holds anything a run produced: a checkpoint or a history record."""
    return bool(list_checkpoints(checkpoint_dir(run_dir))) or bool(runs.read_history(run_dir))


def train_in(config, run_dir, task, strategy, resuming, prefix):
    """Data, model, restore, then the loop (strategy started)."""
    from tflm.models import build_model  # these two define Keras classes, so they load Keras
    from tflm.trainer import Trainer, make_optimizer

    replicas, global_batch, seq_len = strategy.num_replicas_in_sync, config.train.global_batch_size, config.data.seq_len
    if global_batch % replicas:
        raise TflmError(f"train.global_batch_size={global_batch} is not divisible by the {replicas} replicas")
    store, tokenizer = open_data(config, run_dir, task, strategy, resuming)

    keras.mixed_precision.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config.model, tokenizer.vocabulary_size, seq_len, config.train.seed)
        optimizer = make_optimizer(config.train)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(strategy, model, optimizer, config.train, seq_len, config.runtime.jit_compile,
                      tokenizer.byte_lengths())
    checkpointer = Checkpointer(run_dir, task, model, optimizer, config.train.keep_checkpoints, trainer.state())
    try:
        with exit_if_a_peer_is_lost(task, prefix, lambda: trainer.step):
            restored = checkpointer.restore_latest()
            if resuming and not restored:
                raise TflmError(f"{run_dir} has training history but no checkpoint in {checkpointer.shared_dir}; "
                                "restore the checkpoint files, or start over with --restart")
            if task.is_chief and resuming:
                runs.replace_config(run_dir, config)
            print(f"{prefix}tflm: run directory {run_dir} ({type(strategy).__name__}, {replicas} replica(s))",
                  flush=True)
            step = trainer.step
            progress = Progress(config.train.steps, global_batch * seq_len, prefix)
            if step >= config.train.steps:
                progress.log(f"run already finished: step {step} of train.steps={config.train.steps}; nothing to do")
                return run_dir
            if restored:
                progress.log(f"resuming from {restored} at step {step}")
            history = runs.repair_history(run_dir, step) if task.is_chief else []
            eval_batches = eval_batches_per_pass(store, seq_len, global_batch, config.train.eval_batches,
                                                 config.train.eval_every)
            train_iterator = iter(strategy.distribute_datasets_from_function(
                train_dataset_fn(store, seq_len, global_batch, config.train.seed, step)))
            eval_iterator = iter(strategy.distribute_datasets_from_function(
                eval_dataset_fn(store, seq_len, global_batch, eval_batches)))
            controller = Controller(trainer, checkpointer, config.train, global_batch * seq_len, run_dir, task, progress)
            controller.run(train_iterator, eval_iterator, eval_batches,
                           strategy.cluster_resolver if task.num_workers > 1 else None,
                           history[-1]["elapsed_s"] if history else 0.0)
    finally:
        checkpointer.close()
    return run_dir


def open_data(config, run_dir, task, strategy, resuming):
    """(token store, tokenizer) of the run. The chief opens the store, or prepares it (no
    deadline: a large corpus takes long), and creates a new run directory once the data are
    known good; the other workers wait for it at a barrier without deadline, then open it."""
    path = config.data.store or os.path.join(run_dir, "store")
    if task.is_chief:
        store = chief_store(config, run_dir, path, resuming)
        check_fits(store, config.data.seq_len, config.train.global_batch_size)
        if not resuming:
            create_run_dir(config, run_dir, store, path)
    if task.num_workers > 1:
        wait_for_every_worker(strategy)
    store = TokenStore.open(path)
    check_fits(store, config.data.seq_len, config.train.global_batch_size)
    return store, load_tokenizer(os.path.join(path, "tokenizer"))


def chief_store(config, run_dir, path, resuming):
    """The store at `path`, checked against the config (and the run's tokenizer when resuming),
    or a new one: prepared in place, or, for a new run's own store, beside the run directory."""
    run_tokenizer = runs.load_tokenizer(run_dir) if resuming else None
    if TokenStore.exists(path):
        store = TokenStore.open(path)
        check_store_matches(store, config.data, run_tokenizer)
        if not resuming:
            store.verify()  # once, when a run starts using a store
        return store
    # A new local run's own store is prepared beside it and moved in when the run directory is
    # created, so the directory appears whole; elsewhere (no atomic rename) it is written in place.
    beside = path == os.path.join(run_dir, "store") and not runs.is_run_dir(run_dir) and is_local(run_dir)
    return prepare_store(config.data, staging_path(run_dir) if beside else path, run_tokenizer)


def create_run_dir(config, run_dir, store, path):
    """A new run's directory with its config and tokenizer, and its store moved in if it has
    one of its own (prepared beside it)."""
    tokenizer = load_tokenizer(os.path.join(store.path, "tokenizer"))
    own_store = store.path if store.path != path else None
    if runs.is_run_dir(run_dir):  # a directory that never trained: it takes the new config
        runs.replace_config(run_dir, config, tokenizer)
    else:
        runs.create(run_dir, config, tokenizer, own_store)


if __name__ == "__main__":
    sys.exit(run_command(main))
