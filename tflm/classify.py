"""TODO docstring."""

import argparse
import json
import sys
from tflm.errors import exit_on_user_error
from tflm.serving.loading import load_run
from tflm.serving.inputs import read_texts
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.serving.classifying import classify_texts


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.classify", description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--run-dir", required=True, help="a trained classification run directory")
    parser.add_argument("--file", help="also classify each line of this UTF-8 file ('-' = stdin)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.classify`."""
    args = parse_args(argv)
    texts = read_texts(args.texts, args.file)
    for result in classify_texts(load_run(args.run_dir), texts):
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"{result['label']}  p {result['probabilities'][result['label']]:.3f}  {result['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
