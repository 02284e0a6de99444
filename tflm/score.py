"""TODO docstring."""

import argparse
import json
import sys
from tflm.errors import exit_on_user_error
from tflm.serving.loading import load_run
from tflm.serving.inputs import read_texts
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.serving.scoring import score_texts


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.score", description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to score")
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--file", help="also score each line of this UTF-8 file ('-' = stdin)")
    parser.add_argument("--stride", type=int, help="Transformer window stride (default: seq_len / 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.score`."""
    args = parse_args(argv)
    texts = read_texts(args.texts, args.file)
    for result in score_texts(load_run(args.run_dir), texts, args.stride):
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"log_prob {result['log_prob']:.4f}  mean_nll {result['mean_nll']:.4f}  "
                  f"perplexity {result['perplexity']:.3f}  bits/byte {result['bits_per_byte']:.3f}  "
                  f"tokens {result['num_tokens']}  {result['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
