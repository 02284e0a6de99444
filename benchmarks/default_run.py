"""The no-argument job: time `python -m tflm.train` end to end and report its validation loss.

Goal (issue 2): at most 3 minutes on a 2-core CPU, validation loss at most 1.45 nats/char.
With `--precision fp32,bf16` (issue 21) the default run is trained once per precision
(runtime.precision float32 / mixed_bfloat16), one after the other, and the validation losses of
each evaluation are compared: goal, bf16's final validation loss within 1% of fp32's.

    python benchmarks/default_run.py
    python benchmarks/default_run.py --precision fp32,bf16
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tflm

from tflm.runs import run_dir as runs  # noqa: E402

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def default_run(precision):
    """(wall seconds, history records) of the default run at runtime.precision `precision`."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tflm.train", "--run-dir", run_dir,
                        "--set", f"runtime.precision={precision}"], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start, runs.read_history(run_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    args = parser.parse_args()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = sorted(set(re.findall(r"\b(?:avx512[a-z_0-9]*|amx[a-z_0-9]*)", f.read())))
    print(f"CPU flags: {' '.join(flags) or 'no AVX-512, no AMX'}")
    histories = {}
    for name in args.precision.split(","):
        wall_s, history = default_run(PRECISIONS[name])
        histories[name], last = history, history[-1]
        print(f"python -m tflm.train ({name}): {wall_s:.1f} s wall (goal <= 180), step {last['step']}, "
              f"val_loss {last['val_loss']:.4f} nats/char (goal <= 1.45), "
              f"val_accuracy {last['val_accuracy']:.3f}, training {last['tokens_per_sec']:.0f} tokens/s", flush=True)
    if {"fp32", "bf16"} <= set(histories):
        for fp32, bf16 in zip(histories["fp32"], histories["bf16"]):
            change = bf16["val_loss"] / fp32["val_loss"] - 1
            print(f"  step {fp32['step']:>5}: val_loss fp32 {fp32['val_loss']:.4f}, bf16 {bf16['val_loss']:.4f} "
                  f"({change:+.2%})")
        print(f"bf16 vs fp32 final validation loss: {histories['bf16'][-1]['val_loss'] / histories['fp32'][-1]['val_loss'] - 1:+.2%} "
              "(goal: within 1%)")


if __name__ == "__main__":
    main()
