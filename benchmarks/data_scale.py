"""The data layer at scale: prepare throughput, input pipeline vs trainer, O(1) resume, memory.

On a corpus it generates (by default 1 GB: copies of the embedded Python manual, each copy's
lines varied so no two copies are equal), it prints:
  - prepare throughput (MB of UTF-8 text per second) per tokenizer, store and index sizes, in one
    process and (--beam-workers N) on Apache Beam's direct runner with N worker processes (goal:
    >= 1.7x one process with 2 workers on 2 cores), and whether both wrote the same store;
  - input-pipeline tokens/s (reading windows from the store, as training does) against the
    trainer's tokens/s on the default model (goal: >= 10x);
  - time from launching `python -m tflm.train` to its first training step, resuming a run at
    step 1,000,000 and at step 10 (goal: <= 10 s, and no worse than at step 10), in phases:
    launch -> "resuming from" (imports, store and checkpoint opened) -> first step and its
    evaluation done (tracing and XLA compilation included) -> exit;
  - peak RSS of a training process on the store (goal: <= 1.5 GB).

    python benchmarks/data_scale.py [--gigabytes 1] [--tokenizers char,byte,sentencepiece,wordpiece]
    python benchmarks/data_scale.py --gigabytes 0.05 --parts resume     # start-up only
    python benchmarks/data_scale.py --parts prepare --beam-workers 2    # one process vs Beam's direct runner
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tflm
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from tflm.config import load_config  # noqa: E402
from tflm.data.pipeline import train_dataset_fn  # noqa: E402
from tflm.data.prepare import prepare_store  # noqa: E402
from tflm.data.store import TokenStore  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_BYTES = 64 * 2**20  # corpus files of about 64 MiB
VOCAB_SIZES = {"char": 1000, "byte": 257, "sentencepiece": 4000, "wordpiece": 4000}


def write_corpus(directory, gigabytes):
    """Files of varied copies of the Python manual, `gigabytes` in all; returns their glob."""
    from pydoc_data.topics import topics

    lines = [line for name in sorted(topics) for line in topics[name].splitlines()]
    target, written, copy, part = gigabytes * 1e9, 0, 0, 0
    out = None
    while written < target:
        if out is None or out.tell() >= FILE_BYTES:
            if out:
                out.close()
            out = open(os.path.join(directory, f"part-{part:04d}.txt"), "w", encoding="utf-8")
            part += 1
        # Vary each copy: rotate its lines and number them, so no two copies are the same text.
        shift = (copy * 7919) % len(lines)
        text = "\n".join(f"{copy}:{i} {line}" for i, line in enumerate(lines[shift:] + lines[:shift])) + "\n"
        out.write(text)
        written += len(text.encode("utf-8"))
        copy += 1
    out.close()
    return os.path.join(directory, "part-*.txt"), written


def directory_bytes(path):
    """Bytes of every file under `path`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def prepare(corpus_glob, tokenizer, stores, beam_workers=0):
    """(store path, seconds, seconds learning the tokenizer) of preparing the corpus with `tokenizer`,
    in this process or (`beam_workers`) on Beam's direct runner with that many worker processes."""
    config = load_config(None, ["data.source=files", f"data.paths=[{json.dumps(corpus_glob)}]",
                                f"data.tokenizer={tokenizer}", f"data.vocab_size={VOCAB_SIZES[tokenizer]}"])
    path = os.path.join(stores, f"{tokenizer}-beam" if beam_workers else tokenizer)
    options = f"--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers={beam_workers}"
    started, learned = time.perf_counter(), []
    prepare_store(config.data, path, beam_options=options if beam_workers else None,
                  log=lambda message: learned.append(time.perf_counter() - started) if " learned " in message else None)
    return path, time.perf_counter() - started, learned[0] if learned else 0.0


def prepare_line(label, text_bytes, seconds, learning, path):
    """One printed line of a prepare's rates and sizes."""
    store = TokenStore.open(path)
    tokens = store.tokens("train") + store.tokens("validation")
    return (f"prepare {label:22s} {text_bytes / 1e6 / seconds:7.1f} MB/s ({seconds:.0f} s; learning {learning:.0f} s, "
            f"then {text_bytes / 1e6 / (seconds - learning):.1f} MB/s), {tokens:,} tokens, "
            f"store {directory_bytes(path) / 1e9:.2f} GB, index {os.path.getsize(os.path.join(path, 'index.json')) / 1e3:.1f} kB")


def same_store(left, right):
    """Whether two stores hold the same shards (index.json's splits and tokenizer, and every shard's CRC)."""
    a, b = TokenStore.open(left).index, TokenStore.open(right).index
    return a["splits"] == b["splits"] and a["tokenizer"] == b["tokenizer"]


def pipeline_tokens_per_sec(store_path, batches=3000, seq_len=64, global_batch=12):
    """Tokens/s of reading training batches from the store, as one training process does."""
    store = TokenStore.open(store_path)
    dataset = train_dataset_fn(store, seq_len, global_batch, seed=0)(tf.distribute.InputContext())
    iterator = iter(dataset)
    for _ in range(100):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * global_batch * seq_len / (time.perf_counter() - started)


def train_run(args, env=None, timeout=3600):
    """(seconds, stdout, peak RSS in MB) of `python -m tflm.train args` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tflm.train", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tflm.train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, done.stdout, max(peak, before) / 1024


def trainer_tokens_per_sec(store_path, work):
    """The trainer's tokens/s on the default model over 300 steps after the first evaluation."""
    run_dir = os.path.join(work, "speed-run")
    train_run(["--run-dir", run_dir, "--set", f"data.store={store_path}", *same_data(store_path),
               "--set", "train.steps=400", "--set", "train.eval_every=100", "--set", "train.eval_batches=10"])
    history = [json.loads(line) for line in open(os.path.join(run_dir, "history.jsonl"))]
    return sum(r["tokens_per_sec"] for r in history[1:]) / len(history[1:])


def same_data(store_path):
    """--set arguments that describe the data a store was prepared from (a run checks them)."""
    with open(os.path.join(store_path, "index.json"), encoding="utf-8") as f:
        data = json.load(f)["data"]
    return [arg for key, value in data.items() for arg in ("--set", f"data.{key}={json.dumps(value)}")]


def resume_seconds(store_path, work, at_step):
    """When resuming a run at `at_step`, twice (the first resumption fills the compile cache,
    tflm/training/compile_cache.py; the second, as after any later preemption, loads it): per
    resumption, seconds from launch to the "resuming from" line (imports, store and checkpoint
    opened), to the end of the first step and its evaluation (tracing and XLA compilation or
    cache loading included), and to exit; and the peak RSS of training processes so far."""
    run_dir = os.path.join(work, f"resume-{at_step}")
    data = ["--set", f"data.store={store_path}", *same_data(store_path)]
    env = dict(os.environ, TFLM_COMPILE_CACHE=os.path.join(work, f"compile-cache-{at_step}"))  # starts empty
    train_run(["--run-dir", run_dir, *data, "--set", "train.steps=1", "--set", "train.eval_batches=1"], env)
    move_to_step(run_dir, at_step)
    # The same run resumed twice at the same step with the same config, as after two preemptions
    # (a different train.steps is another learning-rate schedule in the program, so another entry).
    shutil.copytree(run_dir, run_dir + "-again")
    times = [resumed_once(path, data, at_step, env) for path in (run_dir, run_dir + "-again")]
    return times, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def resumed_once(run_dir, data, at_step, env):
    """(seconds to "resuming from", to the end of step at_step + 1, to exit) of one resumption."""
    command = [sys.executable, "-m", "tflm.train", "--run-dir", run_dir, *data, "--set", f"train.steps={at_step + 1}",
               "--set", "train.eval_every=1", "--set", "train.eval_batches=1"]
    started = time.perf_counter()
    seen = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                          env=env) as proc:
        for line in proc.stdout:
            for mark in ("resuming from", f"step {at_step + 1}/"):
                if mark in line and mark not in seen:
                    seen[mark] = time.perf_counter() - started
    if proc.returncode != 0 or len(seen) != 2:
        raise SystemExit(f"resuming at step {at_step} failed ({proc.returncode}); saw {seen}")
    return seen["resuming from"], seen[f"step {at_step + 1}/"], time.perf_counter() - started


def move_to_step(run_dir, step):
    """Save the run's latest checkpoint again as if it had trained to `step` (the optimizer's
    iteration count is the step a run resumes at)."""
    from tflm.runs import run_dir as runs
    from tflm.runs.checkpoint import Checkpointer
    from tflm.models.build import build_model
    from tflm.training.cluster import Worker
    from tflm.tasks import task_for
    from tflm.training.trainer import Trainer
    from tflm.training.optimizer import make_optimizer

    config, tokenizer = runs.read_config(run_dir), runs.load_tokenizer(run_dir)
    model = build_model(config.model, tokenizer.vocabulary_size, config.data.seq_len, config.train.seed)
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(tf.distribute.get_strategy(), model, optimizer, task_for(config), config.train, False)
    checkpointer = Checkpointer(run_dir, Worker(), model, optimizer, config.train.keep_checkpoints, trainer.state())
    checkpointer.restore_latest()
    optimizer.iterations.assign(step)
    checkpointer.save(step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--tokenizers", default="char,byte,sentencepiece,wordpiece")
    parser.add_argument("--work", help="where to write the corpus and stores (default: a temporary directory)")
    parser.add_argument("--beam-workers", type=int, default=0,
                        help="also prepare each store on Apache Beam's direct runner with this many workers")
    parser.add_argument("--parts", default="prepare,pipeline,resume",
                        help="comma-separated: prepare (every --tokenizers store), pipeline (vs the trainer), resume")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    flags = subprocess.run("grep -o 'avx512[a-z_0-9]*\\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\\n' ' '", shell=True,
                           capture_output=True, text=True).stdout.strip()
    print(f"CPU: {os.cpu_count()} cores, AVX-512: {flags or 'none'}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        corpus = os.path.join(work, "corpus")
        os.makedirs(corpus)
        pattern, text_bytes = write_corpus(corpus, args.gigabytes)
        print(f"corpus: {text_bytes / 1e9:.2f} GB in {len(os.listdir(corpus))} files")
        stores = {}
        for tokenizer in args.tokenizers.split(",") if "prepare" in parts else ["char"]:
            path, seconds, learning = prepare(pattern, tokenizer, os.path.join(work, "stores"))
            stores[tokenizer] = path
            print(prepare_line(f"{tokenizer}, one process", text_bytes, seconds, learning, path), flush=True)
            if args.beam_workers and "prepare" in parts:
                beam_path, beam_seconds, beam_learning = prepare(pattern, tokenizer, os.path.join(work, "stores"),
                                                                 args.beam_workers)
                print(prepare_line(f"{tokenizer}, Beam x{args.beam_workers}", text_bytes, beam_seconds, beam_learning,
                                   beam_path), flush=True)
                after = (f"; after learning the tokenizer, {(seconds - learning) / (beam_seconds - beam_learning):.2f}x"
                         if beam_learning else "")  # char learns inside the pipeline
                print(f"  Beam direct runner, {args.beam_workers} workers vs one process: {seconds / beam_seconds:.2f}x"
                      f"{after} (goal >= 1.7x); same store: {same_store(path, beam_path)}", flush=True)
                shutil.rmtree(beam_path)
        store_path = stores.get("char") or next(iter(stores.values()))
        if "pipeline" in parts:
            pipeline = pipeline_tokens_per_sec(store_path)
            trainer = trainer_tokens_per_sec(store_path, work)
            print(f"input pipeline {pipeline:,.0f} tokens/s; trainer {trainer:,.0f} tokens/s: {pipeline / trainer:.1f}x "
                  "(goal >= 10x)", flush=True)
        for step in (10, 10**6) if "resume" in parts else ():
            times, rss = resume_seconds(store_path, work, step)
            for which, (resumed, first_step, ended) in zip(("first (compiles)", "again (cache)"), times):
                print(f"resume at step {step:>9,}, {which}: resumed {resumed:.1f} s after launch, first step and its "
                      f"evaluation done at {first_step:.1f} s, exit at {ended:.1f} s", flush=True)
            print(f"  peak RSS of training processes {rss:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
