"""`python -m tflm.export`: write a run as a SavedModel that stock TF Serving loads.

    python -m tflm.export --run-dir runs/transformer                       (saved_models/transformer/1)
    python -m tflm.export --run-dir runs/transformer --base gs://bucket/models --name charlm

Writes the next version BASE/NAME/VERSION (an existing version is never replaced) and prints its
directory. A language model's export has the signatures serving_default (logits), score and
generate; a classifier's has classify. Requests over --max-batch-size or --max-request-chars fail
with INVALID_ARGUMENT before any work is done. What is written, and how it is published safely on
local and remote filesystems: tflm.serving.export (`tflm.export_run` in Python).
"""

from tflm.atomic import check_persistent
from tflm.cli import command
from tflm.serving.export import export_run
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS


def add_arguments(parser):
    """The command line."""
    parser.add_argument("--run-dir", required=True, help="a trained run directory")
    parser.add_argument("--base", default="saved_models", help="TF Serving model base (default: saved_models)")
    parser.add_argument("--name", help="model name (default: the run directory's name)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                        help=f"texts, prompts or rows a request may hold (default: {MAX_BATCH_SIZE})")
    parser.add_argument("--max-request-chars", type=int, default=MAX_REQUEST_CHARS,
                        help=f"characters of all texts or prompts of a request, token ids of all its rows "
                             f"(default: {MAX_REQUEST_CHARS}; the cost of a request grows with them)")


def run(args):
    """Export the run and print the new version directory."""
    check_persistent(args.base, "--base")
    print(export_run(args.run_dir, args.base, args.name, args.max_batch_size, args.max_request_chars), flush=True)
    return 0


main = command(__name__, add_arguments, run)
