"""Using a trained run: loading it for inference (`loading.py`: config, tokenizer, task and the
model at its latest checkpoint), then scoring texts (`scoring.py`), sampling continuations
(`decoding.py`), reading next-token logits (`reading.py`) and classifying (`classifying.py`),
each on texts checked by `inputs.py`; and writing the run as a SavedModel for TF Serving
(`export.py`), whose signatures are described once in `signatures.py` and whose warmup requests
and op list come from `warmup.py`. The exported signatures trace the same functions Python
runs. Importing this package loads no TensorFlow.
"""
