"""Tokenizers: text <-> int32 ids, one interface for characters, bytes, WordPiece and SentencePiece.

    char           the characters of the training split, most frequent first (`vocab_size` is a
                   maximum; the rest are out-of-vocabulary). Core TF ops: StringLookup tables.
    byte           UTF-8 bytes, id = byte + 1; nothing to learn, vocabulary 257. Core TF ops only.
    wordpiece      BERT-style subwords learned from the training split with keras-hub's
                   `compute_word_piece_vocabulary` (tensorflow-text's learner), run in-graph by
                   keras-hub's `WordPieceTokenizer`. Lossy: see wordpiece.py.
    preset         a KerasHub preset's own tokenizer (model.preset), ids shifted by one so that
                   0 stays padding: see preset.py.
    sentencepiece  a `unigram` or `bpe` model trained with the `sentencepiece` package and run
                   in-graph by keras-hub's `SentencePieceTokenizer`. Lossless: identity
                   normalisation, whitespace kept ("▁"), a newline is its own piece, and byte
                   fallback spells any character the model lacks as its UTF-8 bytes.

Every tokenizer has the same attributes and methods (`kind`, `vocabulary_size`, `tokenize`,
`detokenize`, `encode`, `byte_lengths`, `fingerprint`, `save`, `trackables`, `non_core_ops`), so the
rest of tflm never asks which one it has. `load_tokenizer(directory)` reads what `save` wrote
(`vocab.json`, plus `tokenizer.model` for sentencepiece; tflm 0.1's char `vocab.json` files are the
same format). `learn_tokenizer(kind, texts, vocab_size)` learns one from the training split.

A kind is a module of this package: the tokenizer of `data.tokenizer: NAME` is the `Tokenizer`
subclass with `kind = "NAME"` in tflm/data/tokenizers/NAME.py (the `Tokenizer` class below says
what it implements), found by importing that module, so nothing here lists the kinds: config.py's
`data.tokenizer` choices say which are valid (and its `data` fields hold a kind's options, which
the class's `learn_options` reads). Adding a tokenizer is that file and that choice. The classes
are importable from here by name too (`from tflm.data.tokenizers import CharTokenizer`).

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

import hashlib
import importlib
import inspect
import json
import os

import numpy as np

from tflm import atomic
from tflm.config import DataConfig, field_types
from tflm.errors import TflmError
from tflm.lazy import tf

PAD_ID = 0
OOV_ID = 1  # the unknown id of every kind (never produced by byte or sentencepiece)
OOV_CHAR = "\ufffd"  # what detokenize writes for the unknown id
OOV_BYTES = len(OOV_CHAR.encode("utf-8"))
INT32_MAX = 2**31 - 1
VOCAB_FILE = "vocab.json"
TF_SERVING_RELEASE = "2.20.0"  # bundles tensorflow-text 2.20.0, whose ops these graphs use (see above)
ENCODE_BATCH_CHARS = 1 << 22  # encode works through this many characters at a time
KINDS = field_types(DataConfig)["tokenizer"][1].choices  # the values of data.tokenizer, one module each


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

    @classmethod
    def learn_options(cls, data_config):
        """The options of `learn` the config's `data` section sets (e.g. sentencepiece's model_type)."""
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

    def export_fields(self):
        """What an export's tflm_export.json lists of this tokenizer beyond its kind, size and ids."""
        return {}

    def file_names(self):
        """The files `save` writes: vocab.json, then any model file it names."""
        return [VOCAB_FILE, *self._files()]

    def save(self, directory):
        """Write vocab.json (and any model file) into `directory`, each file atomically."""
        try:
            atomic.makedirs(directory)
            for name, data in self._files().items():
                path = os.path.join(directory, name)
                if os.path.dirname(name):
                    atomic.makedirs(os.path.dirname(path))
                atomic.write_bytes(path, data)
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


def split_lengths(values, lengths):
    """Split the 1-D array `values` into consecutive pieces of `lengths`."""
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []


def check_vocab_size(kind, vocab_size, minimum, needs):
    """Raise unless `vocab_size` is an integer from `minimum` to 2**31 - 1."""
    if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool):
        raise TflmError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < minimum:
        raise TflmError(f"{kind} vocab_size must be at least {minimum} ({needs}), got {vocab_size}")
    if vocab_size > INT32_MAX:
        raise TflmError(f"vocab_size must be at most {INT32_MAX} (ids are int32), got {vocab_size}")


def text_sample(texts, max_bytes):
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


# --- the kinds, learning and loading ---------------------------------------------------------------

def tokenizer_class(kind):
    """The Tokenizer subclass of a data.tokenizer kind: the one tflm/data/tokenizers/<kind>.py defines."""
    if kind not in KINDS:
        raise TflmError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    module = importlib.import_module(f"{__name__}.{kind}")
    return next(value for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, Tokenizer) and value.kind == kind)


def __getattr__(name):
    """A kind's class by its name (e.g. CharTokenizer), imported from its module when first asked for."""
    if not name.startswith("__"):
        for kind in KINDS:
            cls = tokenizer_class(kind)
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def learn_tokenizer(kind, texts, vocab_size, **options):
    """Learn a `kind` tokenizer from an iterable of training-split strings.

    vocab_size: char, the most ids (the most frequent characters are kept, the rest are OOV);
    wordpiece and sentencepiece, exactly this many ids; byte ignores it (always 257).
    options: wordpiece `sample_bytes` (default 8 MB); sentencepiece `model_type` ("unigram" or "bpe")
    and `sample_bytes` (default 32 MB). Subword vocabularies are learned from the first
    `sample_bytes` of `texts` only, and no more of `texts` is read; char reads all of it.
    """
    cls = tokenizer_class(kind)
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
    if kind not in KINDS:
        raise TflmError(f"{path}: unknown tokenizer type {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        return tokenizer_class(kind).from_definition(definition, directory)
    except (KeyError, TypeError, ValueError) as error:
        raise TflmError(f"{path}: not a valid {kind} tokenizer vocabulary ({error!r})") from None


def learned_tokenizer(data_config, texts):
    """A data.tokenizer tokenizer learned from the training texts."""
    options = tokenizer_class(data_config.tokenizer).learn_options(data_config)
    return learn_tokenizer(data_config.tokenizer, texts, data_config.vocab_size, **options)
