"""Where the default Transformer's step time goes: the fp32 matmul rate at the model's own shapes,
TensorFlow (XLA-compiled, as tflm's step runs) against PyTorch, on this machine, in one run.

peer_speed.py measures the peak on 2048 x 2048 matrices; a training step of the default config
(12 x 64 = 768 tokens, width 128, feed-forward 512, 4 heads of 32, vocabulary ~105) multiplies
much smaller ones, forward and backward. This prints GFLOP/s for each shape in both frameworks
(each with `--threads` threads, best of `--repeats` timings of `--iterations` products chained
in one call), and the step's matmul FLOPs weighted by each framework's rate, i.e. the time the
matmuls alone take per step.

    python benchmarks/matmul_shapes.py        (needs torch: pip install -r benchmarks/requirements.txt)
"""

import argparse
import os
import subprocess
import sys
import time

TOKENS, WIDTH, FF, HEADS, CONTEXT, VOCAB, LAYERS = 768, 128, 512, 4, 64, 105, 4
# (name, batch, m, k, n, how many per step: forward and the two backward products of each)
SHAPES = [
    ("q/k/v/out projections", 1, TOKENS, WIDTH, WIDTH, 4 * LAYERS * 3),
    ("feed-forward in", 1, TOKENS, WIDTH, FF, LAYERS * 3),
    ("feed-forward out", 1, TOKENS, FF, WIDTH, LAYERS * 3),
    ("attention scores", TOKENS // CONTEXT * HEADS, CONTEXT, WIDTH // HEADS, CONTEXT, LAYERS * 3),
    ("attention values", TOKENS // CONTEXT * HEADS, CONTEXT, CONTEXT, WIDTH // HEADS, LAYERS * 3),
    ("logits", 1, TOKENS, WIDTH, VOCAB, 3),
]


def flops(batch, m, k, n):
    return 2 * batch * m * k * n


def time_tensorflow(threads, iterations, repeats):
    """{shape name: GFLOP/s} with tf.function(jit_compile=True)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    rates = {}
    for name, batch, m, k, n, _ in SHAPES:
        a = tf.random.normal([batch, m, k])
        b = tf.random.normal([batch, k, n]) / k

        @tf.function(jit_compile=True)
        def chain(a, b):
            total = tf.zeros([batch, m, n])
            for i in range(iterations):
                total += tf.matmul(a + float(i), b)  # distinct products XLA cannot fold into one
            return total

        chain(a, b).numpy()
        best = min(timed(lambda: chain(a, b).numpy()) for _ in range(repeats))
        rates[name] = flops(batch, m, k, n) * iterations / best / 1e9
    return rates


def time_torch(threads, iterations, repeats):
    """{shape name: GFLOP/s} with eager torch.bmm."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    with torch.no_grad():
        for name, batch, m, k, n, _ in SHAPES:
            a, b = torch.randn(batch, m, k), torch.randn(batch, k, n) / k

            def chain():
                total = torch.zeros(batch, m, n)
                for i in range(iterations):
                    total += torch.bmm(a + float(i), b)
                return total

            chain()
            best = min(timed(chain) for _ in range(repeats))
            rates[name] = flops(batch, m, k, n) * iterations / best / 1e9
    return rates


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--framework", choices=("tensorflow", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.framework:  # a child: one framework per process
        measure = time_tensorflow if args.framework == "tensorflow" else time_torch
        print(repr(measure(args.threads, args.iterations, args.repeats)))
        return
    flags = subprocess.run("grep -o 'avx512[a-z]*' /proc/cpuinfo | sort -u | tr '\\n' ' '", shell=True,
                           capture_output=True, text=True).stdout.strip()
    print(f"{os.cpu_count()} CPUs, AVX-512: {flags or 'none'}; load average {os.getloadavg()[0]:.2f}; "
          f"{args.threads} threads")
    rates = {}
    for framework in ("tensorflow", "torch"):
        done = subprocess.run([sys.executable, __file__, "--framework", framework, "--threads", str(args.threads),
                               "--iterations", str(args.iterations), "--repeats", str(args.repeats)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                                                   "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        rates[framework] = eval(done.stdout.strip().splitlines()[-1])  # our own child's repr of a dict
    print(f"{'shape (batch x m x k x n)':<44}{'per step':>9}{'TF XLA GFLOP/s':>16}{'PyTorch GFLOP/s':>17}")
    seconds = {"tensorflow": 0.0, "torch": 0.0}
    for name, batch, m, k, n, count in SHAPES:
        label = f"{name} ({batch}x{m}x{k}x{n})"
        print(f"{label:<44}{count:>9}{rates['tensorflow'][name]:>16.1f}{rates['torch'][name]:>17.1f}")
        for framework in seconds:
            seconds[framework] += count * flops(batch, m, k, n) / (rates[framework][name] * 1e9)
    print(f"matmuls of one training step at these rates: TensorFlow {seconds['tensorflow'] * 1e3:.1f} ms, "
          f"PyTorch {seconds['torch'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
