"""Generation speed: cached decoding vs recomputing the prefix, and the exported `generate` signature.

    python benchmarks/generate_speed.py                      # default-size models, random weights
    python benchmarks/generate_speed.py --run-dir runs/X     # a trained run

Batch 1, a short prompt, `--new-tokens` (256) greedy tokens. Without --run-dir the models have
the default config's sizes (4 layers, 128 wide) with seq_len 512, so 256 tokens fit one context;
weights do not change the speed. Each timing is the best of `--repeats` runs after a warm-up run
(which traces and XLA-compiles). "uncached" re-runs the model over the whole prefix at every step
(without XLA: its input grows each step). Not a test: numbers depend on the machine.
"""

import argparse
import os
import string
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tflm.config import Config, updated  # noqa: E402
from tflm.export import write_saved_model  # noqa: E402
from tflm.generate import generate_ids  # noqa: E402
from tflm.inference import LoadedRun, load_run  # noqa: E402
from tflm.models import build_model  # noqa: E402
from tflm.score import default_stride  # noqa: E402
from tflm.tokenizer import CharTokenizer  # noqa: E402

PROMPT = "def main():"


def random_run(model_type, seq_len):
    """A LoadedRun with the default sizes and random weights."""
    config = updated(Config(), model={"type": model_type}, data={"seq_len": seq_len})
    tokenizer = CharTokenizer(list(string.printable))
    model = build_model(config.model, tokenizer.vocabulary_size, seq_len)
    return LoadedRun("(random weights)", config, tokenizer, model, "")


def best_seconds(run, repeats):
    """Best wall time of `run()` over `repeats`, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark(loaded, new_tokens, repeats):
    """{label: tokens/s} for cached (XLA and not), uncached, and the exported signature."""
    results = {}
    for label, cached, jit_compile in (("cached", True, True), ("cached, no XLA", True, False),
                                       ("uncached (recompute prefix)", False, False)):
        seconds = best_seconds(lambda: generate_ids(loaded, [PROMPT], new_tokens, temperature=0.0, cached=cached,
                                                    jit_compile=jit_compile), repeats)
        results[label] = new_tokens / seconds
    with tempfile.TemporaryDirectory() as directory:
        write_saved_model(loaded, directory, default_stride(loaded.context))
        signature = tf.saved_model.load(directory).signatures["generate"]
        inputs = {"prompts": tf.constant([PROMPT]), "max_new_tokens": tf.constant(new_tokens),
                  "temperature": tf.constant(0.0), "top_k": tf.constant(0), "seed": tf.constant(0)}
        results["exported generate signature"] = new_tokens / best_seconds(lambda: signature(**inputs), repeats)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: random default-size models)")
    parser.add_argument("--model-type", choices=("transformer", "lstm", "both"), default="both")
    parser.add_argument("--seq-len", type=int, default=512, help="context of the random models")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if args.run_dir:
        runs = [load_run(args.run_dir)]
    else:
        types = ("transformer", "lstm") if args.model_type == "both" else (args.model_type,)
        runs = [random_run(t, args.seq_len) for t in types]
    for loaded in runs:
        results = benchmark(loaded, args.new_tokens, args.repeats)
        m = loaded.config.model
        print(f"{loaded.model_type}: {m.num_layers} layers, embed {m.embed_dim}, context {loaded.context}, "
              f"batch 1, {args.new_tokens} new tokens, {os.cpu_count()} CPUs")
        for label, tokens_per_s in results.items():
            print(f"  {label:30s} {tokens_per_s:9.1f} tokens/s")
        uncached = results["uncached (recompute prefix)"]
        print(f"  cached speed-up over recomputing: {results['cached'] / uncached:.1f}x "
              f"({results['cached, no XLA'] / uncached:.1f}x without XLA)", flush=True)


if __name__ == "__main__":
    main()
