"""`python -m tflm.classify`: the labels a trained classifier (task.type: classify) gives texts.

    python -m tflm.classify --run-dir runs/classifier "some text" "another text"
    python -m tflm.classify --run-dir runs/classifier --file texts.txt --json     (one text per line; '-' = stdin)

Prints, for each text, its label and that label's probability; --json prints one JSON object per
text with every label's probability. Each text is cut to its first data.seq_len tokens, as in
training. How: tflm.serving.classifying (`tflm.classify_texts` in Python).
"""

import json

from tflm.cli import command
from tflm.serving.classifying import classify_texts
from tflm.serving.inputs import read_texts
from tflm.serving.loading import load_run


def add_arguments(parser):
    """The command line."""
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--run-dir", required=True, help="a trained classification run directory")
    parser.add_argument("--file", help="also classify each line of this UTF-8 file ('-' = stdin)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")


def run(args):
    """Print each text's label."""
    texts = read_texts(args.texts, args.file)
    for result in classify_texts(load_run(args.run_dir), texts):
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(f"{result['label']}  p {result['probabilities'][result['label']]:.3f}  {result['text']!r}")
    return 0


main = command(__name__, add_arguments, run)
