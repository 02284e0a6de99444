"""TODO docstring."""

import argparse
import json
import sys
from tflm.errors import exit_on_user_error
from tflm.serving.loading import load_run
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.serving.decoding import MAX_NEW_TOKENS
from tflm.serving.decoding import MAX_SEED
from tflm.serving.decoding import generate


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--prompt", action="append", default=[], help="text to continue (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help=f"1 to {MAX_NEW_TOKENS}")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy, < 1 less random, > 1 more random")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
    parser.add_argument("--seed", type=int, help=f"0 to {MAX_SEED}, for reproducible samples (default: random)")
    parser.add_argument("--stop", default="", help="end each completion before this text (default: none)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object per prompt: {"prompt": ..., "completion": ...}')
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


def print_completions(prompts, completions, as_json):
    """Print each prompt + completion: one JSON object per line with `as_json`; otherwise the
    text itself, under a "--- prompt N of M" line when there are several (texts may hold blank lines)."""
    for number, (prompt, completion) in enumerate(zip(prompts, completions), start=1):
        if as_json:
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False), flush=True)
            continue
        if len(prompts) > 1:
            print(f"--- prompt {number} of {len(prompts)}", flush=True)
        print(prompt + completion, flush=True)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.generate`: prints prompt + completion for each prompt."""
    args = parse_args(argv)
    prompts = args.prompt or [""]
    outputs = generate(load_run(args.run_dir), prompts, args.max_new_tokens, args.temperature,
                       args.top_k, args.top_p, args.seed, args.stop)
    print_completions(prompts, outputs, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
