"""`python -m tflm.classify`: the labels a trained classifier (task.type: classify) gives texts.

    python -m tflm.classify --run-dir runs/classifier "some text" "another text"
    python -m tflm.classify --run-dir runs/classifier --file texts.txt --json     (one text per line; '-' = stdin)

Each text is cut to its first data.seq_len tokens, as in training. The exported `classify`
signature runs the same function (`classify_strings`), so Python and TF Serving agree.
"""

import argparse
import json
import sys

from tflm.errors import TflmError, exit_on_user_error
from tflm.inference import MAX_BATCH_SIZE, check_strings, load_run, read_texts
from tflm.lazy import tf
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.tokenizer import PAD_ID


def classify_strings(loaded, texts):
    """{labels string [batch], label_ids int32 [batch], probabilities float32 [batch, classes]}
    for a 1-D string tensor `texts`. Core TF ops only (and the tokenizer's)."""
    seq_len = loaded.context
    ids = loaded.tokenizer.tokenize(texts)[:, :seq_len]
    ids = tf.cast(ids, tf.int32).to_tensor(default_value=PAD_ID, shape=[None, seq_len])
    probabilities = tf.nn.softmax(tf.cast(loaded.model(ids, training=False), tf.float32), axis=-1)
    label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"labels": tf.gather(tf.constant(list(loaded.labels)), label_ids), "label_ids": label_ids,
            "probabilities": probabilities}


def classify_function(loaded):
    """The traced classifier, shared by `classify_texts` calls."""
    return loaded.function("classify", lambda: tf.function(
        lambda texts: classify_strings(loaded, texts),
        input_signature=[tf.TensorSpec([None], tf.string, name="texts")]))


def classify_texts(loaded, texts):
    """Classify any number of texts, MAX_BATCH_SIZE at a time: [{text, label, label_id,
    probabilities: {label: p}}], in order."""
    if not loaded.is_classifier:
        raise TflmError(f"{loaded.run_dir} is a language model (task.type: lm), not a classifier; "
                        "use tflm.score or tflm.generate")
    texts = check_strings(texts, "texts")
    classifier = classify_function(loaded)
    results = []
    for begin in range(0, len(texts), MAX_BATCH_SIZE):
        batch = texts[begin:begin + MAX_BATCH_SIZE]
        out = {k: v.numpy() for k, v in classifier(tf.constant(batch, tf.string)).items()}
        for i, text in enumerate(batch):
            results.append({"text": text, "label": out["labels"][i].decode("utf-8"),
                            "label_id": int(out["label_ids"][i]),
                            "probabilities": dict(zip(loaded.labels, out["probabilities"][i].tolist()))})
    return results


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
