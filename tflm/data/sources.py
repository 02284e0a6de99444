"""Where training text comes from: the embedded default corpus, text files, or TFDS.

Every source gives, for a split ("train" or "validation"), its *units*: (name, texts) pairs where
`texts()` iterates the split's strings of one file (or of the whole stream, for sources without
files); tokenizers learn from them. Text files also give their *chunks* (tflm.data.chunks), the
pieces a store is written in, by one process or by Beam's workers. Text files are read locally
with open() and elsewhere through tf.io.gfile, so `data.paths` may be local paths or any URL
TensorFlow has a filesystem for (gs://, hdfs://, ...); invalid UTF-8 is reported with the file
and line.

Validation text is `data.validation_paths` when given (then every unit of the source trains);
otherwise it is held out of the source: every k-th topic of the default corpus, every k-th block
of LINES_PER_BLOCK lines of each file (k = 1 / data.validation_fraction), or TFDS's own split.
"""

import concurrent.futures
import glob
import os
import sys

from tflm.data.chunks import CHUNK_BYTES, file_chunks, is_url, read_chunk
from tflm.errors import TflmError
from tflm.lazy import tf

SPLITS = ("train", "validation")
STAT_THREADS = 32  # files listed and stat'ed at once


def make_source(data_config):
    """The source named by `data.source`, with `data.validation_paths` for validation if given."""
    held_out = not data_config.validation_paths
    kind = data_config.source
    if kind == "default":
        source = DefaultCorpus(data_config.validation_fraction if held_out else None)
    elif kind == "files":
        source = TextFiles(data_config.paths, data_config.validation_fraction if held_out else None)
    else:
        source = TfdsSource(
            data_config.tfds_name,
            {"train": data_config.tfds_split, "validation": data_config.tfds_validation_split},
            data_config.tfds_text_feature,
            data_config.tfds_data_dir or None,
        )
    return source if held_out else WithValidationFiles(source, TextFiles(data_config.validation_paths, None, "validation"))


def file_chunks_of(source, chunk_bytes=CHUNK_BYTES):
    """The chunks of a source read from text files only (tflm.data.chunks), in store order; None
    for the default corpus and TFDS, which are read as whole streams."""
    if isinstance(source, TextFiles) or isinstance(source, WithValidationFiles) and isinstance(source.train, TextFiles):
        return source.chunks(chunk_bytes)
    return None


def holdout_period(validation_fraction):
    """Every how many units (topics, line blocks) one goes to validation."""
    return max(2, round(1 / validation_fraction))


class DefaultCorpus:
    """The Python reference manual that ships with every CPython (`pydoc_data.topics`).

    Topics are taken in sorted order; every k-th topic (k = 1 / validation_fraction) is held out
    for validation (none when `validation_fraction` is None), so the split is the same on every
    machine with the same Python.
    """

    def __init__(self, validation_fraction):
        from pydoc_data.topics import topics  # the whole manual (700 kB): only when asked for

        period = holdout_period(validation_fraction) if validation_fraction else None
        names = sorted(topics)
        held = [period is not None and i % period == period - 1 for i in range(len(names))]
        self._split = {"train": [topics[n] for n, h in zip(names, held) if not h],
                       "validation": [topics[n] for n, h in zip(names, held) if h]}

    def units(self, split):
        """One unit: the split's topics."""
        return [("pydoc_data.topics", lambda: iter(self._split[split]))]

    def describe(self):
        """What identifies this text: the Python it ships with."""
        return {"source": "pydoc_data.topics", "python": sys.version.split()[0]}


class TextFiles:
    """UTF-8 text files (paths or globs), streamed line by line.

    Within each file, lines are grouped in blocks of LINES_PER_BLOCK and every k-th block goes to
    validation (k = 1 / validation_fraction; with None, every line trains), so even a single file
    gives both splits and the split never depends on sharding.
    """

    def __init__(self, patterns, validation_fraction, split=None):
        self.files = expand_paths(patterns)
        self.period = holdout_period(validation_fraction) if validation_fraction else None
        self.split = split  # every line to this split, if given (else: held out by blocks, or all train)
        self._stats = None

    def stats(self):
        """{path: {path, bytes, mtime}} of every file, stat'ed once, STAT_THREADS at a time."""
        if self._stats is None:
            self._stats = dict(zip(self.files, in_parallel(file_stat, self.files)))
        return self._stats

    def units(self, split):
        """One unit per file."""
        return [(path, lambda path=path: self.iter_file_texts(path, split)) for path in self.files]

    def iter_file_texts(self, path, split):
        """The text of `split` of one file, as blocks of lines (tflm.data.chunks; newlines kept:
        the tokenizers learn the same from blocks as from lines, and count them far faster)."""
        first_line = 0
        for chunk in self.file_chunks(path):
            text = read_chunk(chunk, first_line)
            first_line += text.lines
            yield from text.blocks[split]

    def file_chunks(self, path, chunk_bytes=CHUNK_BYTES):
        """The chunks of one file, each knowing which split its lines go to (tflm.data.chunks)."""
        split = self.split or ("train" if self.period is None else None)
        return file_chunks(path, self.stats()[path]["bytes"], chunk_bytes, split, self.period)

    def chunks(self, chunk_bytes=CHUNK_BYTES):
        """Every file's chunks, file after file."""
        return [chunk for path in self.files for chunk in self.file_chunks(path, chunk_bytes)]

    def describe(self):
        """What identifies this text: every file with its size and modification time."""
        return {"files": [self.stats()[path] for path in self.files]}


class WithValidationFiles:
    """A source whose training text is all of `train`'s, and validation text is `validation`'s files."""

    def __init__(self, train, validation):
        self.train, self.validation = train, validation

    def units(self, split):
        """The training source's training units, or every line of the validation files."""
        return self.train.units("train") if split == "train" else self.validation.units("validation")

    def chunks(self, chunk_bytes=CHUNK_BYTES):
        """The training files' chunks, then the validation files' (both must be files)."""
        return self.train.chunks(chunk_bytes) + self.validation.chunks(chunk_bytes)

    def describe(self):
        """Both parts' descriptions."""
        return {"train": self.train.describe(), "validation": self.validation.describe()}


def expand_paths(patterns):
    """Sorted files matching the paths/globs; a TflmError if one matches nothing."""
    files = []
    for pattern in patterns:
        if is_url(pattern):
            try:
                found = tf.io.gfile.glob(pattern)
                matches = sorted(p for p, is_dir in zip(found, in_parallel(tf.io.gfile.isdir, found)) if not is_dir)
            except tf.errors.OpError as error:
                raise TflmError(f"data.paths: cannot list {pattern!r}: {error.message}") from None
        else:
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise TflmError(f"no file matches {pattern!r}")
        files.extend(matches)
    return list(dict.fromkeys(files))


def in_parallel(function, paths):
    """[function(path) for path in paths], STAT_THREADS calls at a time: on object stores each is a
    request of tens of milliseconds, and a corpus may be many thousands of files."""
    if len(paths) < 2:
        return [function(path) for path in paths]
    with concurrent.futures.ThreadPoolExecutor(STAT_THREADS) as pool:
        return list(pool.map(function, paths))


def file_stat(path):
    """{path, bytes, mtime} of a file, local or remote."""
    stat = tf.io.gfile.stat(path)
    return {"path": path, "bytes": stat.length, "mtime": stat.mtime_nsec // 10**9}


class TfdsSource:
    """A TensorFlow Datasets dataset: `name`, a split per role, and the text feature to read."""

    def __init__(self, name, splits, feature, data_dir=None):
        self.name, self.splits, self.feature, self.data_dir = name, splits, feature, data_dir
        self._builder = self._load_builder()
        for role, split in splits.items():
            if split not in self._builder.info.splits:
                known = ", ".join(sorted(self._builder.info.splits))
                raise TflmError(f"tfds {name} has no split {split!r} for {role} (it has: {known})")
        if feature not in self._builder.info.features:
            known = ", ".join(sorted(self._builder.info.features))
            raise TflmError(f"tfds {name} has no feature {feature!r} (it has: {known})")

    def _load_builder(self):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(self.name, data_dir=self.data_dir)
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many types: unknown name, no network, ...
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TflmError(f"cannot load tfds dataset {self.name!r}: {first_line}") from None
        return builder

    def units(self, split):
        """One unit: the split's examples, in the dataset's stored order."""
        return [(f"tfds:{self.name}/{self.splits[split]}", lambda: self.iter_texts(split))]

    def iter_texts(self, split):
        """The text feature of `split` as Python strings."""
        dataset = self._builder.as_dataset(split=self.splits[split], shuffle_files=False)
        for raw in dataset.map(lambda example: example[self.feature]).as_numpy_iterator():
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TflmError(f"tfds {self.name}: invalid UTF-8 in split {self.splits[split]!r}") from None

    def describe(self):
        """What identifies this text: the dataset, its version and splits."""
        return {"tfds": self.name, "version": str(self._builder.info.version), "splits": self.splits}
