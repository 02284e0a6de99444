"""What an export says about itself: TF Serving warmup requests and the ops its graph needs.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (TFRecord `PredictionLog`s) when it
loads a version, so the first real request does not pay for tracing and memory allocation.
"""

import numpy as np

from tflm.atomic import read_bytes
from tflm.lazy import tf

WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_requests(kinds, tokenizer, max_chars=8):
    """{signature: {input name: numpy array}}: the warmup request of each signature's kind
    (`kinds`: {signature name: tflm.serving.signatures.Kind}) on a short sample text of at most
    `max_chars` characters or token ids. TF Serving does not load a version whose warmup request
    fails, so signatures that need a TF Serving flag (generate_xla) have none."""
    sample = tokenizer.detokenize(list(range(2, 10))).numpy().decode("utf-8")[:max_chars]  # 0, 1: pad, OOV
    token_ids = tokenizer.tokenize(sample).numpy()[:max_chars].tolist()
    requests = {}
    for name, kind in kinds.items():
        if kind.tf_serving_flags:
            continue
        dtypes = {i.name: i.dtype for i in kind.inputs}
        requests[name] = {k: as_array(v, dtypes[k]) for k, v in kind.warmup(sample, token_ids).items()}
    return requests


def as_array(value, dtype):
    """`value` (a number, a str, or nested lists of them) as the numpy array of an input of `dtype`."""
    if dtype == "string":  # TF's string tensors hold bytes
        return np.vectorize(lambda text: text.encode("utf-8"), otypes=[object])(np.array(value, object))
    return np.array(value, dtype)


def write_warmup_requests(path, model_name, requests):
    """Write one PredictionLog(PredictRequest) per signature of `requests` to a TFRecord file."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # these load TensorFlow

    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup_requests(path):
    """[(signature name, {input name: numpy array})] from a warmup file, in order."""
    from tensorflow_serving.apis import prediction_log_pb2  # loads TensorFlow

    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        requests.append((request.model_spec.signature_name,
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()}))
    return requests


def graph_ops(saved_model_dir):
    """Sorted op types in a SavedModel's graph, functions included."""
    from tensorflow.core.protobuf import saved_model_pb2  # loads TensorFlow

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(read_bytes(f"{saved_model_dir}/saved_model.pb"))
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    # Calls of the graph's own functions appear as ops named after them.
    functions = {f.signature.name for m in saved_model.meta_graphs for f in m.graph_def.library.function}
    return sorted(ops - functions)


def non_core_ops(ops):
    """The ops stock TensorFlow (and so TF Serving) does not define, e.g. tensorflow-text's."""
    return [op for op in ops if not hasattr(tf.raw_ops, op)]
