"""Trainer overhead: tokens/s of tflm's training loop against a bare tf.function step.

Both train the default model (configs/char_transformer.yaml) on the same input pipeline (the
token store) with XLA; the bare loop compiles forward, backward, clipping and AdamW as one program
and calls it once per step, with no metrics, no strategy.run, no steps_per_loop, no checkpoints,
no logging, no preemption or divergence check. Compilation is excluded from both.

    python benchmarks/train_overhead.py [--periods 3] [--eval-every 250]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tflm
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm.runs import run_dir as runs  # noqa: E402
from tflm.config import load_config, updated  # noqa: E402
from tflm.data.pipeline import train_dataset_fn  # noqa: E402
from tflm.models.build import build_model  # noqa: E402
from tflm.data.prepare import prepare_store  # noqa: E402
from tflm.training.train import train  # noqa: E402
from tflm.training.optimizer import make_optimizer  # noqa: E402
from tflm.tasks.lm import token_loss_and_accuracy

WARMUP_STEPS = 50


def bare_tokens_per_sec(config, steps):
    """Tokens/s of the smallest correct loop: next(iterator), XLA forward/backward, apply."""
    with tempfile.TemporaryDirectory() as tmp:
        store = prepare_store(config.data, os.path.join(tmp, "store"), log=lambda *_: None)
        keras.utils.set_random_seed(config.train.seed)
        model = build_model(config.model, store.index["tokenizer"]["vocabulary_size"], config.data.seq_len)
        return timed_bare_loop(config, model, store, steps)


def timed_bare_loop(config, model, store, steps):
    """Tokens/s of `steps` bare steps after WARMUP_STEPS untimed ones."""
    optimizer = make_optimizer(config.train)
    tokens = float(config.train.global_batch_size * config.data.seq_len)
    dataset = train_dataset_fn(store, config.data.seq_len, config.train.global_batch_size,
                               config.train.seed)(tf.distribute.InputContext())

    @tf.function(jit_compile=True)
    def update(inputs, targets):
        with tf.GradientTape() as tape:
            loss_sum, _ = token_loss_and_accuracy(targets, model(inputs, training=True))
            loss = loss_sum / tokens
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, model.trainable_variables), config.train.clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    @tf.function
    def step(iterator):
        inputs, targets = next(iterator)[:2]
        update(inputs, targets)

    iterator = iter(dataset)
    for _ in range(WARMUP_STEPS):
        step(iterator)
    optimizer.iterations.numpy()
    start = time.perf_counter()
    for _ in range(steps):
        step(iterator)
    optimizer.iterations.numpy()  # wait for the last step
    return steps * tokens / (time.perf_counter() - start)


def trainer_tokens_per_sec(config, periods, eval_every):
    """(training-step tokens/s, end-to-end tokens/s incl. evaluation and checkpoints) of tflm,
    over `periods` evaluation periods after the first (which includes compilation)."""
    config = updated(config, train={"steps": eval_every * (periods + 1), "eval_every": eval_every})
    with tempfile.TemporaryDirectory() as tmp:
        history = runs.read_history(train(config, os.path.join(tmp, "run")))
    after_warmup = history[1:]
    step_rate = sum(r["tokens_per_sec"] for r in after_warmup) / len(after_warmup)
    tokens = history[-1]["tokens_seen"] - history[0]["tokens_seen"]
    return step_rate, tokens / (history[-1]["elapsed_s"] - history[0]["elapsed_s"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=3, help="timed evaluation periods")
    parser.add_argument("--eval-every", type=int, default=250, help="as train.eval_every")
    args = parser.parse_args()
    bare = bare_tokens_per_sec(load_config(), args.periods * args.eval_every)
    step_rate, end_to_end = trainer_tokens_per_sec(load_config(), args.periods, args.eval_every)
    print(f"bare tf.function step:        {bare:10.0f} tokens/s")
    print(f"tflm trainer, training steps: {step_rate:10.0f} tokens/s  ratio {step_rate / bare:.3f}")
    print(f"tflm trainer, end to end:     {end_to_end:10.0f} tokens/s  ratio {end_to_end / bare:.3f}"
          f"  (includes the default evaluations and a checkpoint every {args.eval_every} steps)")


if __name__ == "__main__":
    main()
