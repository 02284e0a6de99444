"""Tokenizers: text <-> int32 ids, one interface for characters, bytes, WordPiece and SentencePiece.

    char           the characters of the training split, most frequent first (`vocab_size` is a
                   maximum; the rest are out-of-vocabulary). Core TF ops: StringLookup tables.
    byte           UTF-8 bytes, id = byte + 1; nothing to learn, vocabulary 257. Core TF ops only.
    wordpiece      BERT-style subwords learned from the training split with keras-hub's
                   `compute_word_piece_vocabulary` (tensorflow-text's learner), run in-graph by
                   keras-hub's `WordPieceTokenizer`. Lossy: see "WordPiece" below.
    sentencepiece  a `unigram` or `bpe` model trained with the `sentencepiece` package and run
                   in-graph by keras-hub's `SentencePieceTokenizer`. Lossless: identity
                   normalisation, whitespace kept ("▁"), a newline is its own piece, and byte
                   fallback spells any character the model lacks as its UTF-8 bytes.

Every tokenizer has the same attributes and methods (`kind`, `vocabulary_size`, `tokenize`,
`detokenize`, `encode`, `byte_lengths`, `fingerprint`, `save`, `trackables`, `non_core_ops`), so the
rest of tflm never asks which one it has. `load_tokenizer(directory)` reads what `save` wrote
(`vocab.json`, plus `tokenizer.model` for sentencepiece; tflm 0.1's char `vocab.json` files are the
same format). `learn_tokenizer(kind, texts, vocab_size)` learns one from the training split.

Ids: 0 is padding for every kind (`detokenize` drops it); 1 is "unknown" (char: a character
outside the vocabulary; wordpiece: a word it cannot spell; sentencepiece: never produced, byte
fallback spells everything) and `detokenize` writes it as U+FFFD. Byte ids are byte + 1.
`detokenize` always returns valid UTF-8: a byte sequence that is not (a byte or sentencepiece
model can generate one) has its bad bytes replaced by U+FFFD.

Bits per byte: the sum of the targets' losses in bits divided by the sum of `byte_lengths()[t]`
over the same targets t, i.e. the UTF-8 bytes those targets decode to. For the lossless
tokenizers this is exact: over the ids `tokenize(text)` gives, byte_lengths sum to
len(text.encode("utf-8")) — byte: 1 per byte; sentencepiece: a piece's text with "▁" counted as
the space it stands for, a byte-fallback piece <0xNN> 1; char: each character's UTF-8 length.
Out-of-vocabulary ids (char, wordpiece) count the 3 bytes of the U+FFFD they decode to, so
with OOV the sum is not the text's length. Padding counts 0.

WordPiece: text is split into words at whitespace, at each punctuation character and at each CJK
character (keras-hub's pre-tokenizer, without lowercasing or accent stripping); a newline is kept
as a word of its own (reserved id 2), other whitespace only separates words. Words are spelt
greedily longest-match-first with "##" marking a piece that continues a word; a word it cannot
spell (a character outside the vocabulary, or longer than 100 bytes) becomes the unknown id.
`detokenize` joins words with one space ("Hello, world" -> "Hello , world"), as tensorflow-text
does. `byte_lengths` counts the bytes detokenize writes: a "##" piece its text without "##", any
other piece its text plus one for the space before the word it starts (the newline token: 2, the
unknown token: 3 + 1). So over the ids of a text the sum is len(detokenize(ids)) + 1: bits per
byte of that normalised text, not of the original.

Serving: char and byte graphs use core TensorFlow ops only; wordpiece and sentencepiece graphs
also use the tensorflow-text ops in their class's `non_core_ops`. TF Serving links all of
tensorflow-text into the model server (`@org_tensorflow_text//tensorflow_text:ops_lib` in
SUPPORTED_TENSORFLOW_OPS, tensorflow_serving/model_servers/BUILD), at the version pinned by
`http_archive(name = "org_tensorflow_text")` in tensorflow/serving's tensorflow_serving/workspace.bzl:
TF Serving 2.12.0 to 2.19.1 bundle tensorflow-text 2.12.1; TF Serving 2.20.0 (tag 2.20.0,
2026-04-23) bundles tensorflow-text 2.20.0 with sentencepiece 0.1.96, as master still did on
2026-07-30 (9d981c5c); there is no TF Serving 2.21 release. So TF Serving 2.20.0
(`tensorflow/serving:2.20.0`) is the release that bundles a tensorflow-text compatible with 2.21:
tensorflow-text 2.21.1 registers the six ops these graphs use with the same inputs, outputs and
attributes as tensorflow/text v2.20.0's sources (later commits change only shape checks), and both
pin sentencepiece 0.1.96. (Those six op definitions are unchanged since tensorflow-text 2.12.1, so
tensorflow-text is not what keeps older TF Serving releases from loading these graphs.)

Training reads a bounded sample: wordpiece and sentencepiece learn from the first `sample_bytes`
of the training split (defaults in the classes: tensorflow-text's WordPiece learner is pure Python,
measured ~1 minute for 4 MB of code; sentencepiece unigram ~135 s for 16 MB on 2 cores, bpe ~8 s),
so put a representative mix first. char counts every character (cheap).
"""

import collections
import hashlib
import inspect
import json
import math
import os
import re

import numpy as np

from tflm import atomic
from tflm.errors import TflmError
from tflm.lazy import keras, tf

PAD_ID = 0
OOV_ID = 1  # the unknown id of every kind (never produced by byte or sentencepiece)
OOV_CHAR = "\ufffd"  # what detokenize writes for the unknown id
OOV_BYTES = len(OOV_CHAR.encode("utf-8"))
INT32_MAX = 2**31 - 1
VOCAB_FILE = "vocab.json"
KINDS = ("char", "byte", "wordpiece", "sentencepiece")
TF_SERVING_RELEASE = "2.20.0"  # bundles tensorflow-text 2.20.0, whose ops these graphs use (module doc)
ENCODE_BATCH_CHARS = 1 << 22  # encode works through this many characters at a time


class Tokenizer:
    """The interface every tokenizer implements; subclasses supply the batch methods below."""

    kind = ""
    non_core_ops = ()  # tensorflow-text ops its graphs may use

    # --- what a subclass provides -----------------------------------------------------------

    def _tokenize_batch(self, strings):
        """1-D string tensor -> ragged int32 ids."""
        raise NotImplementedError

    def _detokenize_batch(self, ids):
        """Ragged int32 ids without padding -> 1-D string tensor."""
        raise NotImplementedError

    def _definition(self):
        """The JSON object save() writes to vocab.json: everything that defines the ids."""
        raise NotImplementedError

    def _files(self):
        """{file name: bytes} save() writes beside vocab.json."""
        return {}

    @property
    def trackables(self):
        """Objects an export must track so the tokenizer's resources are saved with it."""
        return ()

    # --- the shared interface ----------------------------------------------------------------

    def tokenize(self, strings):
        """String (or 1-D batch of strings) -> int32 ids (ragged for a batch)."""
        strings = tf.convert_to_tensor(strings, tf.string)
        if strings.shape.rank == 0:
            return self._tokenize_batch(strings[tf.newaxis])[0]
        return self._tokenize_batch(strings)

    def detokenize(self, ids):
        """Ids (1-D, or a 2-D / ragged batch) -> string(s); padding dropped, always valid UTF-8."""
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.with_row_splits_dtype(tf.int64)
        else:
            ids = tf.convert_to_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        if ids.shape.rank == 1:
            return self.detokenize(ids[tf.newaxis])[0]
        text = self._detokenize_batch(tf.ragged.boolean_mask(ids, tf.not_equal(ids, PAD_ID)))
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")

    def encode(self, texts):
        """List of str -> list of np.int32 arrays, the ids tokenize() gives, computed in bulk."""
        out = []
        for batch in text_batches(texts):
            ids = self._tokenize_batch(tf.constant(batch, tf.string))
            out.extend(np.split(ids.flat_values.numpy(), ids.row_splits.numpy()[1:-1]))
        return out

    def byte_lengths(self):
        """np.int32 [vocabulary_size]: the UTF-8 bytes each id decodes to (see the module doc)."""
        raise NotImplementedError

    def fingerprint(self):
        """Hex SHA-256 of everything that defines the ids (equal tokenizers, equal fingerprints)."""
        return hashlib.sha256(_canonical_json(self._definition()).encode("utf-8")).hexdigest()

    def file_names(self):
        """The files `save` writes: vocab.json, then any model file it names."""
        return [VOCAB_FILE, *self._files()]

    def save(self, directory):
        """Write vocab.json (and any model file) into `directory`, each file atomically."""
        try:
            atomic.makedirs(directory)
            for name, data in self._files().items():
                atomic.write_bytes(os.path.join(directory, name), data)
            atomic.write_json(os.path.join(directory, VOCAB_FILE), self._definition())
        except OSError as error:
            raise TflmError(f"cannot save the tokenizer in {directory}: {error.strerror}") from None


def _canonical_json(obj):
    """JSON text that is the same for equal objects."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def text_batches(texts, max_chars=ENCODE_BATCH_CHARS):
    """Consecutive lists of `texts` holding about `max_chars` characters each."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _split_lengths(values, lengths):
    """Split the 1-D array `values` into consecutive pieces of `lengths`."""
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []


# --- char ------------------------------------------------------------------------------------

class CharTokenizer(Tokenizer):
    """Characters of the training split, via StringLookup (core TF ops: stock TF Serving runs it).

    keras-hub's `UnicodeCodepointTokenizer` was the other candidate; it maps characters to raw code
    points, so a CJK corpus needs a ~40k-row embedding, while a learned vocabulary of the characters
    that occur stays small. Ids: 0 padding, 1 out-of-vocabulary, then characters from most to
    least frequent.
    """

    kind = "char"

    def __init__(self, characters):
        if len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
            raise TflmError("tokenizer vocabulary must be distinct single characters")
        self.characters = list(characters)
        self._to_id = keras.layers.StringLookup(
            vocabulary=self.characters, mask_token="", oov_token="[UNK]", output_mode="int"
        )
        self._to_char = keras.layers.StringLookup(
            vocabulary=self.characters, mask_token="", oov_token=OOV_CHAR, invert=True
        )
        for lookup in (self._to_id, self._to_char):
            lookup.build(None)  # only used eagerly it is never marked built, and export needs it built
        self._table = None

    @property
    def vocabulary_size(self):
        """Number of ids, padding and OOV included."""
        return len(self.characters) + 2

    @property
    def trackables(self):
        """The two lookup layers (their hash tables)."""
        return (self._to_id, self._to_char)

    def _tokenize_batch(self, strings):
        chars = tf.strings.unicode_split(strings, "UTF-8", errors="replace")
        return tf.cast(self._to_id(chars), tf.int32)

    def _detokenize_batch(self, ids):
        return tf.strings.reduce_join(self._to_char(tf.cast(ids, tf.int64)), axis=-1)

    def encode(self, texts):
        """List of str -> list of np.int32 ids: a code point -> id table, no TensorFlow."""
        if self._table is None:
            self._table = np.full(0x110000, OOV_ID, np.int32)
            self._table[[ord(c) for c in self.characters]] = np.arange(2, self.vocabulary_size, dtype=np.int32)
        out = []
        for batch in text_batches(texts):
            codes = np.frombuffer("".join(batch).encode("utf-32-le"), np.uint32)
            out.extend(_split_lengths(self._table[codes], [len(t) for t in batch]))
        return out

    def byte_lengths(self):
        """Padding 0, OOV 3 (U+FFFD), each character its UTF-8 length."""
        return np.array([0, OOV_BYTES] + [len(c.encode("utf-8")) for c in self.characters], np.int32)

    def _definition(self):
        return {"type": "char", "pad_id": PAD_ID, "oov_id": OOV_ID, "characters": self.characters}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object (tflm 0.1's included)."""
        return cls(definition["characters"])

    @classmethod
    def from_counts(cls, counts, max_vocab_size):
        """Keep the `max_vocab_size` most frequent characters (ties broken by character)."""
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([char for char, _ in ranked[: max(1, max_vocab_size - 2)]])

    @classmethod
    def learn(cls, texts, vocab_size):
        """The `vocab_size` - 2 most frequent characters of all of `texts`."""
        _check_vocab_size("char", vocab_size, 3, "padding, out-of-vocabulary and one character")
        counts = count_characters(texts)
        if not counts:
            raise TflmError("the training split is empty")
        return cls.from_counts(counts, vocab_size)


def count_characters(texts):
    """Counter of characters over an iterable of strings."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text)
    return counts


# --- byte ------------------------------------------------------------------------------------

class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + 1, 0 padding; nothing learned, core TF ops only."""

    kind = "byte"
    vocabulary_size = 257

    def _tokenize_batch(self, strings):
        # ISO-8859-1 maps each byte to the code point of the same value: one core op, no padding.
        return tf.strings.unicode_decode(strings, "ISO-8859-1") + 1

    def _detokenize_batch(self, ids):
        byte_strings = tf.constant([b""] + [bytes([b]) for b in range(256)])
        return tf.strings.reduce_join(tf.gather(byte_strings, ids), axis=-1)

    def encode(self, texts):
        """List of str -> list of np.int32 ids: the UTF-8 bytes plus one, no TensorFlow."""
        out = []
        for batch in text_batches(texts):
            encoded = [text.encode("utf-8") for text in batch]
            ids = np.frombuffer(b"".join(encoded), np.uint8).astype(np.int32) + 1
            out.extend(_split_lengths(ids, [len(e) for e in encoded]))
        return out

    def byte_lengths(self):
        """Padding 0, every byte 1."""
        return np.array([0] + [1] * 256, np.int32)

    def _definition(self):
        return {"type": "byte", "pad_id": PAD_ID, "vocabulary_size": self.vocabulary_size}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object."""
        return cls()

    @classmethod
    def learn(cls, texts, vocab_size):
        """A byte tokenizer; `texts` and `vocab_size` are not used."""
        return cls()


# --- wordpiece -------------------------------------------------------------------------------

class WordPieceTokenizer(Tokenizer):
    """WordPiece over keras-hub's `WordPieceTokenizer` (tensorflow-text's FastWordpiece ops)."""

    kind = "wordpiece"
    RESERVED = ("[PAD]", OOV_CHAR, "\n")  # ids 0, 1, 2: padding, unknown (written as U+FFFD), newline
    SUFFIX = "##"
    SAMPLE_BYTES = 8 * 10**6  # about 2 minutes of tensorflow-text's Python learner (measured 59 s for 4 MB)
    non_core_ops = ("RegexSplitWithOffsets", "FastWordpieceTokenizeWithOffsets", "TFText>FastWordpieceDetokenize")

    def __init__(self, tokens):
        import keras_hub

        tokens = list(tokens)
        if tuple(tokens[:3]) != self.RESERVED or len(set(tokens)) != len(tokens):
            raise TflmError("a wordpiece vocabulary must be distinct tokens starting with [PAD], U+FFFD, newline")
        self.tokens = tokens
        self._layer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=tokens, lowercase=False, strip_accents=False, split=True, split_on_cjk=True,
            suffix_indicator=self.SUFFIX, oov_token=OOV_CHAR, special_tokens=["\n"],
            special_tokens_in_strings=True, dtype="int32")
        # Called inside a tf.function keras-hub runs its TensorFlow path and returns tensors (eagerly
        # it would run a Python re-implementation and return lists).
        self._tokenize_batch = tf.function(self._layer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        self._detokenize_batch = tf.function(
            self._layer.detokenize, input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)])

    @property
    def vocabulary_size(self):
        """Number of ids, the reserved tokens included."""
        return len(self.tokens)

    def byte_lengths(self):
        """Bytes detokenize writes per token: "##x" len(x); others len + 1 (the space before a word)."""
        lengths = [0, OOV_BYTES + 1]
        for token in self.tokens[2:]:
            if token.startswith(self.SUFFIX) and len(token) > len(self.SUFFIX):
                lengths.append(len(token[len(self.SUFFIX):].encode("utf-8")))
            else:
                lengths.append(len(token.encode("utf-8")) + 1)
        return np.array(lengths, np.int32)

    def _definition(self):
        return {"type": "wordpiece", "pad_id": PAD_ID, "oov_id": OOV_ID, "newline_id": 2,
                "suffix_indicator": self.SUFFIX, "lowercase": False, "split_on_cjk": True,
                "tokens": self.tokens}

    @classmethod
    def from_definition(cls, definition, directory):
        """From a vocab.json object."""
        return cls(definition["tokens"])

    @classmethod
    def learn(cls, texts, vocab_size, sample_bytes=SAMPLE_BYTES):
        """Learn exactly `vocab_size` tokens from the first `sample_bytes` of `texts`."""
        import keras_hub

        _check_vocab_size("wordpiece", vocab_size, len(cls.RESERVED) + 1,
                          "padding, unknown, newline and one word piece")
        sample = _sample(texts, sample_bytes)
        # tensorflow-text's learner stops anywhere within 5% below the size it is asked for, and
        # lists tokens by frequency after the reserved ones and the characters: ask for enough to
        # land at or above `vocab_size`, then keep the most frequent.
        target = math.ceil(vocab_size / 0.95) + 1
        learned = keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(sample), target, reserved_tokens=list(cls.RESERVED),
            lowercase=False, strip_accents=False, split=True, split_on_cjk=True,
            suffix_indicator=cls.SUFFIX)
        if len(learned) < vocab_size:
            raise TflmError(
                f"the training sample supports only {len(learned)} wordpiece tokens (pieces seen at least "
                f"10 times in its first {sample_bytes} bytes); vocab_size={vocab_size} is too large")
        return cls(learned[:vocab_size])


# --- sentencepiece ---------------------------------------------------------------------------

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
        import keras_hub
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
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto.FromString(self.model_proto)
        return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(model.trainer_spec.model_type).lower()

    @property
    def trackables(self):
        """keras-hub's layer, which holds tensorflow-text's sentencepiece resource (the model)."""
        return (self._layer,)

    def byte_lengths(self):
        """Padding 0, unknown 3 (U+FFFD), a byte piece 1, others their text with "▁" as a space."""
        p, lengths = self._processor, []
        for i in range(p.vocab_size()):
            if p.is_control(i):
                lengths.append(0)
            elif p.is_unknown(i):
                lengths.append(OOV_BYTES)
            elif p.is_byte(i):
                lengths.append(1)
            else:
                lengths.append(len(p.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
        return np.array(lengths, np.int32)

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
        import io

        import sentencepiece

        _check_vocab_size("sentencepiece", vocab_size, cls.MIN_VOCAB_SIZE,
                          "padding, unknown, newline, 256 byte pieces and one more piece")
        if model_type not in cls.MODEL_TYPES:
            raise TflmError(f"sentencepiece model_type must be one of {', '.join(cls.MODEL_TYPES)}, got {model_type!r}")
        lines = [line[i:i + cls.LINE_CHARS] for text in _sample(texts, sample_bytes)
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


# --- learning and loading ----------------------------------------------------------------------

TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, ByteTokenizer, WordPieceTokenizer, SentencePieceTokenizer)}


def _tokenizer_class(kind):
    """The class of a tokenizer kind."""
    if kind not in TOKENIZERS:
        raise TflmError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return TOKENIZERS[kind]


def _check_vocab_size(kind, vocab_size, minimum, needs):
    """Raise unless `vocab_size` is an integer from `minimum` to 2**31 - 1."""
    if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool):
        raise TflmError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < minimum:
        raise TflmError(f"{kind} vocab_size must be at least {minimum} ({needs}), got {vocab_size}")
    if vocab_size > INT32_MAX:
        raise TflmError(f"vocab_size must be at most {INT32_MAX} (ids are int32), got {vocab_size}")


def _sample(texts, max_bytes):
    """The first `max_bytes` bytes (UTF-8) of `texts`, as a list of strings; an error if empty."""
    sample, size = [], 0
    for text in texts:
        encoded = text.encode("utf-8")
        if size + len(encoded) >= max_bytes:
            sample.append(encoded[: max_bytes - size].decode("utf-8", errors="ignore"))
            break
        sample.append(text)
        size += len(encoded)
    if not any(sample):
        raise TflmError("the training split is empty")
    return sample


def learn_tokenizer(kind, texts, vocab_size, **options):
    """Learn a `kind` tokenizer from an iterable of training-split strings.

    vocab_size: char, the most ids (the most frequent characters are kept, the rest are OOV);
    wordpiece and sentencepiece, exactly this many ids; byte ignores it (always 257).
    options: wordpiece `sample_bytes` (default 8 MB); sentencepiece `model_type` ("unigram" or "bpe")
    and `sample_bytes` (default 32 MB). Subword vocabularies are learned from the first
    `sample_bytes` of `texts` only, and no more of `texts` is read; char reads all of it.
    """
    cls = _tokenizer_class(kind)
    known = list(inspect.signature(cls.learn).parameters)[2:]
    for name in options:
        if name not in known:
            raise TflmError(f"the {kind} tokenizer has no option {name!r}; it has: {', '.join(known) or 'none'}")
    if "sample_bytes" in options:
        _check_positive("sample_bytes", options["sample_bytes"])
    return cls.learn(texts, vocab_size, **options)


def _check_positive(name, value):
    """Raise unless `value` is a positive integer."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise TflmError(f"{name} must be a positive integer, got {value!r}")


def load_tokenizer(directory):
    """The tokenizer `save` wrote into `directory` (tflm 0.1's char vocab.json included)."""
    path = os.path.join(directory, VOCAB_FILE)
    try:
        definition = json.loads(atomic.read_bytes(path).decode("utf-8"))
        kind = definition.get("type", "char")
    except Exception as error:  # OSError, a tf.errors.OpError elsewhere, bad JSON
        raise TflmError(f"cannot read tokenizer vocabulary {path}: {error}") from None
    if kind not in TOKENIZERS:
        raise TflmError(f"{path}: unknown tokenizer type {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        return TOKENIZERS[kind].from_definition(definition, directory)
    except (KeyError, TypeError, ValueError) as error:
        raise TflmError(f"{path}: not a valid {kind} tokenizer vocabulary ({error!r})") from None


def learned_tokenizer(data_config, texts):
    """A data.tokenizer tokenizer learned from the training texts."""
    from tflm.data.tokenizers import learn_tokenizer

    options = {"model_type": data_config.sentencepiece_model} if data_config.tokenizer == "sentencepiece" else {}
    return learn_tokenizer(data_config.tokenizer, texts, data_config.vocab_size, **options)
