"""The labels a trained classifier (task.type: classify) gives texts (`python -m tflm.classify`).

Each text is cut to its first data.seq_len tokens, as in training. The exported `classify`
signature runs the same function (`classify_strings`), so Python and TF Serving agree.
"""

from tflm.data.tokenizers import PAD_ID
from tflm.lazy import tf
from tflm.serving.inputs import check_strings
from tflm.serving.loading import MAX_BATCH_SIZE


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
    loaded.task.check_serves("classify", loaded.run_dir)
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
