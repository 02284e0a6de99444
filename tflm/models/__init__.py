"""The networks: one file per language model (`lstm.py`, `transformer.py`, named after its `model.type`),
what they share (`next_token.py`: logits as a head over features; `randomness.py`: dropout whose
masks belong to examples; `fused_lstm.py`; `scatter.py`: the in-place cache write), the classifier
that puts a head on a language model's features (`classifier.py`), and `build.py`, which finds a
model's file from `model.type` and builds it from the config. Each language model owns its
interface (see build.py): its context length, its decoding cache and the helpers that read and
write that cache's rows, and which settings besides the model section fix the shapes of its
weights, so scoring, decoding, export and init-from never ask which model they have. Adding a
model type is a new file here plus its fields in tflm/config.py's ModelConfig. Importing this
package loads no TensorFlow; importing a model file does.
"""
