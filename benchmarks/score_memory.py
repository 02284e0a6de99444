"""Scoring cost of a batch: one long text alone against the same text beside 31 empty ones.

    python benchmarks/score_memory.py                        # default-size models, random weights
    python benchmarks/score_memory.py --chars 50000 --model-type lstm

Each model (the default config's sizes, random weights: weights do not change the cost) is
exported as a SavedModel. Then, for each case, a fresh process that imports only tensorflow loads
it, calls its `score` signature once on a short text to warm up, and calls it `--repeats` times on
(a) one `--chars`-character text, (b) that text followed by 31 empty texts. It reports the growth
of peak RSS over the warm-up (VmHWM in /proc/self/status) and the best wall time. Scoring should
cost what the tokens sent cost, so the goal is (b) within 1.5x of (a) in both. Not a test:
numbers depend on the machine.
"""

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMPTY_TEXTS = 31
GOAL = 1.5


def long_text(chars):
    """A reproducible text of `chars` printable characters."""
    rng = random.Random(0)
    return "".join(rng.choice(string.ascii_letters + string.digits + " \n()=:.,") for _ in range(chars))


def peak_rss_bytes():
    """This process's peak resident set size (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure(saved_model, case, chars, repeats):
    """In this process: {peak_growth_bytes, best_s} of the `score` signature on `case`."""
    import tensorflow as tf

    score = tf.saved_model.load(saved_model).signatures["score"]
    score(texts=tf.constant(["def main():\n    return 0"]))
    before = peak_rss_bytes()
    texts = tf.constant([long_text(chars)] + ([""] * EMPTY_TEXTS if case == "mixed" else []))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score(texts=texts)["log_prob"].numpy()
        times.append(time.perf_counter() - start)
    return {"peak_growth_bytes": peak_rss_bytes() - before, "best_s": min(times)}


def measure_in_fresh_process(saved_model, case, chars, repeats):
    """`measure` in a new Python process, so earlier peaks do not hide this one."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, __file__, "--child", saved_model, "--case", case, "--chars", str(chars),
                           "--repeats", str(repeats)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_random_run(model_type, seq_len, directory):
    """Write a default-size model of `model_type` with random weights as a SavedModel."""
    sys.path.insert(0, REPO)
    from generate_speed import random_run

    from tflm.serving.export import write_saved_model
    from tflm.serving.scoring import default_stride

    loaded = random_run(model_type, seq_len)
    write_saved_model(loaded, directory, default_stride(loaded.context))
    return loaded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", choices=("transformer", "lstm", "both"), default="both")
    parser.add_argument("--seq-len", type=int, default=64, help="context of the models (the config's default)")
    parser.add_argument("--chars", type=int, default=20000, help="length of the long text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=("long", "mixed"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.case, args.chars, args.repeats)))
        return

    types = ("transformer", "lstm") if args.model_type == "both" else (args.model_type,)
    for model_type in types:
        with tempfile.TemporaryDirectory() as directory:
            loaded = export_random_run(model_type, args.seq_len, directory)
            results = {case: measure_in_fresh_process(directory, case, args.chars, args.repeats)
                       for case in ("long", "mixed")}
        m = loaded.config.model
        print(f"{model_type}: {m.num_layers} layers, embed {m.embed_dim}, context {loaded.context}; "
              f"(a) one text of {args.chars} characters, (b) it and {EMPTY_TEXTS} empty texts; "
              f"best of {args.repeats}, {os.cpu_count()} CPUs")
        for case, label in (("long", "(a) long text"), ("mixed", "(b) + 31 empty")):
            r = results[case]
            print(f"  {label:16s} peak RSS +{r['peak_growth_bytes'] / 2**20:8.1f} MiB   {r['best_s']:7.3f} s")
        memory = results["mixed"]["peak_growth_bytes"] / max(results["long"]["peak_growth_bytes"], 1)
        seconds = results["mixed"]["best_s"] / results["long"]["best_s"]
        verdict = "within" if max(memory, seconds) <= GOAL else "NOT within"
        print(f"  (b) / (a): memory {memory:.2f}x, time {seconds:.2f}x ({verdict} the {GOAL}x goal)", flush=True)


if __name__ == "__main__":
    main()
