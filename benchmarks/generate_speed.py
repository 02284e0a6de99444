"""Generation speed: in-process cached decoding (with and without XLA), recomputing the prefix, and
the exported `generate` and `generate_xla` signatures as TF Serving runs them.

    python benchmarks/generate_speed.py                      # default-size models, random weights
    python benchmarks/generate_speed.py --run-dir runs/X     # a trained run

Batch 1, a short prompt, `--new-tokens` (256) greedy tokens. Without --run-dir the models have
the default config's sizes (4 layers, 128 wide) with seq_len 512, so 256 tokens fit one context;
weights do not change the speed. Each timing runs `--repeats` times after a warm-up run (which
traces and XLA-compiles), taking turns (one run of each way per round, so a change in the
machine's load hits them alike); it prints the median tokens/s and the range over the rounds,
and the median and range of the per-round ratio of cached (XLA) to the exported signature.

    cached (XLA)        `tflm.generate` in Python: the decoding loop XLA-compiled
    cached, no XLA      the same tf.function without XLA
    recompute prefix    the same loop re-running the model over the whole window at each step
    exported generate   the SavedModel loaded with tf.saved_model.load and its `generate`
                        signature called: graph mode without XLA, as stock TF Serving runs it
    exported generate_xla  its `generate_xla` signature: the decoding loop XLA-compiled inside the
                        SavedModel, as TF Serving runs it when started with
                        --xla_cpu_compilation_enabled=true (without that flag it refuses it)

The goal is cached (XLA) / exported generate_xla <= 1.5. It also prints how often each in-process
decoder was traced (once, plus once for the export's graph). Not a test: numbers depend on the
machine, so the CPU's AVX-512 and AMX flags and the load average before and after are printed.

Measured with --repeats 3 --new-tokens 64 on 2 cores of an AMD EPYC (AVX-512 with avx512_bf16,
no AMX), load average 3 to 4 from other work, tokens/s (medians):

                 cached (XLA)  no XLA  recompute  exported generate  exported generate_xla  ratio
    Transformer      1102        193      130           234                1898             0.80x
    LSTM             1480       1592       89           806                2573             0.61x

Before generate_xla existed and the prompts were read eagerly the Transformer's ratio to the
exported `generate` was 3.32x (1144 against 335 tokens/s in one run).
"""

import argparse
import os
import re
import statistics
import string
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tflm.config import Config, updated  # noqa: E402
from tflm.serving.export import write_saved_model  # noqa: E402
from tflm.serving.decoding import decode_function, generate_ids  # noqa: E402
from tflm.serving.loading import LoadedRun, load_run  # noqa: E402
from tflm.tasks import task_for  # noqa: E402
from tflm.models.build import build_model  # noqa: E402
from tflm.serving.scoring import default_stride  # noqa: E402
from tflm.data.tokenizers import CharTokenizer  # noqa: E402

PROMPT = "def main():"


def random_run(model_type, seq_len):
    """A LoadedRun with the default sizes and random weights."""
    config = updated(Config(), model={"type": model_type}, data={"seq_len": seq_len})
    tokenizer = CharTokenizer(list(string.printable))
    model = build_model(config.model, tokenizer.vocabulary_size, seq_len)
    return LoadedRun("(random weights)", config, tokenizer, model, "", task_for(config))


def ways_to_decode(loaded, new_tokens, directory):
    """{label: function that makes `new_tokens` tokens} for the four ways of decoding; the export
    is written to `directory`."""
    def in_process(cached, jit_compile):
        return lambda: generate_ids(loaded, [PROMPT], new_tokens, temperature=0.0, cached=cached,
                                    jit_compile=jit_compile)

    def exported(signature):
        return lambda: signature(**inputs)

    write_saved_model(loaded, directory, default_stride(loaded.context))
    signatures = tf.saved_model.load(directory).signatures
    inputs = {"prompts": tf.constant([PROMPT]), "max_new_tokens": tf.constant(new_tokens),
              "temperature": tf.constant(0.0), "top_k": tf.constant(0), "seed": tf.constant(0),
              "top_p": tf.constant(1.0), "stop": tf.constant("")}
    return {"cached (XLA)": in_process(True, True), "cached, no XLA": in_process(True, False),
            "recompute prefix": in_process(False, False), "exported generate": exported(signatures["generate"]),
            "exported generate_xla": exported(signatures["generate_xla"])}


def benchmark(loaded, new_tokens, repeats):
    """{label: [tokens/s per round]}: each way once per round, after one warm-up run of each;
    and the in-process decoders' tracing counts (each should trace once)."""
    with tempfile.TemporaryDirectory() as directory:
        ways = ways_to_decode(loaded, new_tokens, directory)
        for run in ways.values():
            run()
        results = {label: [] for label in ways}
        for _ in range(repeats):
            for label, run in ways.items():
                start = time.perf_counter()
                run()
                results[label].append(new_tokens / (time.perf_counter() - start))
    traces = [decode_function(loaded, cached, jit).experimental_get_tracing_count()
              for cached, jit in ((True, True), (True, False), (False, False))]
    return results, traces


def cpu_flags():
    """The CPU's AVX-512 and AMX flags (as `grep -o 'avx512[a-z0-9_]*\\|amx[a-z0-9_]*' /proc/cpuinfo
    | sort -u`), or "none"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = sorted(set(re.findall(r"\b(?:avx512|amx)[a-z0-9_]*", f.read())))
    except OSError:
        return "unknown"
    return " ".join(flags) or "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: random default-size models)")
    parser.add_argument("--model-type", choices=("transformer", "lstm", "both"), default="both")
    parser.add_argument("--seq-len", type=int, default=512, help="context of the random models")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, AVX-512/AMX: {cpu_flags()}; load average {os.getloadavg()[0]:.2f} at start",
          flush=True)
    if args.run_dir:
        runs = [load_run(args.run_dir)]
    else:
        types = ("transformer", "lstm") if args.model_type == "both" else (args.model_type,)
        runs = [random_run(t, args.seq_len) for t in types]
    for loaded in runs:
        results, traces = benchmark(loaded, args.new_tokens, args.repeats)
        m = loaded.config.model
        print(f"{loaded.config.model.type}: {m.num_layers} layers, embed {m.embed_dim}, context {loaded.context}, "
              f"batch 1, {args.new_tokens} new tokens; median tokens/s [min-max of {args.repeats}]")
        for label, rates in results.items():
            print(f"  {label:20s} {statistics.median(rates):8.1f}  [{min(rates):.0f}-{max(rates):.0f}]")
        for exported in ("exported generate_xla", "exported generate"):
            ratios = [x / e for x, e in zip(results["cached (XLA)"], results[exported])]
            print(f"  cached (XLA) / {exported}: {statistics.median(ratios):.2f}x "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]")
        print(f"  (goal <= 1.5x); in-process decoder traces {traces}; load average {os.getloadavg()[0]:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
