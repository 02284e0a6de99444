"""`python -m tflm.generate`: sample a continuation of prompts from a trained run.

    python -m tflm.generate --run-dir runs/transformer --prompt "def " --max-new-tokens 100
    python -m tflm.generate --run-dir runs/transformer --prompt "import " --prompt "class " --seed 7 --json
    python -m tflm.generate --run-dir runs/transformer --prompt "def " --temperature 0 --stop "):"

Prints each prompt followed by its completion (under a "--- prompt N of M" line when there are
several), or with --json one {"prompt": ..., "completion": ...} object per line. Temperature 0 is
greedy; a --seed gives the same text every time, in Python and from an exported SavedModel. How
sampling works: tflm.serving.decoding, whose `generate` Python code imports from here too:
`from tflm.generate import generate`.
"""

import json

from tflm.cli import command
from tflm.serving.decoding import MAX_NEW_TOKENS, MAX_SEED, generate
from tflm.serving.loading import load_run


def add_arguments(parser):
    """The command line."""
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


def run(args):
    """Print prompt + completion for each prompt."""
    prompts = args.prompt or [""]
    outputs = generate(load_run(args.run_dir), prompts, args.max_new_tokens, args.temperature,
                       args.top_k, args.top_p, args.seed, args.stop)
    print_completions(prompts, outputs, args.json)
    return 0


main = command(__name__, add_arguments, run)
