"""`python -m tflm.score`: the log-probability of texts under a trained run.

    python -m tflm.score --run-dir runs/transformer "def main():" "import os"
    python -m tflm.score --run-dir runs/transformer --file texts.txt --json    (one text per line; '-' = stdin)

Prints, for each text, its log-probability, mean negative log-likelihood per token, perplexity,
bits per UTF-8 byte (which compares models with different tokenizers) and the number of tokens
scored; --json prints one JSON object per text instead. A text longer than the model's context is
scored in windows that start every --stride tokens. What the figures mean and how they are
computed: tflm.serving.scoring (`tflm.score_texts` in Python).
"""

import json

from tflm.cli import command
from tflm.serving.inputs import read_texts
from tflm.serving.loading import load_run
from tflm.serving.scoring import score_texts


def add_arguments(parser):
    """The command line."""
    parser.add_argument("texts", nargs="*", help="texts to score")
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--file", help="also score each line of this UTF-8 file ('-' = stdin)")
    parser.add_argument("--stride", type=int, help="Transformer window stride (default: seq_len / 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")


def run(args):
    """Print each text's scores."""
    texts = read_texts(args.texts, args.file)
    for result in score_texts(load_run(args.run_dir), texts, args.stride):
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"log_prob {result['log_prob']:.4f}  mean_nll {result['mean_nll']:.4f}  "
                  f"perplexity {result['perplexity']:.3f}  bits/byte {result['bits_per_byte']:.3f}  "
                  f"tokens {result['num_tokens']}  {result['text']!r}")
    return 0


main = command(__name__, add_arguments, run)
