"""`python -m tflm.train`: train a language model into a run directory.

Runs alone, or on every worker of a `TF_CONFIG` cluster (see `tflm.launch` for localhost).
Running the same command on an existing run directory resumes from its latest checkpoint.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm import run_dir as runs  # noqa: E402
from tflm.checkpoint import Checkpointer  # noqa: E402
from tflm.config import check_resume_compatible, load_config  # noqa: E402
from tflm.data import (check_corpus_fits, eval_batches_per_pass, eval_dataset_fn,  # noqa: E402
                       load_corpus, train_dataset_fn)
from tflm.errors import Preempted, TflmError, exit_on_user_error  # noqa: E402
from tflm.models import build_model  # noqa: E402
from tflm.progress import Progress  # noqa: E402
from tflm.strategy import (StartupDeadline, current_task, exit_if_a_peer_is_lost,  # noqa: E402
                           make_strategy, wait_for_peers)
from tflm.trainer import Trainer, make_optimizer  # noqa: E402


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: the built-in char_transformer)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--run-dir", help="where to write (default: runs/<model>-<time>); resumes if it exists")
    parser.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi_worker"),
                        help="shorthand for --set runtime.strategy=...")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.train` and the `tflm-train` script."""
    args = parse_args(argv)
    overrides = args.set + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    train(load_config(args.config, overrides), args.run_dir)
    return 0


def train(config, run_dir=None):
    """Train (or resume) the run in `run_dir` as configured; returns the run directory."""
    task = current_task()
    if task.num_workers > 1 and not run_dir:
        raise TflmError("multi-worker training needs --run-dir, the same shared path on every worker")
    run_dir = run_dir or runs.default_run_dir(config)
    runs.check_usable(run_dir)
    resuming = runs.is_run_dir(run_dir)
    if resuming:
        check_resume_compatible(runs.read_config(run_dir), config)
    prefix = f"[{task.name}] " if task.num_workers > 1 else ""

    if task.num_workers > 1:
        wait_for_peers(task, config.runtime.cluster_timeout_s)
    deadline = StartupDeadline(task, config.runtime.cluster_timeout_s)
    strategy = make_strategy(config.runtime)
    replicas, global_batch = strategy.num_replicas_in_sync, config.train.global_batch_size
    if global_batch % replicas:
        raise TflmError(f"train.global_batch_size={global_batch} is not divisible by the {replicas} replicas")
    corpus = load_corpus(config.data, runs.load_tokenizer(run_dir) if resuming else None)
    check_corpus_fits(corpus, config.data.seq_len, global_batch)

    if task.is_chief:
        if resuming:
            runs.write_config(run_dir, config)
        else:
            runs.create(run_dir, config, corpus.tokenizer)
    print(f"{prefix}tflm: run directory {run_dir} ({type(strategy).__name__}, {replicas} replica(s))",
          flush=True)

    keras.mixed_precision.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config.model, corpus.tokenizer.vocabulary_size, config.data.seq_len)
        optimizer = make_optimizer(config.train)
        optimizer.build(model.trainable_variables)
    deadline.ready()  # building mirrored variables broadcast them: every peer is up
    checkpointer = Checkpointer(run_dir, task, model, optimizer, config.train.keep_checkpoints)
    try:
        run_loop(config, run_dir, task, strategy, corpus, Trainer(strategy, model, optimizer, config),
                 checkpointer, prefix)
    finally:
        checkpointer.close()
    return run_dir


def run_loop(config, run_dir, task, strategy, corpus, trainer, checkpointer, prefix):
    """Restore, then train to train.steps with evaluations, history and checkpoints."""
    t = config.train
    restored = checkpointer.restore_latest()
    step = int(trainer.optimizer.iterations.numpy())
    tokens_per_step = t.global_batch_size * config.data.seq_len
    progress = Progress(t.steps, tokens_per_step, prefix)
    if step >= t.steps:
        progress.log(f"run already finished: step {step} of train.steps={t.steps}; nothing to do")
        return
    if restored:
        progress.log(f"resuming from {restored} at step {step}")
    history = runs.truncate_history(run_dir, step) if task.is_chief else []
    elapsed_before_s = history[-1]["elapsed_s"] if history else 0.0
    writer = (tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard")) if task.is_chief
              else tf.summary.create_noop_writer())

    preemption = checkpointer.preemption_handler(
        strategy.cluster_resolver if task.num_workers > 1 else None, lambda: step, lambda: preempted(step)
    )
    train_iterator = iter(strategy.distribute_datasets_from_function(train_dataset_fn(corpus, config, step)))
    eval_iterator = iter(strategy.distribute_datasets_from_function(eval_dataset_fn(corpus, config)))
    eval_batches = eval_batches_per_pass(corpus, config)
    checkpoint_every = t.checkpoint_every or t.eval_every

    trainer.train_metrics.reset()
    start = period_start = time.perf_counter()
    period_start_step = step
    progress.start(step)
    with exit_if_a_peer_is_lost(task, prefix, lambda: step):
        while step < t.steps:
            preemption.save_checkpoint_if_preempted()
            trainer.train_step(train_iterator)
            step += 1
            progress.update(step, lambda: trainer.train_metrics.result()["loss"])
            if step % t.eval_every == 0 or step == t.steps:
                train_metrics = trainer.train_metrics.result()  # waits for the last step to finish
                train_time_s = time.perf_counter() - period_start
                val = trainer.evaluate(eval_iterator, eval_batches)
                record = {
                    "step": step, "tokens_seen": step * tokens_per_step,
                    "elapsed_s": round(elapsed_before_s + time.perf_counter() - start, 3),
                    "loss": train_metrics["loss"], "accuracy": train_metrics["accuracy"],
                    "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                    "val_perplexity": val["perplexity"],
                    "tokens_per_sec": (step - period_start_step) * tokens_per_step / train_time_s,
                }
                report(record, train_metrics, val, progress, writer, t.steps, run_dir if task.is_chief else None)
                trainer.train_metrics.reset()
            if step % checkpoint_every == 0 or step == t.steps:
                checkpointer.save(step)
            if step % t.eval_every == 0:
                period_start, period_start_step = time.perf_counter(), step
    progress.log(f"done: step {step}; checkpoints in {checkpointer.shared_dir}")


def preempted(step):
    """PreemptionCheckpointHandler's exit: the checkpoint at `step` is saved on every worker."""
    raise Preempted(f"SIGTERM received; checkpoint saved at step {step} on every worker; "
                    "relaunch the same command to resume")


def report(record, train_metrics, val, progress, writer, total_steps, history_dir):
    """Log an evaluation, append it to history.jsonl (chief) and TensorBoard."""
    progress.log(
        f"step {record['step']}/{total_steps}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  "
        f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}  "
        f"val_ppl {record['val_perplexity']:.2f}  val_bpc {val['bits_per_char']:.3f}  "
        f"{record['tokens_per_sec']:.0f} tok/s"
    )
    if history_dir:
        runs.append_history(history_dir, record)
    with writer.as_default(step=record["step"]):
        for name, value in {**{f"train/{k}": v for k, v in train_metrics.items()},
                            **{f"validation/{k}": v for k, v in val.items()},
                            "tokens_per_sec": record["tokens_per_sec"]}.items():
            tf.summary.scalar(name, value)
    writer.flush()


if __name__ == "__main__":
    sys.exit(main())
