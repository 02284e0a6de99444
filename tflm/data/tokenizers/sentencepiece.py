"""The `sentencepiece` tokenizer: a `unigram` or `bpe` model trained with the `sentencepiece` package on
the first `sample_bytes` of the training split, run in-graph by keras-hub's `SentencePieceTokenizer`
(tensorflow-text ops, `non_core_ops`), saved as `tokenizer.model` beside vocab.json. Lossless:
identity normalisation, whitespace kept ("▁"), a newline is its own piece, and byte fallback spells
any character the model lacks as its UTF-8 bytes, so the unknown id is never produced.
"""

import hashlib
import io
import os
import re

import numpy as np

from tflm import atomic
from tflm.data.tokenizers import (OOV_BYTES, OOV_CHAR, OOV_ID, PAD_ID, VOCAB_FILE, Tokenizer, check_vocab_size,
                                  text_sample)
from tflm.errors import TflmError
from tflm.lazy import tf


class SentencePieceTokenizer(Tokenizer):
    """A lossless sentencepiece model over keras-hub's `SentencePieceTokenizer` (tensorflow-text ops).

    `encode` runs the same in-graph tokenizer in big batches rather than the `sentencepiece`
    package's multi-threaded encode: measured, sentencepiece 0.2.3 (Python) and the 0.1.96 inside
    tensorflow-text and TF Serving break ties between equal-score unigram segmentations differently
    (e.g. "\\n" + "*" * 21 -> "*"*11 + "*"*10 against "*"*10 + "*"*11), so its ids would differ.
    """

    kind = "sentencepiece"
    MODEL_FILE = "tokenizer.model"
    MODEL_TYPES = ("unigram", "bpe")
    SAMPLE_BYTES = 32 * 10**6  # measured on 2 cores: unigram ~135 s per 16 MB, bpe ~8 s
    MIN_VOCAB_SIZE = 260  # padding, unknown, newline, 256 byte pieces, one more piece
    TRAIN_THREADS = 16  # fixed, not the machine's cores: unigram training's result depends on it
    LINE_CHARS = 4096  # training lines are cut to this (sentencepiece skips longer ones)
    non_core_ops = ("SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp")

    def __init__(self, model_proto):
        import keras_hub  # loads TensorFlow and Keras: only when needed
        import sentencepiece

        self.model_proto = bytes(model_proto)
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError:
            raise TflmError("not a sentencepiece model") from None
        self._check_model()
        self._layer = keras_hub.tokenizers.SentencePieceTokenizer(proto=self.model_proto, dtype="int32")
        self._layer.build(None)  # ExportArchive tracks built layers only
        # Inside a tf.function keras-hub runs tensorflow-text's kernels and returns tensors.
        self._tokenize_batch = tf.function(self._layer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        self._detokenize_batch = tf.function(
            self._layer.detokenize, input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)])

    def _check_model(self):
        """Raise unless the model has tflm's special ids and byte fallback."""
        p = self._processor
        if (p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id()) != (PAD_ID, OOV_ID, -1, -1) or \
                sum(p.is_byte(i) for i in range(p.vocab_size())) != 256:
            raise TflmError("a sentencepiece model for tflm needs pad id 0, unk id 1, no BOS/EOS and byte fallback")

    @property
    def vocabulary_size(self):
        """Number of pieces, the special and byte pieces included."""
        return self._processor.vocab_size()

    @property
    def model_type(self):
        """'unigram' or 'bpe'."""
        return model_type_of(self.model_proto)

    @classmethod
    def learn_options(cls, data_config):
        """data.sentencepiece_model: the algorithm, unigram or bpe."""
        return {"model_type": data_config.sentencepiece_model}

    @property
    def trackables(self):
        """keras-hub's layer, which holds tensorflow-text's sentencepiece resource (the model)."""
        return (self._layer,)

    def byte_lengths(self):
        """Padding 0, unknown 3 (U+FFFD), a byte piece 1, others their text with "▁" as a space."""
        return piece_byte_lengths(self._processor)

    def _definition(self):
        return {"type": "sentencepiece", "pad_id": PAD_ID, "oov_id": OOV_ID, "model_type": self.model_type,
                "vocabulary_size": self.vocabulary_size, "model_file": self.MODEL_FILE,
                "model_sha256": hashlib.sha256(self.model_proto).hexdigest()}

    def _files(self):
        return {self.MODEL_FILE: self.model_proto}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object and the model file beside it (its SHA-256 checked)."""
        path = os.path.join(directory, definition["model_file"])
        try:
            proto = atomic.read_bytes(path)
        except Exception as error:  # OSError locally, tf.errors.OpError elsewhere
            raise TflmError(f"cannot read the sentencepiece model {path}: {error}") from None
        if hashlib.sha256(proto).hexdigest() != definition["model_sha256"]:
            raise TflmError(f"{path} is not the model {os.path.join(directory, VOCAB_FILE)} was saved with")
        return cls(proto)

    @classmethod
    def learn(cls, texts, vocab_size, model_type="unigram", sample_bytes=SAMPLE_BYTES):
        """Train a `model_type` model of exactly `vocab_size` pieces on the first `sample_bytes` of `texts`."""
        import sentencepiece

        check_vocab_size("sentencepiece", vocab_size, cls.MIN_VOCAB_SIZE,
                          "padding, unknown, newline, 256 byte pieces and one more piece")
        if model_type not in cls.MODEL_TYPES:
            raise TflmError(f"sentencepiece model_type must be one of {', '.join(cls.MODEL_TYPES)}, got {model_type!r}")
        lines = [line[i:i + cls.LINE_CHARS] for text in text_sample(texts, sample_bytes)
                 for line in text.split("\n") for i in range(0, len(line), cls.LINE_CHARS)]
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, allow_whitespace_only_pieces=True, byte_fallback=True,
                user_defined_symbols=["\n"], unk_surface=OOV_CHAR, pad_id=PAD_ID, unk_id=OOV_ID,
                bos_id=-1, eos_id=-1, max_sentence_length=4 * cls.LINE_CHARS,
                num_threads=cls.TRAIN_THREADS, minloglevel=2)
        except RuntimeError as error:
            raise TflmError(_sentencepiece_error(str(error), vocab_size, sample_bytes)) from None
        return cls(model.getvalue())


MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # sentencepiece_model.proto's TrainerSpec.ModelType


def model_type_of(model_proto):
    """TrainerSpec.model_type of a serialized ModelProto, read from the protobuf wire format: the
    `sentencepiece` package's own sentencepiece_model_pb2 (0.2.3) refuses to load under protobuf
    < 7, which Apache Beam (tflm[beam]) requires, so tflm does not import it."""
    trainer_spec = proto_field(model_proto, 2) or b""  # ModelProto.trainer_spec
    return MODEL_TYPES[proto_field(trainer_spec, 3) or 1]  # TrainerSpec.model_type, default UNIGRAM


def proto_field(message, number):
    """The last value of field `number` in a serialized protobuf message: an int (varint) or bytes
    (length-delimited); None if absent."""
    position, found = 0, None
    while position < len(message):
        key, position = varint(message, position)
        wire_type = key & 7
        if wire_type == 0:
            value, position = varint(message, position)
        elif wire_type == 2:
            length, position = varint(message, position)
            value, position = message[position:position + length], position + length
        elif wire_type in (1, 5):
            value, position = None, position + (8 if wire_type == 1 else 4)
        else:
            raise TflmError("not a sentencepiece model (a protobuf wire type it cannot have)")
        if key >> 3 == number:
            found = value
    return found


def varint(data, position):
    """(value, next position) of the protobuf varint at `position`."""
    value = shift = 0
    while True:
        if position >= len(data):
            raise TflmError("not a sentencepiece model (it ends inside a field)")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80:
            return value, position


def piece_byte_lengths(processor):
    """np.int32 [pieces]: the UTF-8 bytes each piece of a sentencepiece processor decodes to:
    control pieces 0, unknown 3 (U+FFFD), a byte piece 1, others their text with "▁" as a space."""
    lengths = []
    for i in range(processor.vocab_size()):
        if processor.is_control(i):
            lengths.append(0)
        elif processor.is_unknown(i):
            lengths.append(OOV_BYTES)
        elif processor.is_byte(i):
            lengths.append(1)
        else:
            lengths.append(len(processor.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
    return np.array(lengths, np.int32)


def _sentencepiece_error(message, vocab_size, sample_bytes):
    """One line for a sentencepiece trainer error."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return (f"the training sample supports at most {too_high.group(1)} sentencepiece tokens (its first "
                f"{sample_bytes} bytes); vocab_size={vocab_size} is too large")
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return (f"sentencepiece vocab_size={vocab_size} is too small for this corpus: its special and byte "
                f"pieces and the characters of 99.95% of the text need at least {too_low.group(1)}")
    return f"sentencepiece training failed: {message.strip().splitlines()[-1]}"
