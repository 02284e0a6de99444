"""Where training text comes from: the embedded default corpus, local text files, or TFDS.

Every source gives the same two things for a split ("train" or "validation"): a streamed
`tf.data.Dataset` of strings for the input pipeline (`texts(split)`, or per file
`file_texts(path, split)` for sources with `files`, so windows never straddle two files), and
`iter_texts(split)`, the same strings in Python, used once to learn the vocabulary and to count
tokens (it is also where invalid UTF-8 is reported, with the file and line).
"""

import codecs
import glob
import os

from tflm.errors import TflmError
from tflm.lazy import tf

SPLITS = ("train", "validation")
LINES_PER_BLOCK = 100  # files are split into train/validation in blocks of this many lines


def make_source(data_config):
    """The source named by `data.source`."""
    kind = data_config.source
    if kind == "default":
        return DefaultCorpus(data_config.validation_fraction)
    if kind == "files":
        return TextFiles(data_config.paths, data_config.validation_fraction)
    return TfdsSource(
        data_config.tfds_name,
        {"train": data_config.tfds_split, "validation": data_config.tfds_validation_split},
        data_config.tfds_text_feature,
        data_config.tfds_data_dir or None,
    )


def holdout_period(validation_fraction):
    """Every how many units (topics, line blocks) one goes to validation."""
    return max(2, round(1 / validation_fraction))


class DefaultCorpus:
    """The Python reference manual that ships with every CPython (`pydoc_data.topics`).

    Topics are taken in sorted order; every k-th topic (k = 1 / validation_fraction) is held out
    for validation, so the split is the same on every machine with the same Python.
    """

    files = ()

    def __init__(self, validation_fraction):
        from pydoc_data.topics import topics

        period = holdout_period(validation_fraction)
        names = sorted(topics)
        self._split = {
            "train": [topics[n] for i, n in enumerate(names) if i % period != period - 1],
            "validation": [topics[n] for i, n in enumerate(names) if i % period == period - 1],
        }

    def texts(self, split):
        """Topics of `split` as a dataset of strings."""
        return tf.data.Dataset.from_tensor_slices(tf.constant(self._split[split], tf.string))

    def iter_texts(self, split):
        """Topics of `split` as Python strings."""
        return iter(self._split[split])


class TextFiles:
    """UTF-8 text files (paths or globs), streamed line by line.

    Within each file, lines are grouped in blocks of LINES_PER_BLOCK and every k-th block goes to
    validation, so even a single file gives both splits and the split never depends on sharding.
    """

    def __init__(self, patterns, validation_fraction):
        self.files = expand_paths(patterns)
        self.period = holdout_period(validation_fraction)

    def _in_split(self, split, line_index):
        held_out = (line_index // LINES_PER_BLOCK) % self.period == self.period - 1
        return held_out if split == "validation" else not held_out

    def file_texts(self, path, split):
        """Lines of `split` (newline kept) of one file; `path` may be a string tensor."""
        period, want_validation = self.period, split == "validation"

        def keep(index, _):
            held_out = tf.equal((index // LINES_PER_BLOCK) % period, period - 1)
            return held_out if want_validation else tf.logical_not(held_out)

        lines = tf.data.TextLineDataset(path).enumerate().filter(keep)
        return lines.map(lambda _, line: line + "\n")

    def iter_texts(self, split):
        """Lines of `split` in Python, decoding strictly so bad bytes name their file and line."""
        for path in self.files:
            yield from self.iter_file_texts(path, split)

    def iter_file_texts(self, path, split):
        """Lines of `split` of one file, in Python."""
        for index, line in enumerate(read_utf8_lines(path)):
            if self._in_split(split, index):
                yield line


def expand_paths(patterns):
    """Sorted files matching the paths/globs; a TflmError if one matches nothing."""
    files = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                         if os.path.isfile(p))
        if not matches:
            raise TflmError(f"data.paths: no file matches {pattern!r}")
        files.extend(matches)
    return list(dict.fromkeys(files))


def read_utf8_lines(path):
    """Yield the lines of a UTF-8 file, streamed; invalid bytes raise a TflmError naming the line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line_number = 1
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    line = decoder.decode(raw)
                except UnicodeDecodeError as error:
                    raise TflmError(
                        f"{path}: line {line_number}: invalid UTF-8 byte 0x{raw[error.start]:02x}"
                    ) from None
                line_number += 1
                yield line if line.endswith("\n") else line + "\n"
    except OSError as error:
        raise TflmError(f"cannot read {path}: {error.strerror}") from None


class TfdsSource:
    """A TensorFlow Datasets dataset: `name`, a split per role, and the text feature to read."""

    files = ()

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

    def texts(self, split):
        """The text feature of `split`, in the dataset's stored order."""
        dataset = self._builder.as_dataset(split=self.splits[split], shuffle_files=False)
        return dataset.map(lambda example: example[self.feature])

    def iter_texts(self, split):
        """The text feature of `split` as Python strings."""
        for raw in self.texts(split).as_numpy_iterator():
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TflmError(f"tfds {self.name}: invalid UTF-8 in split {self.splits[split]!r}") from None
