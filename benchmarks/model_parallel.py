"""Model parallelism on this machine. Pipeline: for S in {1, 2, 4} stages and M in {1, 2, 4, 8}
micro-batches, the bytes of weights + optimizer state per device, the measured pipeline bubble
against GPipe's (S - 1) / (M + S - 1), and the step time. Tensor: for T in {1, 2, 4} shards (one
stage), each block's weights + optimizer state on each device against 1/T of the block (goal:
<= 1.1 x), the sums over devices per step and the bytes they move against Megatron-LM's 4
all-reduces per layer per step, and the step time.

Each configuration is one `python -m tflm.train` (TensorFlow must see runtime.logical_cpus before
it starts) of an 8-block char Transformer (embed_dim 128, ff_dim 512: the blocks outweigh the
embedding and head) on S logical CPUs, so one replica: S = 1 is the ordinary one-device trainer.
The first runtime.pipeline_trace_steps steps are traced (RUN/pipeline_trace.jsonl); the bubble is
the mean over the traced steps after the first (which compiles). The step time is from history's
tokens_per_sec over the last evaluation period (untraced, compiled steps) and, for S >= 2, the
traced steps' spans. Goal: the largest stage holds <= 1.25 x total / S bytes.

On logical CPUs every stage shares the machine's 2 cores: stages do work at once (the overlap
column), so the measured bubble follows GPipe's (S - 1) / (M + S - 1), but overlapping work only
takes longer, and the step is no faster than on one device (the step s column).
On a machine with GPUs the same runs (without runtime.logical_cpus) would put stage k on GPU k;
the lent GPU machine has no TensorFlow installed, so every figure printed is a logical-CPU figure.
Compilation dominates each run: about a minute per configuration on 2 busy cores (12 pipeline
runs, --quick: 6; --schedule both adds 8 gpipe runs, 4 with --quick; 3 tensor runs).

    python benchmarks/model_parallel.py [--quick] [--schedule 1f1b|gpipe|both] [--only pipeline|tensor]
                                        [--keep DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's tflm

from machine import cpu_line  # noqa: E402  (benchmarks/machine.py, beside this script)
from tflm.runs import run_dir as runs  # noqa: E402
from tflm.runs.pipeline_trace import measured_bubble, read_traces  # noqa: E402
from tflm.training.pipeline import bubble_fraction  # noqa: E402

SEQ_LEN, BATCH = 32, 16
MODEL = ["model.type=transformer", "model.num_layers=8", "model.embed_dim=128", "model.ff_dim=512",
         "model.num_heads=4", "data.tokenizer=char", f"data.seq_len={SEQ_LEN}",
         f"train.global_batch_size={BATCH}", "train.eval_batches=1"]
GOAL = 1.25  # largest stage <= GOAL x total / S


def train(run_dir, store, stages, microbatches, schedule, trace_steps, shards=1):
    """Train one configuration in a subprocess; its stdout and wall seconds."""
    period = 2 * (trace_steps + 1)  # the first holds the traced steps and the untraced loop's compilation
    settings = MODEL + [f"data.store={store}", f"train.microbatches={microbatches}",
                        f"train.steps={2 * period}", f"train.eval_every={period}"]
    if stages * shards > 1:
        settings += [f"runtime.pipeline_stages={stages}", f"runtime.tensor_parallel={shards}",
                     f"runtime.logical_cpus={stages * shards}", f"runtime.pipeline_schedule={schedule}",
                     f"runtime.pipeline_trace_steps={trace_steps}"]
    command = [sys.executable, "-m", "tflm.train", "--run-dir", run_dir]
    for setting in settings:
        command += ["--set", setting]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - start


def measure(run_dir, store, stages, microbatches, schedule, trace_steps):
    """One configuration's figures: device bytes, bubble, step times, the printed cut, wall time."""
    stdout, wall_s = train(run_dir, store, stages, microbatches, schedule, trace_steps)
    last = runs.read_history(run_dir)[-1]
    result = {"stages": stages, "microbatches": microbatches, "schedule": schedule if stages > 1 else "-",
              "step_s": SEQ_LEN * BATCH / last["tokens_per_sec"], "wall_s": wall_s,
              "cut": [line.strip() for line in stdout.splitlines() if "stage " in line and " on " in line]}
    if stages > 1:
        timed = read_traces(run_dir)[1:]
        result["device_bytes"] = timed[-1]["device_bytes"]
        result["bubble"] = sum(measured_bubble(r) for r in timed) / len(timed)
        result["span_s"] = sum(span(r) for r in timed) / len(timed)
        result["overlap"] = sum(overlap_s(r) / span(r) for r in timed) / len(timed)
    return result


def measure_tensor(run_dir, store, shards, trace_steps):
    """One tensor-parallel configuration's figures: block bytes per lane, sums per step, step time."""
    stdout, wall_s = train(run_dir, store, 1, 1, "1f1b", trace_steps, shards)
    last = runs.read_history(run_dir)[-1]
    result = {"shards": shards, "step_s": SEQ_LEN * BATCH / last["tokens_per_sec"], "wall_s": wall_s}
    if shards > 1:
        trace = read_traces(run_dir)[-1]
        result.update(block_bytes=trace["block_bytes"], lane_bytes=trace["lane_bytes"][0],
                      sums=trace["lane_sums"], moved=trace["lane_bytes_moved"])
    return result


def print_tensor(results):
    """Each T's bytes per device (a block's, and all), the sums per step, and the step time."""
    layers = int(next(s for s in MODEL if s.startswith("model.num_layers=")).split("=")[1])
    print(f"\nTensor parallelism: T shards of every block, one stage, one replica (micro-batches M = 1; "
          f"{layers} blocks; MB = 10^6 bytes)")
    print(f"{'T':>2} {'largest block share':>19} {'goal':>5} {'per device, all (MB)':<28} {'sums/step':>9} "
          f"{'Megatron 4/layer':>16} {'MB moved/step':>13} {'step s':>7} {'vs T=1':>6}")
    one = next(r for r in results if r["shards"] == 1)
    for r in results:
        t = r["shards"]
        if t == 1:
            row = f"{'1.000':>19} {'-':>5} {'(all on one device)':<28} {0:>9} {0:>16} {0:>13}"
        else:
            ratio = max(max(held) / (sum(held) / t) for held in r["block_bytes"].values())
            row = (f"{ratio:>19.3f} {'PASS' if ratio <= 1.1 else 'FAIL':>5} "
                   f"{' '.join(f'{b / 1e6:.3f}' for b in r['lane_bytes']):<28} {r['sums']:>9} {4 * layers:>16} "
                   f"{r['moved'] / 1e6:>13.3f}")
        print(f"{t:>2} {row} {r['step_s']:>7.3f} {one['step_s'] / r['step_s']:>5.2f}x")
    print("largest block share: the most any device holds of one block's weights + AdamW state, over 1/T of "
          "the block (the first device also holds the block's norms and output biases); all: every weight on the "
          "device (the first holds the embedding and head too); sums/step: sums of the devices' parts (forward "
          "outputs, backward input gradients), Megatron's all-reduces; MB moved: the parts and copies between "
          "devices, per step. Logical CPUs share 2 cores, so T > 1 is not faster here (see the module docstring).")


def span(record):
    """A traced step's seconds from its first start to its last end."""
    events = record["events"]
    return max(e["end_s"] for e in events) - min(e["start_s"] for e in events)


def overlap_s(record):
    """A traced step's seconds in which two or more stages were working at once."""
    edges = sorted((e[key], +1 if key == "start_s" else -1) for e in record["events"] for key in ("start_s", "end_s"))
    working, since, total = 0, 0.0, 0.0
    for time_s, change in edges:
        if working >= 2:
            total += time_s - since
        working, since = working + change, time_s
    return total


def print_bytes(results):
    """Per-device bytes of each S, the largest stage's share and the goal."""
    pipelined = [r for r in results if r["stages"] > 1]
    total = sum(pipelined[0]["device_bytes"])
    print("\nWeights + optimizer state per device (MB = 10^6 bytes; from the traces' device_bytes; S = 1, "
          "which writes no trace, holds their total: the sum of an S >= 2 run's device_bytes)")
    print(f"{'S':>2}  {'per device (MB)':<36} {'total MB':>9} {'largest MB':>10} "
          f"{'largest/(total/S)':>17}  goal <= {GOAL}")
    for stages in sorted({r["stages"] for r in results}):
        if stages == 1:
            held = [total]
        else:
            held = next(r["device_bytes"] for r in pipelined if r["stages"] == stages)
            if sum(held) != total:
                print(f"   note: S = {stages}'s devices hold {sum(held):,} bytes in all, not {total:,}")
        ratio = max(held) / (sum(held) / stages)
        print(f"{stages:>2}  {' '.join(f'{b / 1e6:.3f}' for b in held):<36} {sum(held) / 1e6:>9.3f} "
              f"{max(held) / 1e6:>10.3f} {ratio:>17.3f}  {'PASS' if ratio <= GOAL else 'FAIL'}")


def print_times(results):
    """Bubble and step time of every configuration."""
    print("\nBubble (mean over traced steps after the first) and step time")
    print(f"{'S':>2} {'M':>2} {'schedule':>8} {'bubble':>7} {'GPipe (S-1)/(M+S-1)':>19} {'(S-1)/S':>7} "
          f"{'overlap':>7} {'traced span s':>13} {'step s':>7} {'run wall s':>10}")
    for r in results:
        s, m = r["stages"], r["microbatches"]
        if s == 1:
            measured = f"{'-':>7} {'-':>19} {'-':>7} {'-':>7} {'-':>13}"
        else:
            measured = (f"{r['bubble']:>7.3f} {bubble_fraction(s, m):>19.3f} {(s - 1) / s:>7.3f} "
                        f"{r['overlap']:>7.3f} {r['span_s']:>13.3f}")
        print(f"{s:>2} {m:>2} {r['schedule']:>8} {measured} {r['step_s']:>7.3f} {r['wall_s']:>10.1f}")
    print("overlap: share of a traced step's span in which two or more stages worked at once; traced span: "
          "a traced step's first start to last end; step s: global batch tokens / history's tokens_per_sec "
          "over the last evaluation period (untraced steps)")
    most = max((r["overlap"] for r in results if r["stages"] > 1), default=0.0)
    if most < 0.01:
        print("Measured: no two stages worked at once, so the bubble is (S-1)/S whatever M, not GPipe's "
              "(S-1)/(M+S-1): the logical CPUs share the same cores, and each stage's program uses all of them.")
    else:
        print(f"Measured: stages worked at once for up to {most:.0%} of a step; logical CPUs share the same "
              "cores, so that overlap buys no speed (compare step s with S = 1).")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M in {1, 4} and one traced step fewer")
    parser.add_argument("--schedule", choices=("1f1b", "gpipe", "both"), default="1f1b")
    parser.add_argument("--only", choices=("pipeline", "tensor"), help="one sweep (default: both)")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories in DIR (default: a temp dir)")
    args = parser.parse_args()
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        sys.exit(f"model_parallel.py: error: --keep {args.keep} is not empty (its runs would resume, not rerun)")
    schedules = ("1f1b", "gpipe") if args.schedule == "both" else (args.schedule,)
    microbatches = (1, 4) if args.quick else (1, 2, 4, 8)
    trace_steps = 2 if args.quick else 3
    print(cpu_line())
    started = time.perf_counter()
    print(f"model: {' '.join(MODEL)}; per configuration {4 * (trace_steps + 1)} steps, the first "
          f"{trace_steps} traced (S >= 2), on S logical CPUs (runtime.logical_cpus = S: one replica)")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        os.makedirs(root, exist_ok=True)
        store = os.path.join(root, "store")  # prepared by the first run, shared by the others
        results, tensor = [], []
        for shards in ((1, 2, 4) if args.only != "pipeline" else ()):
            tensor.append(measure_tensor(os.path.join(root, f"t{shards}"), store, shards, trace_steps))
            print(f"  done T={shards}: {tensor[-1]['wall_s']:.0f} s", flush=True)
        for stages in ((1, 2, 4) if args.only != "tensor" else ()):
            for m in microbatches:
                for schedule in (schedules if stages > 1 else schedules[:1]):
                    run_dir = os.path.join(root, f"s{stages}_m{m}_{schedule}")
                    results.append(measure(run_dir, store, stages, m, schedule, trace_steps))
                    print(f"  done S={stages} M={m} {results[-1]['schedule']}: {results[-1]['wall_s']:.0f} s",
                          flush=True)
    for r in results:
        if r["stages"] > 1 and r["cut"] and r["microbatches"] == microbatches[0] and r["schedule"] == schedules[0]:
            print(f"\nthe cut for S = {r['stages']} (as tflm.train prints it):")
            print("\n".join(f"  {line}" for line in r["cut"]))
    if results:
        print_bytes(results)
        print_times(results)
    if tensor:
        print_tensor(tensor)
    print(f"sweep: {len(results) + len(tensor)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    print(cpu_line())


if __name__ == "__main__":
    main()
