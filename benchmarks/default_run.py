"""The no-argument job: time `python -m tflm.train` end to end and report its validation loss.

Goal (issue 2): at most 3 minutes on a 2-core CPU, validation loss at most 1.45 nats/char.

    python benchmarks/default_run.py
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tflm

from tflm.runs import run_dir as runs


def main():
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tflm.train", "--run-dir", run_dir], check=True)
        wall_s = time.perf_counter() - start
        last = runs.read_history(run_dir)[-1]
    print(f"python -m tflm.train: {wall_s:.1f} s wall (goal <= 180), step {last['step']}, "
          f"val_loss {last['val_loss']:.4f} nats/char (goal <= 1.45), "
          f"val_accuracy {last['val_accuracy']:.3f}, training {last['tokens_per_sec']:.0f} tokens/s")


if __name__ == "__main__":
    main()
