"""Train (or resume) a run: `train(config, run_dir)`, what `python -m tflm.train` runs.

Runs alone, or on every worker of a `TF_CONFIG` cluster (see tflm.training.launcher for
localhost). Training an existing run directory resumes it from its latest checkpoint; a run
directory is never restarted, truncated or overwritten unless `restart` says so (and then the
old one is moved aside, not deleted).

Start-up order, so that bad input fails before anything is written: check the config and the
cluster description; check the run directory and lock it (a new one: reserve it, see
tflm.runs.run_dir.reserve, so that its store is prepared in the reservation); load TensorFlow
(seconds, more on a busy host: before any deadline); meet the other workers (deadline:
runtime.cluster_timeout_s); start TensorFlow's cluster (same deadline, enforced by a watchdog);
read the data (no deadline: it can take long on a large corpus); build the model; restore; only
then create the run directory, and train.

What is learned is the task's business (tflm.tasks: its data, model, loss and metrics); this
module runs any task through the same loop. `train.init_from` starts a new run from another
run's weights and tokenizer (tflm.runs.init_from).
"""


import shlex

from tflm.config import check_resume_compatible
from tflm.errors import TflmError
from tflm.lazy import keras, tf
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import Checkpointer, checkpoint_dir, list_checkpoints
from tflm.runs.init_from import check_not_itself, check_source, restore_source, with_source_settings
from tflm.tasks import task_for
from tflm.training.cluster import current_worker, use_cluster
from tflm.training.controller import Controller
from tflm.training.progress import Progress
from tflm.training.rendezvous import startup_watchdog, wait_for_peers
from tflm.training.strategy import exit_if_a_peer_is_lost, leave_when_done, make_strategy, resolve_strategy_name


def train(config, run_dir=None, restart=False, command=None):
    """Train (or resume) the run in `run_dir` as configured; returns the run directory.
    `command`: the command line (a list) that called this, to say how to resume if it stops early."""
    use_cluster(config.runtime)
    worker = current_worker()
    check_strategy_matches_cluster(config.runtime, worker)
    if worker.num_workers > 1 and not run_dir:
        raise TflmError("multi-worker training needs --run-dir, the same shared path on every worker")
    chosen = not run_dir
    run_dir = run_dir or runs.default_run_dir(config)
    resume = resume_command(command, run_dir, chosen, restart, worker.num_workers)
    prefix = f"[{worker.name}] " if worker.num_workers > 1 else ""
    check_not_itself(config.train.init_from, run_dir)
    if config.train.init_from:  # before the run directory's config is compared with it
        config = with_source_settings(config, run_dir, resuming=not restart and has_progress(run_dir))
    try:
        resuming = open_run_dir(run_dir, config, worker, restart)
        source = check_source(config, run_dir, resuming)
        tf.import_now()  # not under the deadlines below: it takes longer on a busy host
        if worker.num_workers > 1:
            wait_for_peers(worker, config.runtime.cluster_timeout_s)
        with startup_watchdog(worker, config.runtime.cluster_timeout_s, prefix):
            strategy = make_strategy(config.runtime)
        with exit_if_a_peer_is_lost(worker, prefix, lambda: None):
            return train_in(config, run_dir, worker, strategy, resuming, prefix, source, resume)
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


def check_strategy_matches_cluster(runtime, worker):
    """Raise if TF_CONFIG describes several workers but the strategy would train each alone."""
    if worker.num_workers > 1 and resolve_strategy_name(runtime, probe_devices=False) != "multi_worker":
        raise TflmError(f"TF_CONFIG describes a cluster of {worker.num_workers} workers, but "
                        f"runtime.strategy={runtime.strategy} would train each of them alone on the same "
                        "run directory; use runtime.strategy=multi_worker (or auto)")


def open_run_dir(run_dir, config, worker, restart):
    """Check `run_dir` before anything else is done; returns whether training resumes.

    The chief locks an existing run directory, or reserves a new one (tflm.runs.run_dir.reserve), at
    once, so a second trainer stops here, before it prepares anything. `restart` moves an
    existing directory aside. A directory that holds no checkpoint and no history (a run that
    failed before its first checkpoint) starts again with the new config.
    """
    runs.check_usable(run_dir)
    if not worker.is_chief:
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


def train_in(config, run_dir, worker, strategy, resuming, prefix, source=None, resume_command=None):
    """Data, model, restore, then the loop (strategy started)."""
    from tflm.training.optimizer import make_optimizer  # these define Keras classes, so they load Keras
    from tflm.training.trainer import Trainer

    replicas, global_batch = strategy.num_replicas_in_sync, config.train.global_batch_size
    if global_batch % replicas:
        raise TflmError(f"train.global_batch_size={global_batch} is not divisible by the {replicas} replicas")
    task = task_for(config)
    task.open_data(run_dir, worker, strategy, resuming, source)

    keras.mixed_precision.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = task.build_model(task.tokenizer.vocabulary_size, config.train.seed)
        optimizer = make_optimizer(config.train)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(strategy, model, optimizer, task, config.train, config.runtime.jit_compile)
    checkpointer = Checkpointer(run_dir, worker, model, optimizer, config.train.keep_checkpoints, trainer.state())
    try:
        with exit_if_a_peer_is_lost(worker, prefix, lambda: trainer.step):
            restored = checkpointer.restore_latest()
            if source and not restored:
                restore_source(task.language_model(model), source)
                print(f"{prefix}tflm: initialised from {source.checkpoint} (step {source.step})", flush=True)
            if resuming and not restored:
                raise TflmError(f"{run_dir} has training history but no checkpoint in {checkpointer.shared_dir}; "
                                "restore the checkpoint files, or start over with --restart")
            if worker.is_chief and resuming:
                runs.replace_config(run_dir, config)
            print(f"{prefix}tflm: run directory {run_dir} ({strategy_name(strategy)}, {replicas} replica(s))",
                  flush=True)
            step = trainer.step
            progress = Progress(config.train.steps, task.units_per_step, prefix, unit=task.unit_shown)
            if step >= config.train.steps:
                progress.log(f"run already finished: step {step} of train.steps={config.train.steps}; nothing to do")
                leave_when_done(strategy)
                return run_dir
            if restored:
                progress.log(f"resuming from {restored} at step {step}")
            history = runs.repair_history(run_dir, step) if worker.is_chief else []
            train_fn, eval_fn, eval_batches = task.datasets(step)
            train_iterator = iter(strategy.distribute_datasets_from_function(train_fn))
            eval_iterator = iter(strategy.distribute_datasets_from_function(eval_fn))
            controller = Controller(trainer, checkpointer, config.train, task.units_per_step, run_dir, worker, progress,
                                    resume_command)
            controller.run(train_iterator, eval_iterator, eval_batches,
                           strategy.cluster_resolver if worker.num_workers > 1 else None,
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


