"""Bits per byte of runs that differ only in their tokenizer, on the default corpus.

Each tokenizer trains the same model (the default Transformer unless --set says otherwise) for
the same steps, global batch and seq_len, through `python -m tflm.train`; the table gives each
run's final validation bits per byte (lower is better; comparable across tokenizers, unlike
nats per token), its validation loss in nats per token, the UTF-8 bytes a token holds on average
in the validation split, and the wall time.

    python benchmarks/tokenizer_bpb.py                          # 1000 steps each
    python benchmarks/tokenizer_bpb.py --steps 2000 --set model.type=lstm
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZERS = {"char": 1000, "byte": 257, "wordpiece": 1000, "sentencepiece": 1000}


def train_run(tokenizer, vocab_size, steps, overrides, run_dir):
    """Train one run in a fresh process; returns (its last history record, wall seconds)."""
    sets = [f"data.tokenizer={tokenizer}", f"data.vocab_size={vocab_size}", f"train.steps={steps}",
            f"train.eval_every={steps}", *overrides]
    command = [sys.executable, "-m", "tflm.train", "--run-dir", run_dir]
    for value in sets:
        command += ["--set", value]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tokenizer}: tflm.train failed:\n{done.stderr[-2000:]}")
    with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
        return json.loads(f.read().splitlines()[-1]), time.perf_counter() - started


def bytes_per_token(run_dir):
    """UTF-8 bytes per token of the run's validation split (from its token store's index)."""
    with open(os.path.join(run_dir, "store", "index.json"), encoding="utf-8") as f:
        split = json.load(f)["splits"]["validation"]
    return split["text_bytes"] / split["tokens"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    print(f"{args.steps} steps each, default config{' + ' + ' '.join(args.set) if args.set else ''}")
    print(f"{'tokenizer':<14}{'vocab':>6}{'val bits/byte':>15}{'val nats/token':>16}{'bytes/token':>13}{'wall s':>8}")
    with tempfile.TemporaryDirectory() as work:
        for tokenizer in args.tokenizers.split(","):
            run_dir = os.path.join(work, tokenizer)
            record, wall = train_run(tokenizer, TOKENIZERS[tokenizer], args.steps, args.set, run_dir)
            print(f"{tokenizer:<14}{TOKENIZERS[tokenizer]:>6}{record['val_bits_per_byte']:>15.3f}"
                  f"{record['val_loss']:>16.3f}{bytes_per_token(run_dir):>13.2f}{wall:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
