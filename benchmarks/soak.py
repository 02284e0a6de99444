"""Soak test of multi-worker training: N workers x M fast steps through tflm.launch, each worker's
thread count and resident memory sampled over time, printed as a table.

A tiny Transformer makes the steps fast, so the run does thousands of all-reduces a minute: what
leaks per collective (threads, memory) shows within minutes. Goal: both columns flat after the
first evaluation, exit code 0.

    python benchmarks/soak.py [--workers 2] [--steps 20000] [--interval 5] [--set SECTION.KEY=VALUE ...]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from machine import cpu_line  # benchmarks/machine.py, beside this script

TINY = ["model.embed_dim=8", "model.num_layers=1", "model.num_heads=1", "model.ff_dim=16", "data.seq_len=8",
        "train.eval_batches=1", "train.warmup_steps=5"]


def worker_pids(launcher_pid):
    """The tflm.train processes the launcher started, in task order."""
    try:
        with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children", encoding="utf-8") as f:
            children = [int(pid) for pid in f.read().split()]
    except OSError:
        return []
    return [pid for pid in children if b"tflm.train" in read_bytes(f"/proc/{pid}/cmdline")]


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def threads_and_rss_mb(pid):
    """(threads, resident memory in MB) of a process, or None once it has ended."""
    status = read_bytes(f"/proc/{pid}/status").decode()
    threads, rss = re.search(r"^Threads:\s+(\d+)", status, re.M), re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return (int(threads.group(1)), int(rss.group(1)) / 1024) if threads and rss else None


def launch(args, run_dir):
    """Start tflm.launch; returns the process (output: text lines)."""
    every = max(1, args.steps // 10)
    sets = TINY + [f"train.steps={args.steps}", f"train.eval_every={every}",
                   f"train.global_batch_size={2 * args.workers}"] + args.set
    command = [sys.executable, "-m", "tflm.launch", "--workers", str(args.workers), "--", "--run-dir", run_dir]
    command += [part for setting in sets for part in ("--set", setting)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def follow(process, state):
    """Keep the latest evaluated step in `state` and the lines that are not progress lines."""
    for line in process.stdout:
        step = re.match(r"\[worker 0\] step (\d+)/", line)
        if step:
            state["step"] = int(step.group(1))
        else:
            state["other"].append(line.rstrip("\n"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more train settings (repeatable)")
    args = parser.parse_args()
    print(cpu_line())
    print(f"{args.workers} workers x {args.steps} steps (tiny Transformer), a sample every {args.interval:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        process = launch(args, os.path.join(tmp, "run"))
        state = {"step": 0, "other": []}
        reader = threading.Thread(target=follow, args=(process, state), daemon=True)
        reader.start()
        header = "  time  step      " + "  ".join(f"w{i} threads  w{i} RSS MB" for i in range(args.workers))
        print(header)
        started, rows = time.monotonic(), []
        while process.poll() is None:
            samples = [threads_and_rss_mb(pid) for pid in worker_pids(process.pid)]
            if len(samples) == args.workers and None not in samples:
                rows.append((state["step"], samples))
                cells = "  ".join(f"{threads:10d}  {rss:9.0f}" for threads, rss in samples)
                print(f"{time.monotonic() - started:5.0f}s  {state['step']:>6}  {cells}", flush=True)
            time.sleep(args.interval)
        reader.join()
    elapsed = time.monotonic() - started
    print(f"exit code {process.returncode} after {elapsed:.0f} s ({args.steps / elapsed:.0f} steps/s overall)")
    trained = [samples for step, samples in rows if step > 0] or [samples for _, samples in rows]
    for i in range(args.workers if trained else 0):
        threads, rss = [row[i][0] for row in trained], [row[i][1] for row in trained]
        print(f"worker {i}, from the first evaluation on: threads {threads[0]} -> max {max(threads)}, "
              f"last {threads[-1]}; RSS {rss[0]:.0f} -> max {max(rss):.0f}, last {rss[-1]:.0f} MB")
    if process.returncode:
        print("\n".join(state["other"][-20:]))
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
