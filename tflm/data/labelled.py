"""Labelled text for `task.type: classify`: (text, label) examples from CSV, TSV, JSONL or TFDS.

    data.paths: [reviews.csv]          columns task.text_field and task.label_field (a header row)
    data.paths: [reviews.tsv]          the same, tab-separated
    data.paths: [reviews.jsonl]        one JSON object per line with those two fields

Validation examples are `data.validation_paths` when given; otherwise every k-th example of the
training files (k = 1 / data.validation_fraction), or TFDS's own validation split. The label set
is learned from the training split (sorted), so a label that only validation has is an error,
as are a single class, an empty text and a missing column: all found before a run directory is
created. Labelled sets are small, so they are read whole into memory.
"""

import csv
import dataclasses
import io
import json
import math
import os
import re

from tflm import atomic
from tflm.config import shown
from tflm.data.sources import TfdsSource, expand_paths, holdout_period, is_url
from tflm.errors import TflmError
from tflm.jsonl import BadLine, json_objects
from tflm.lazy import tf

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
LABELS_FILE = "labels.json"  # in the run directory: the label names, in id order


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled text and where it came from (file:line, for messages)."""

    text: str
    label: str
    where: str


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """Both splits' examples and the label names (sorted; a label's id is its index)."""

    train: list
    validation: list
    labels: tuple

    def ids(self, split):
        """The label ids of a split's examples."""
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in getattr(self, split)]


def read_labelled(data_config, task_config):
    """The checked labelled examples the config names (files or TFDS)."""
    if data_config.source == "tfds":
        train, validation = read_tfds(data_config, task_config)
    else:
        files = [e for path in expand_paths(data_config.paths) for e in read_file(path, task_config)]
        if data_config.validation_paths:
            train = files
            validation = [e for path in expand_paths(data_config.validation_paths)
                          for e in read_file(path, task_config)]
        else:
            period = holdout_period(data_config.validation_fraction)
            train = [e for i, e in enumerate(files) if i % period != period - 1]
            validation = [e for i, e in enumerate(files) if i % period == period - 1]
    return checked(train, validation)


def checked(train, validation):
    """LabelledData of the two splits, or a TflmError for an impossible set."""
    if not train:
        raise TflmError("the training split has no labelled examples")
    if not validation:
        raise TflmError("the validation split has no labelled examples; give data.validation_paths "
                        "or more examples")
    labels = tuple(sorted({e.label for e in train}))
    if len(labels) < 2:
        raise TflmError(f"the training split has a single class ({labels[0]!r}); classification needs at least 2")
    for example in validation:
        if example.label not in labels:
            raise TflmError(f"{example.where}: label {example.label!r} is in validation but never in training "
                            f"(training has: {', '.join(labels)})")
    return LabelledData(train, validation, labels)


def read_file(path, task_config):
    """The examples of one CSV, TSV or JSONL file."""
    kind = next((k for ext, k in FORMATS.items() if path.lower().endswith(ext)), None)
    if kind is None:
        raise TflmError(f"{path}: labelled data must be .csv, .tsv or .jsonl files")
    text = read_text(path)
    rows = json_rows(path, text) if kind == "jsonl" else table_rows(path, text, "\t" if kind == "tsv" else ",")
    return [example(path, line, row, task_config) for line, row in rows]


def read_text(path):
    """A whole UTF-8 file (local or tf.io.gfile URL)."""
    try:
        with (tf.io.gfile.GFile(path, "rb") if is_url(path) else open(path, "rb")) as f:
            data = f.read()
        return data.decode("utf-8-sig")
    except OSError as error:
        raise TflmError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TflmError(f"{path}:{line}: invalid UTF-8 byte 0x{data[error.start]:02x}") from None


def table_rows(path, text, delimiter):
    """(line number, {column: value}) of a CSV/TSV file with a header row."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise TflmError(f"{path}:{reader.line_num}: {error}") from None


def json_rows(path, text):
    """(line number, object) of a JSONL file; blank lines skipped."""
    try:
        return json_objects(text)
    except BadLine as bad:
        raise TflmError(f"{path}:{bad.number}: {bad.reason}") from None


def example(path, line, row, task_config):
    """The Example in one row, checked: both fields there, the text not empty."""
    where = f"{path}:{line}"
    for role, field in (("text", task_config.text_field), ("label", task_config.label_field)):
        if row.get(field) is None:
            known = ", ".join(k for k in row if k is not None) or "none"
            raise TflmError(f"{where}: no {role} column {field!r} (task.{role}_field; it has: {known})")
    text, label = row[task_config.text_field], row[task_config.label_field]
    if not isinstance(text, str):
        raise TflmError(f"{where}: the text {task_config.text_field!r} must be a string, got {shown(text)}")
    if not text.strip():
        raise TflmError(f"{where}: empty text")
    return Example(text, label_name(label, where, task_config.label_field), where)


def label_name(label, where, field):
    """A label as its class name: a non-empty string, or an integer (a float only if it is one:
    1.0 and 1 are the same class); a TflmError for anything else (true, NaN, 1e400, 0.5, lists)."""
    if isinstance(label, float) and math.isfinite(label) and label.is_integer():
        label = int(label)
    if isinstance(label, str) and label.strip():
        return label.strip()
    if isinstance(label, int) and not isinstance(label, bool):
        return str(label)
    raise TflmError(f"{where}: the label {field!r} must be a non-empty string or an integer, got "
                    f"{json.dumps(label)[:100] if isinstance(label, (bool, float)) else shown(label)}")


def read_tfds(data_config, task_config):
    """(train, validation) examples of a TFDS dataset with text and label features."""
    splits = {"train": data_config.tfds_split, "validation": data_config.tfds_validation_split}
    source = TfdsSource(data_config.tfds_name, splits, task_config.text_field, data_config.tfds_data_dir or None)
    features = source._builder.info.features
    if task_config.label_field not in features:
        raise TflmError(f"tfds {source.name} has no label feature {task_config.label_field!r} "
                        f"(it has: {', '.join(sorted(features))})")
    names = getattr(features[task_config.label_field], "names", None)

    def examples(split):
        dataset = source._builder.as_dataset(split=splits[split], shuffle_files=False)
        found = []
        for i, row in enumerate(dataset.as_numpy_iterator()):
            where = f"tfds:{source.name}/{splits[split]}[{i}]"
            text = row[task_config.text_field].decode("utf-8", errors="replace")
            if not text.strip():
                raise TflmError(f"{where}: empty text")
            label = row[task_config.label_field]
            label = label.decode("utf-8") if isinstance(label, bytes) else (names[int(label)] if names else label)
            found.append(Example(text, str(label), where))
        return found

    return examples("train"), examples("validation")


def save_labels(labels):
    """The contents of labels.json."""
    return json.dumps({"labels": list(labels)}, ensure_ascii=False, indent=1) + "\n"


def load_labels(run_dir):
    """The label names a classification run learned, in id order."""
    try:
        return tuple(json.loads(atomic.read_bytes(f"{run_dir.rstrip('/')}/{LABELS_FILE}"))["labels"])
    except (OSError, ValueError, KeyError) as error:
        raise TflmError(f"{run_dir}/{LABELS_FILE}: cannot read the run's labels ({error})") from None


# A labelled set built offline from the embedded corpus: which topic of the Python reference
# manual (pydoc_data.topics) a paragraph comes from. Used by notebooks/04_finetune.ipynb and
# benchmarks/finetune_vs_scratch.py.
MANUAL_TOPICS = ("compound", "debugger", "formatstrings", "string-methods")
MIN_PARAGRAPH_CHARS = 60


def write_manual_topics(directory, topics=MANUAL_TOPICS, validation_every=5):
    """Write train.csv and validation.csv (text, label) of the paragraphs of `topics` in the
    embedded manual, every `validation_every`-th paragraph of each topic to validation; returns
    their paths."""
    from pydoc_data.topics import topics as manual  # the whole manual (700 kB): only when asked for

    os.makedirs(directory, exist_ok=True)
    rows = {"train": [], "validation": []}
    for topic in topics:
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", manual[topic])]
        paragraphs = [p for p in paragraphs if len(p) >= MIN_PARAGRAPH_CHARS]
        for i, paragraph in enumerate(paragraphs):
            split = "validation" if i % validation_every == validation_every - 1 else "train"
            rows[split].append({"text": paragraph, "label": topic})
    paths = []
    for split, examples in rows.items():
        path = os.path.join(directory, f"{split}.csv")
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(examples)
        paths.append(path)
    return tuple(paths)
