"""Data-parallel scaling on localhost: training tokens/s of 1 worker against 2 workers.

Each worker is limited to one intra-op and one inter-op thread and keeps the same per-worker
batch (so the global batch doubles with 2 workers); both run through `tflm.launch`, i.e.
MultiWorkerMirroredStrategy over gRPC with a ring all-reduce. Goal: ratio >= 1.8.

    python benchmarks/multi_worker_scaling.py [--steps 400] [--per-worker-batch 12]
"""

import argparse
import os
import subprocess
import sys
import tempfile

from tflm.runs import run_dir as runs


def workers_tokens_per_sec(workers, args, tmp):
    """Mean training tokens/s (all workers together) after the first evaluation period."""
    run_dir = os.path.join(tmp, f"workers{workers}")
    command = [sys.executable, "-m", "tflm.launch", "--workers", str(workers), "--",
               "--run-dir", run_dir, "--set", f"train.steps={args.steps}",
               "--set", f"train.eval_every={args.steps // 4}", "--set", "train.eval_batches=1",
               "--set", f"train.global_batch_size={args.per_worker_batch * workers}",
               "--set", "runtime.intra_op_threads=1", "--set", "runtime.inter_op_threads=1"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    timed = runs.read_history(run_dir)[1:]
    return sum(r["tokens_per_sec"] for r in timed) / len(timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--per-worker-batch", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = workers_tokens_per_sec(1, args, tmp)
        two = workers_tokens_per_sec(2, args, tmp)
    print(f"1 worker : {one:9.0f} tokens/s")
    print(f"2 workers: {two:9.0f} tokens/s")
    print(f"scaling  : {two / one:.2f}x (goal >= 1.8)")


if __name__ == "__main__":
    main()
