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

from tflm.config import check_resume_compatible, updated
from tflm.errors import TflmError
from tflm.lazy import keras, tf
from tflm.presets import check_preset_config
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import Checkpointer, checkpoint_dir, list_checkpoints
from tflm.runs.init_from import check_not_itself, check_source, restore_source, with_source_settings
from tflm.runs.pipeline_trace import append_trace
from tflm.tasks import task_for
from tflm.training.cluster import current_worker, use_cluster
from tflm.training.compile_cache import use_compile_cache
from tflm.training.controller import Controller
from tflm.training.precision import compute_note, device_kinds, resolve_precision, step_uses_xla
from tflm.training.pipeline import balanced_cut, describe_cut, piece_weights, pipeline_layout
from tflm.training.progress import Progress
from tflm.training.rendezvous import startup_watchdog, wait_for_peers
from tflm.training.strategy import (exit_if_a_peer_is_lost, leave_when_done, make_strategy, resolve_strategy_name,
                                   uses_model_parallelism)


def train(config, run_dir=None, restart=False, command=None):
    """Train (or resume) the run in `run_dir` as configured; returns the run directory.
    `command`: the command line (a list) that called this, to say how to resume if it stops early."""
    use_cluster(config.runtime)
    worker = current_worker()
    check_strategy_matches_cluster(config.runtime, worker)
    if config.model.preset:
        check_preset_config(config)  # a bad preset, or a handle without network, before anything is written
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
        if config.runtime.jit_compile:
            use_compile_cache()  # before TensorFlow reads TF_XLA_FLAGS
        tf.import_now()  # not under the deadlines below: it takes longer on a busy host
        if worker.num_workers > 1:
            wait_for_peers(worker, config.runtime.cluster_timeout_s)
        with startup_watchdog(worker, config.runtime.cluster_timeout_s, prefix):
            strategy = make_strategy(config.runtime)
        layout = pipeline_layout(config.runtime, worker) if uses_model_parallelism(config.runtime) else None
        check_batch_split(config.train, layout.replicas if layout else strategy.num_replicas_in_sync)
        with exit_if_a_peer_is_lost(worker, prefix, lambda: None):
            return train_in(config, run_dir, worker, strategy, resuming, prefix, source, resume, layout)
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


def check_batch_split(train_config, replicas):
    """Raise unless the global batch splits into `replicas` equal shares, each into train.microbatches."""
    batch, microbatches = train_config.global_batch_size, train_config.microbatches
    if batch % replicas:
        raise TflmError(f"train.global_batch_size={batch} is not divisible by the {replicas} replicas")
    if (batch // replicas) % microbatches:
        raise TflmError(f"train.microbatches={microbatches} does not divide a replica's share of the global "
                        f"batch ({batch} / {replicas} replicas = {batch // replicas})")


def train_in(config, run_dir, worker, strategy, resuming, prefix, source=None, resume_command=None, layout=None):
    """Data, model, restore, then the loop (strategy started; `layout`: the pipeline's, if any)."""
    config, compute = with_precision_chosen(config, prefix)
    task = task_for(config)
    task.open_data(run_dir, worker, strategy, resuming, source)

    keras.mixed_precision.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.train.seed)
    if layout:
        trainer = pipeline_trainer(compute, task, layout, worker, run_dir, prefix)
    else:
        trainer = data_parallel_trainer(compute, task, strategy)
    model, optimizer = trainer.model, trainer.optimizer
    replicas = layout.replicas if layout else strategy.num_replicas_in_sync
    checkpointer = Checkpointer(run_dir, worker, model, optimizer, config.train.keep_checkpoints, trainer.state(),
                                trainer.before_save)
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
            shape = layout_name(layout) if layout else strategy_name(strategy)
            print(f"{prefix}tflm: run directory {run_dir} ({shape}, {replicas} replica(s))", flush=True)
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
            train_iterator, eval_iterator = trainer.iterator(train_fn), trainer.iterator(eval_fn)
            controller = Controller(trainer, checkpointer, config.train, task.units_per_step, run_dir, worker, progress,
                                    resume_command)
            controller.run(train_iterator, eval_iterator, eval_batches,
                           strategy.cluster_resolver if worker.num_workers > 1 else None,
                           history[-1]["elapsed_s"] if history else 0.0)
            leave_when_done(strategy)
    finally:
        checkpointer.close()
    return run_dir


def with_precision_chosen(config, prefix):
    """(`config` with runtime.precision=auto resolved for this machine's devices, the same with
    runtime.jit_compile as the step uses it); the choice is printed."""
    kinds = device_kinds()
    precision, reason = resolve_precision(config.runtime, config.model, kinds)
    if reason:
        print(f"{prefix}tflm: runtime.precision=auto: {precision} ({reason})", flush=True)
    config = updated(config, runtime={"precision": precision})
    note = compute_note(config.runtime.jit_compile, kinds, config.model, precision)
    if note:
        print(f"{prefix}tflm: {note}", flush=True)
    return config, updated(config, runtime={"jit_compile": step_uses_xla(config.runtime.jit_compile, kinds,
                                                                         config.model, precision)})


def data_parallel_trainer(config, task, strategy):
    """The Trainer of a model whose every replica is whole on one device of `strategy`."""
    from tflm.training.optimizer import LossScaling, make_optimizer  # these define Keras classes: they load Keras
    from tflm.training.trainer import Trainer

    loss_scaling = None
    with strategy.scope():
        model = task.build_model(task.tokenizer.vocabulary_size, config.train.seed)
        optimizer = make_optimizer(config.train)
        if config.runtime.precision == "mixed_float16":
            loss_scaling = LossScaling(optimizer, model.trainable_variables)
        else:
            optimizer.build(model.trainable_variables)
    return Trainer(strategy, model, optimizer, task, config.train, config.runtime.jit_compile, loss_scaling)


def pipeline_trainer(config, task, layout, worker, run_dir, prefix):
    """The PipelineTrainer of the layout's replicas, each cut into balanced stages and placed
    (its blocks split over each stage's devices with runtime.tensor_parallel).

    The model is first built whole in host memory, as one device would build it, so that every
    layout starts from the same weights (and the cut is measured on it); it and an optimizer of
    its own are what checkpoints hold. Each replica's stages are then built on their devices and
    take its weights."""
    from tflm.training.optimizer import make_optimizer  # these define Keras classes, so they load Keras
    from tflm.training.pipeline_trainer import PipelineTrainer
    from tflm.training.tensor_parallel import HOST, placed_replica

    vocabulary_size, seed = task.tokenizer.vocabulary_size, config.train.seed
    with tf.device(HOST):
        whole = task.build_model(vocabulary_size, seed)
        host_optimizer = make_optimizer(config.train)
        host_optimizer.build(whole.trainable_variables)
    sizes = piece_weights(whole)
    cut = balanced_cut(sizes, layout.stages)
    replicas = [placed_replica(lambda: task.new_model(vocabulary_size, seed), whole, cut, lanes, config.data.seq_len,
                               lambda: make_optimizer(config.train))
                for lanes in layout.lanes]
    microbatches = config.train.microbatches
    print(f"{prefix}tflm: {layout_name(layout, 'pipeline')} ({config.runtime.pipeline_schedule}, {microbatches} "
          f"micro-batch{'es' if microbatches > 1 else ''} per replica), cut for equal weights per stage:", flush=True)
    for line in describe_cut(whole, sizes, cut, [", ".join(lanes) for lanes in layout.lanes[0]]):
        print(f"{prefix}tflm:   {line}", flush=True)
    on_trace = (lambda record: append_trace(run_dir, record)) if worker.is_chief else None
    return PipelineTrainer((whole, host_optimizer), replicas, layout, cut, task, config.train, config.runtime, worker,
                           on_trace)


def layout_name(layout, noun="pipelines"):
    """How a model-parallel layout is shown: "pipelines of 2 stages", "... x 2 shards"."""
    shards = f" x {layout.shards} shards" if layout.shards > 1 else ""
    return (f"{noun} of {layout.stages} stages" if layout.stages > 1 else "one stage") + shards


def strategy_name(strategy):
    """The start line's name of a strategy: its class, or "default strategy, one device" for
    TensorFlow's default (a private class, _DefaultDistributionStrategy)."""
    name = type(strategy).__name__
    return "default strategy, one device" if name.startswith("_Default") else name


