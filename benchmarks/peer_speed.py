"""tflm against PyTorch on the same model, data and machine: training speed side by side, in one run.

Speeds are only compared within one run of this script on one machine (the same 2-core slot has
been an AVX-512 CPU and an AVX2-only one), so it prints the machine first and every goal is a ratio.

For the default Transformer and for configs/char_lstm.yaml (`--models`):
- tflm: `tflm.train.train(config, run_dir)`, the path `python -m tflm.train` runs (Controller,
  Trainer, strategy, tf.data pipeline with its per-step checks), with train.eval_every = `--warmup`,
  one validation batch per evaluation and a checkpoint only at the end; tokens/s is read from the
  run's history.jsonl, over every evaluation period after the first (which holds tracing and XLA
  compilation). Evaluation time is outside those periods, as tflm times them.
- PyTorch: benchmarks/torch_peer.py (the same architecture, sizes, loss, AdamW and schedule:
  `torch_peer.py --check` proves it against tflm), eager unless `--torch-compile`, on the same
  windows of the same corpus (pydoc_data.topics with tflm's vocabulary; only the shuffle order
  differs); `--steps` steps timed after `--warmup` untimed ones.
Each side runs alone in a fresh process (TensorFlow and PyTorch never share one), one after the
other, with `--threads` intra-op and inter-op threads: TensorFlow through runtime.intra_op_threads
and runtime.inter_op_threads, PyTorch through torch.set_num_threads and
torch.set_num_interop_threads, and OMP_NUM_THREADS for both.

Figures (per model and framework; with --repeats R the median over R alternating pairs):
- tokens/s = timed steps x global_batch_size x seq_len / timed seconds; ms/step = 1000 x seconds / steps.
- model FLOPs per step = tokens per step x (6 x N + A): N = parameters of the matmuls (Transformer:
  layers x (4 d^2 + 2 d ff) + d V; LSTM: sum over layers of 4 u (input width + u), + u V; embeddings,
  biases and norms excluded), forward + backward = 6 FLOPs per parameter per token;
  A = 12 x layers x seq_len x d for the attention scores and weighted values (4 T d forward per
  token and layer, full T x T as both implementations compute it, x 3 with the backward), 0 for
  the LSTM.
- MFU = model FLOPs per step / seconds per step / peak, peak = the best FLOP/s of
  tf.linalg.matmul and torch.matmul on `--matmul-size` square matrices in the precision of the
  run (fp32, or bf16 for bf16 runs), each measured in its framework's process with the same
  threads (2 n^3 FLOPs per product, best of 10).
- `--sizes default,wide`: the config's sizes, and a GPT-2-like width (4 x 512, 8 heads, ff 2048,
  T256, B16; the Transformer only, with a tenth of --steps and --warmup). `--precision fp32,bf16`:
  tflm's runtime.precision float32 / mixed_bfloat16 (its CPU step through XLA or oneDNN as
  tflm/training/precision.py decides) against PyTorch fp32 / `torch.autocast` bf16 (CUDA autocast
  on a GPU). Each model and size prints one pair per precision, then "best vs best": each
  framework's fastest precision against the other's.
- `--full-run`: wall time of a whole default run, start-up included (process start to exit):
  `python -m tflm.train` against `python benchmarks/torch_peer.py --run-dir` (evaluations every
  train.eval_every steps over the same validation batches, a checkpoint at each); with the final
  validation loss of each.

    python benchmarks/peer_speed.py                       # steady state, both models
    python benchmarks/peer_speed.py --sizes default,wide --precision fp32,bf16 --steps 200 --warmup 30
    python benchmarks/peer_speed.py --full-run            # + whole default runs (minutes)
    python benchmarks/peer_speed.py --steps 20 --warmup 5 --models lstm --full-run --full-run-steps 20   # smoke
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's tflm, not another installed one

from tflm.config import load_config, updated  # noqa: E402  (pure Python: no TensorFlow, no PyTorch)

CONFIGS = {"transformer": None, "lstm": os.path.join(ROOT, "configs", "char_lstm.yaml")}
SIZES = {"default": [],  # the config's own sizes
         "wide": ["model.embed_dim=512", "model.num_layers=4", "model.num_heads=8", "model.ff_dim=2048",
                  "data.seq_len=256", "train.global_batch_size=16"]}  # GPT-2-like width; the Transformer only
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}  # --precision -> runtime.precision


# ----------------------------------------------------------------------------- the machine


def machine_lines():
    """CPU model, its AVX-512 flags, CPUs, load average."""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpuinfo = f.read()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    flags = set(re.findall(r"\bavx512[a-z_0-9]*", cpuinfo))
    other = [flag for flag in ("avx2", "fma", "amx_tile", "amx_bf16") if re.search(rf"\b{flag}\b", cpuinfo)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"CPU: {model.group(1) if model else platform.processor()}",
            f"AVX-512: {' '.join(sorted(flags)) or 'none'}; also: {' '.join(other) or 'none'}",
            f"nproc: {len(os.sched_getaffinity(0))} (of {os.cpu_count()} CPUs)",
            f"load average (1, 5, 15 min): {load}"]


# ----------------------------------------------------------------------------- model FLOPs


def matmul_parameters(model_config, vocabulary_size):
    """Parameters that take part in a matmul per token: kernels and the head (no embeddings, biases, norms)."""
    m = model_config
    if m.type == "lstm":
        widths = [m.embed_dim] + [m.lstm_units] * (m.num_layers - 1)
        return sum(4 * m.lstm_units * (width + m.lstm_units) for width in widths) + m.lstm_units * vocabulary_size
    d = m.embed_dim
    return m.num_layers * (4 * d * d + 2 * d * m.ff_dim) + d * vocabulary_size


def model_flops_per_step(config, vocabulary_size):
    """Forward + backward FLOPs of one step: tokens x (6 N + 12 layers seq_len d for attention)."""
    m, seq_len = config.model, config.data.seq_len
    attention = 12 * m.num_layers * seq_len * m.embed_dim if m.type == "transformer" else 0
    return config.train.global_batch_size * seq_len * (6 * matmul_parameters(m, vocabulary_size) + attention)


# ----------------------------------------------------------------------------- one framework, in its own process


def model_config(model, overrides, threads, size="default", precision="fp32"):
    """tflm's config for `model` at `size` and `precision`, with the --set overrides and the thread counts."""
    config = load_config(CONFIGS[model], [*SIZES[size], *overrides])
    return updated(config, runtime={"intra_op_threads": threads, "inter_op_threads": threads,
                                    "precision": PRECISIONS[precision]})


def measured_steps(args, size):
    """(untimed, timed) steps at `size`: a tenth of --warmup and --steps for the wide size (its steps
    take about 20x longer)."""
    if size == "wide":
        return max(3, args.warmup // 10), max(10, args.steps // 10)
    return args.warmup, args.steps


def measure_tflm(config, warmup, steps, matmul_size):
    """Steady-state seconds of `steps` steps through tflm.train.train, and TF's matmul FLOP/s."""
    import tensorflow as tf

    from tflm.models.build import build_model
    from tflm.training.train import train

    config = updated(config, train={"steps": warmup + steps, "eval_every": warmup, "eval_batches": 1,
                                    "checkpoint_every": warmup + steps})
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = train(config, os.path.join(tmp, "run"))
        history = read_history(run_dir)
        with open(os.path.join(run_dir, "vocab.json"), encoding="utf-8") as f:
            vocabulary_size = len(json.load(f)["characters"]) + 2  # + padding and out-of-vocabulary
    tokens_per_step = config.train.global_batch_size * config.data.seq_len
    timed = list(zip(history, history[1:]))  # the periods after the first
    seconds = sum((r["step"] - before["step"]) * tokens_per_step / r["tokens_per_sec"] for before, r in timed)
    model = build_model(config.model, vocabulary_size, config.data.seq_len)  # to count its parameters
    return {"seconds": seconds, "steps": history[-1]["step"] - history[0]["step"],
            "parameters": sum(int(v.numpy().size) for v in model.trainable_variables),
            "vocabulary_size": vocabulary_size,
            "matmul_flops_per_s": tf_matmul_flops_per_s(matmul_size, precision=config.runtime.precision),
            "version": f"TensorFlow {tf.__version__}"}


def tf_matmul_flops_per_s(size, repeats=10, precision="float32"):
    """Best FLOP/s of tf.linalg.matmul on two size x size matrices in the compute dtype of
    `precision` (eager: oneDNN's kernels, run synchronously on the CPU)."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a, b = tf.random.normal((size, size), dtype=dtype), tf.random.normal((size, size), dtype=dtype)
    tf.linalg.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def measure_torch(config, warmup, steps, matmul_size, compile_model):
    """Steady-state seconds of `steps` PyTorch steps, and torch's matmul FLOP/s."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import torch_peer

    torch_peer.set_threads(config.runtime.intra_op_threads)
    result = torch_peer.time_training(config, warmup, steps, compile_model)
    dtype = torch_peer.AUTOCAST.get(config.runtime.precision, torch.float32)
    result["matmul_flops_per_s"] = torch_peer.matmul_flops_per_s(matmul_size, dtype=dtype)
    result["version"] = f"PyTorch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    if "tensorflow" in sys.modules:
        raise RuntimeError("the PyTorch measurement imported TensorFlow")
    return result


def child_main(args):
    """The --child mode: measure one framework on one model, write the result as JSON."""
    config = model_config(args.models[0], args.set, args.threads, args.sizes, args.precision)
    if args.child == "tflm":
        result = measure_tflm(config, args.warmup, args.steps, args.matmul_size)
    else:
        result = measure_torch(config, args.warmup, args.steps, args.matmul_size, args.torch_compile)
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)


def child_env(threads):
    """The environment of a measured process: this checkout's tflm, the thread count, quiet TensorFlow."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_child(framework, model, size, precision, args, tmp):
    """Measure one framework on one model at one size and precision in a fresh process; its result dict."""
    result_path = os.path.join(tmp, f"{framework}-{model}-{size}-{precision}.json")
    warmup, steps = measured_steps(args, size)
    command = [sys.executable, os.path.abspath(__file__), "--child", framework, "--models", model,
               "--sizes", size, "--precision", precision,
               "--steps", str(steps), "--warmup", str(warmup), "--threads", str(args.threads),
               "--matmul-size", str(args.matmul_size), "--result", result_path]
    command += [f"--set={s}" for s in args.set] + (["--torch-compile"] if args.torch_compile else [])
    finished = subprocess.run(command, cwd=ROOT, env=child_env(args.threads), capture_output=True, text=True)
    if finished.returncode:
        sys.exit(f"peer_speed: the {framework} measurement of {model} ({size}, {precision}) failed:\n{finished.stdout}{finished.stderr}")
    with open(result_path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- whole default runs


def full_run(framework, model, args, tmp):
    """(wall seconds from process start to exit, last history record) of a whole run."""
    run_dir = os.path.join(tmp, f"full-{framework}-{model}")
    config_args = ["--config", CONFIGS[model]] if CONFIGS[model] else []
    sets = args.set + ([f"train.steps={args.full_run_steps}"] if args.full_run_steps else [])
    set_args = [f"--set={s}" for s in sets]
    if framework == "tflm":
        command = [sys.executable, "-m", "tflm.train", "--run-dir", run_dir, *config_args, *set_args,
                   f"--set=runtime.intra_op_threads={args.threads}", f"--set=runtime.inter_op_threads={args.threads}"]
    else:
        command = [sys.executable, os.path.join(ROOT, "benchmarks", "torch_peer.py"), "--run-dir", run_dir,
                   *config_args, *set_args, "--threads", str(args.threads)]
        command += ["--compile"] if args.torch_compile else []
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=child_env(args.threads), capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if finished.returncode:
        sys.exit(f"peer_speed: the full {framework} run of {model} failed:\n{finished.stdout}{finished.stderr}")
    return wall_s, read_history(run_dir)[-1]


def read_history(run_dir):
    """The records of RUN_DIR/history.jsonl (tflm's and torch_peer's have the same keys)."""
    with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- report


def summarise(results, config):
    """Median seconds per step over repeats, tokens/s, and the result fields every repeat shares."""
    ms_per_step = statistics.median(1000 * r["seconds"] / r["steps"] for r in results)
    tokens_per_step = config.train.global_batch_size * config.data.seq_len
    return {"ms_per_step": ms_per_step, "tokens_per_sec": tokens_per_step * 1000 / ms_per_step,
            "parameters": results[0]["parameters"], "vocabulary_size": results[0]["vocabulary_size"],
            "matmul_flops_per_s": max(r["matmul_flops_per_s"] for r in results), "version": results[0]["version"],
            "all_ms_per_step": [1000 * r["seconds"] / r["steps"] for r in results]}


def print_steady_state(model, config, tflm, torch, peak, torch_label):
    """The steady-state lines of one model at one size and precision."""
    flops = model_flops_per_step(config, tflm["vocabulary_size"])
    n = matmul_parameters(config.model, tflm["vocabulary_size"])
    print(f"\n{model}, {config.runtime.precision}: {tflm['parameters']:,} parameters (PyTorch {torch['parameters']:,}"
          f"{'' if tflm['parameters'] == torch['parameters'] else ', DIFFERENT'}), N = {n:,} matmul parameters, "
          f"vocabulary {tflm['vocabulary_size']}, {config.train.global_batch_size} x {config.data.seq_len} "
          f"tokens/step, {flops / 1e9:.3f} GFLOP/step")
    for name, side in (("tflm", tflm), (torch_label, torch)):
        runs = ", ".join(f"{x:.2f}" for x in side["all_ms_per_step"])
        flops_per_s = flops / (side["ms_per_step"] / 1000)
        print(f"  {name:<16} {side['tokens_per_sec']:9.0f} tokens/s  {side['ms_per_step']:7.2f} ms/step  "
              f"{flops_per_s / 1e9:6.1f} GFLOP/s  MFU {flops_per_s / peak:5.1%}"
              + (f"  (ms/step of each repeat: {runs})" if len(side["all_ms_per_step"]) > 1 else ""))
    ratio = tflm["tokens_per_sec"] / torch["tokens_per_sec"]
    print(f"  tflm/{torch_label}: {ratio:.2f}x tokens/s ({'tflm' if ratio > 1 else torch_label} faster); MFU "
          f"against {peak / 1e9:.1f} GFLOP/s, the best {config.runtime.precision} matmul of either framework")


def print_best_vs_best(label, by_precision, torch_label):
    """The line comparing each framework's fastest precision at one model and size."""
    def best(side):
        precision = max(by_precision, key=lambda p: by_precision[p][side]["tokens_per_sec"])
        return precision, by_precision[precision][side]["tokens_per_sec"]

    (tflm_precision, tflm_speed), (torch_precision, torch_speed) = best(0), best(1)
    print(f"  best vs best, {label}: tflm {tflm_precision} {tflm_speed:.0f} tokens/s, {torch_label} "
          f"{torch_precision} {torch_speed:.0f}: {tflm_speed / torch_speed:.2f}x")


def print_full_runs(model, tflm, torch, torch_label):
    """The whole-run lines of one model."""
    (tflm_s, tflm_last), (torch_s, torch_last) = tflm, torch
    print(f"  {model}: tflm {tflm_s:.1f} s (step {tflm_last['step']}, val_loss {tflm_last['val_loss']:.4f}), "
          f"{torch_label} {torch_s:.1f} s (step {torch_last['step']}, val_loss {torch_last['val_loss']:.4f}); "
          f"wall time tflm/{torch_label} {tflm_s / torch_s:.2f} (< 1: tflm faster)")


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["transformer", "lstm"])
    parser.add_argument("--sizes", default="default", help="comma-separated: default (the config's sizes), "
                        "wide (4 x 512, 8 heads, ff 2048, T256, B16; the Transformer only)")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (tflm mixed_bfloat16, "
                        "PyTorch autocast bf16)")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first (tracing, compilation, caches)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating tflm/PyTorch measurement pairs; medians")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op and inter-op threads of each framework (default: the CPUs this process may use)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul peak")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile the PyTorch model (default eager)")
    parser.add_argument("--full-run", action="store_true", help="also time whole default runs, start-up included")
    parser.add_argument("--full-run-steps", type=int, default=0, help="train.steps of the whole runs (0: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value on both sides, as python -m tflm.train --set")
    parser.add_argument("--child", choices=("tflm", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "repeats", "threads", "matmul_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name, known in (("sizes", SIZES), ("precision", PRECISIONS)):
        unknown = [x for x in getattr(args, name).split(",") if x not in known]
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return args


def measurements(args):
    """(model, size) pairs to measure, each at every --precision: the wide size for the Transformer only."""
    return [(model, size) for model in args.models for size in args.sizes.split(",")
            if size == "default" or model == "transformer"]


def main():
    """Measure both frameworks on each model and print the comparison."""
    args = parse_args()
    if args.child:
        return child_main(args)
    for line in machine_lines():
        print(line)
    busy = os.getloadavg()[0]
    if busy >= 0.5:
        print(f"warning: load average {busy:.2f} before starting: other work shares these CPUs, so the figures "
              "below are not a fair comparison (PyTorch's OpenMP threads spin-wait for each other and lose most "
              "under contention); run on a quiet machine")
    torch_label = "PyTorch-compile" if args.torch_compile else "PyTorch"
    print(f"threads: {args.threads} per framework (TensorFlow: runtime.intra_op_threads = inter_op_threads = "
          f"{args.threads}; PyTorch: torch.set_num_threads({args.threads}), torch.set_num_interop_threads("
          f"{args.threads}); OMP_NUM_THREADS={args.threads})")
    print(f"steady state: {args.steps} steps timed after {args.warmup} untimed, {args.repeats} tflm/PyTorch "
          f"pair(s) per model, each in a fresh process, one after the other", flush=True)
    measured, precisions = {}, args.precision.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for model, size in measurements(args):
            for precision in precisions:
                pairs = [(run_child("tflm", model, size, precision, args, tmp),
                          run_child("torch", model, size, precision, args, tmp)) for _ in range(args.repeats)]
                measured[model, size, precision] = [[pair[i] for pair in pairs] for i in (0, 1)]
        any_pair = next(iter(measured.values()))
        print(f"versions: {any_pair[0][0]['version']}, {any_pair[1][0]['version']}")
        peaks = {}
        for precision in precisions:
            tflm_peak, torch_peak = (max(r["matmul_flops_per_s"] for (_, _, p), m in measured.items()
                                         if p == precision for r in m[side]) for side in (0, 1))
            peaks[precision] = max(tflm_peak, torch_peak)
            print(f"{precision} matmul peak ({args.matmul_size} x {args.matmul_size}, best of 10): tf.linalg.matmul "
                  f"{tflm_peak / 1e9:.1f} GFLOP/s, torch.matmul {torch_peak / 1e9:.1f} GFLOP/s")
        for model, size in measurements(args):
            by_precision = {}
            for precision in precisions:
                config = model_config(model, args.set, args.threads, size, precision)
                tflm_results, torch_results = measured[model, size, precision]
                by_precision[precision] = (summarise(tflm_results, config), summarise(torch_results, config))
                print_steady_state(f"{model} ({size})", config, *by_precision[precision], peaks[precision],
                                   torch_label)
            print_best_vs_best(f"{model} ({size})", by_precision, torch_label)
        if args.full_run:
            steps = args.full_run_steps or "the config's"
            print(f"\nwhole runs ({steps} steps, evaluations every train.eval_every steps over the whole "
                  "validation split, checkpoints at each; process start to exit):", flush=True)
            for model in args.models:
                print_full_runs(model, full_run("tflm", model, args, tmp), full_run("torch", model, args, tmp),
                                torch_label)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
