"""The `preset` tokenizer: a KerasHub preset's own tokenizer (GPT-2's byte-level BPE, Llama's
SentencePiece, ...), implied by `model.preset` and never learned.

tflm's ids are the preset's ids plus one: id 0 is tflm's padding for every kind (decoding never
draws it, detokenize drops it, a classifier pools over the other ids), while in a preset id 0 is a
real token (GPT-2's "!", Llama's "<unk>"). tflm/models/preset.py subtracts the one going in and
gives the padding id a logit of MASKED coming out, so the network sees the preset's own ids.

No start-of-text token is added: the token store, prompts and scored texts hold the text's own
tokens, as every tflm tokenizer gives them (KerasHub's preprocessors add one; tflm's generate from
a prompt equals KerasHub's generate of the same token ids).

The run directory keeps the tokenizer as KerasHub saves it (PRESET_DIR: tokenizer.json and its
assets), so exports and resumed runs read the tokenizer without the preset.
"""

import hashlib
import os
import tempfile

import numpy as np

from tflm import atomic
from tflm.data.tokenizers import VOCAB_FILE, Tokenizer
from tflm.errors import TflmError
from tflm.lazy import tf

PRESET_DIR = "preset_tokenizer"  # beside vocab.json: KerasHub's tokenizer.json and assets/
SENTENCEPIECE_OPS = ("SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp")
BYTE_PAIR_OPS = ("RegexSplitWithOffsets",)


class PresetTokenizer(Tokenizer):
    """A KerasHub tokenizer layer behind tflm's interface, its ids shifted by one (see the module doc)."""

    kind = "preset"

    def __init__(self, layer, files):
        """`layer`: the KerasHub tokenizer; `files`: {relative path: bytes} of its saved preset."""
        self._layer, self._files_saved = layer, dict(files)
        self._layer.build(None)  # ExportArchive tracks built layers only
        self._tokenize_batch = tf.function(lambda strings: self._layer.tokenize(strings) + 1,
                                           input_signature=[tf.TensorSpec([None], tf.string)])
        self._detokenize_batch = tf.function(lambda ids: self._layer.detokenize(ids - 1),
                                             input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)])

    @classmethod
    def from_preset(cls, directory):
        """The tokenizer of the KerasHub preset in `directory` (checked by tflm.presets.open_preset)."""
        layer = tokenizer_layer(directory)
        with tempfile.TemporaryDirectory() as saved:
            layer.save_to_preset(saved)
            files = {os.path.relpath(os.path.join(root, name), saved): open(os.path.join(root, name), "rb").read()
                     for root, _, names in os.walk(saved) for name in names}
        return cls(layer, files)

    @property
    def vocabulary_size(self):
        """The preset's vocabulary and tflm's padding id."""
        return self._layer.vocabulary_size() + 1

    @property
    def sentencepiece(self):
        """Whether the preset's tokenizer is a SentencePiece model (else byte-pair encoding)."""
        return hasattr(self._layer, "proto")

    @property
    def non_core_ops(self):
        """The tensorflow-text ops its graphs use."""
        return SENTENCEPIECE_OPS if self.sentencepiece else BYTE_PAIR_OPS

    @property
    def trackables(self):
        """KerasHub's layer, which holds its lookup tables (or the sentencepiece resource)."""
        return (self._layer,)

    def byte_lengths(self):
        """Padding 0; each preset id the UTF-8 bytes it decodes to (a SentencePiece piece's text
        with "▁" as a space, its control pieces 0)."""
        if self.sentencepiece:
            import sentencepiece

            from tflm.data.tokenizers.sentencepiece import piece_byte_lengths

            lengths = piece_byte_lengths(sentencepiece.SentencePieceProcessor(model_proto=self._layer.proto))
        else:  # byte-level BPE: one id alone decodes to its bytes, whether or not they are valid UTF-8
            with tf.init_scope():  # eagerly, also when asked while a function is traced
                ids = tf.RaggedTensor.from_row_lengths(tf.range(1, self.vocabulary_size, dtype=tf.int32),
                                                       tf.ones([self.vocabulary_size - 1], tf.int64))
                lengths = tf.strings.length(self._detokenize_batch(ids)).numpy()
        return np.concatenate([[0], lengths]).astype(np.int32)

    def _definition(self):
        return {"type": self.kind, "class": type(self._layer).__name__, "vocabulary_size": self.vocabulary_size,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self._files_saved.items())}}

    def export_fields(self):
        """The KerasHub tokenizer class, and that tflm's ids are the preset's plus one."""
        return {"preset_class": type(self._layer).__name__, "id_offset": 1}

    def _files(self):
        return {os.path.join(PRESET_DIR, name): data for name, data in self._files_saved.items()}

    @classmethod
    def from_definition(cls, definition, directory):
        """From vocab.json and the KerasHub files beside it (their SHA-256 checked)."""
        files = {}
        for name, digest in definition["files"].items():
            path = os.path.join(directory, PRESET_DIR, name)
            try:
                files[name] = atomic.read_bytes(path)
            except Exception as error:  # OSError locally, tf.errors.OpError elsewhere
                raise TflmError(f"cannot read the preset tokenizer file {path}: {error}") from None
            if hashlib.sha256(files[name]).hexdigest() != digest:
                raise TflmError(f"{path} is not the file {os.path.join(directory, VOCAB_FILE)} was saved with")
        return cls(tokenizer_layer(os.path.join(directory, PRESET_DIR)), files)

    @classmethod
    def learn(cls, texts, vocab_size):
        """Never learned: the tokenizer comes with model.preset."""
        raise TflmError("data.tokenizer=preset is not learned: it is model.preset's tokenizer")


def tokenizer_layer(directory):
    """The KerasHub tokenizer saved in `directory` (its tokenizer.json and assets), as KerasHub's
    preset loader builds it (which also wants the backbone's config.json, absent from a run directory)."""
    import json

    import keras
    import keras_hub  # registers KerasHub's classes for deserialization

    path = os.path.join(directory, "tokenizer.json")
    layer = keras.saving.deserialize_keras_object(json.loads(atomic.read_bytes(path)))
    if not isinstance(layer, keras_hub.tokenizers.Tokenizer):
        raise TflmError(f"{path} holds a {type(layer).__name__}, not a KerasHub tokenizer")
    layer.load_preset_assets(directory)
    return layer
