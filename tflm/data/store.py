"""The token store: a corpus tokenized once into shards of token ids, read by window index.

    STORE/index.json            what is in the store (below); written last, so its presence
                                means the store is whole
    STORE/tokenizer/            the tokenizer the ids belong to (tflm.data.tokenizers' save format)
    STORE/train/00000.bin ...   little-endian uint16 ids (uint32 when the vocabulary needs it)
    STORE/validation/00000.bin

index.json holds the format, the id dtype, the tokenizer's kind and fingerprint, the data
settings and source files the store was made from, how it was prepared (one process, or Apache
Beam's runner and workers), and per split its shards (file, tokens, CRC-32 of the bytes) and the
UTF-8 bytes of text they hold. Each chunk of a source file (tflm.data.chunks: CHUNK_BYTES of text,
whole lines) starts a new shard, so a window never straddles two files, and the store's layout
does not depend on who prepared it; a chunk of more than SHARD_TOKENS ids is cut into several.

Reading never loads the corpus: each window is one positional read (`os.pread` locally, a
seek and read through tf.io.gfile elsewhere), so memory stays bounded by the open files and the
batches in flight, and the page cache, not this process, holds what was read.
"""

import collections
import concurrent.futures
import contextlib
import json
import os
import threading
import zlib

import numpy as np

from tflm import atomic
from tflm.atomic import is_local
from tflm.errors import TflmError
from tflm.lazy import tf

FORMAT = "tflm-store/1"
INDEX_FILE = "index.json"
SPLITS = ("train", "validation")
SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MiB of uint16
OPEN_FILES = 256  # shards kept open by a reader (far below a process's file limit)
VERIFY_THREADS = 4  # shards checksummed at once (zlib.crc32 and file reads release the GIL)
# What index.json must hold, as {key: type or nested schema}; [schema] is a list of such items.
INDEX_SCHEMA = {
    "format": str, "dtype": str, "tokenizer": {"fingerprint": str}, "data": dict,
    "splits": {split: {"shards": [{"file": str, "tokens": int, "crc32": int}], "tokens": int, "text_bytes": int}
               for split in SPLITS},
}
DTYPES = ("<u2", "<u4")


def id_dtype(vocabulary_size):
    """uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocabulary_size <= 1 << 16 else np.dtype("<u4")


class StoreWriteError(TflmError):
    """A store's file could not be written (disk full, no permission): the store is incomplete."""

    def __init__(self, directory, name, reason):
        super().__init__(f"cannot write {os.path.join(directory, name)}: {reason}")
        self.name, self.reason = name, reason


@contextlib.contextmanager
def writing(directory, name):
    """Turn an OSError or TensorFlow file error while writing `name` in a store's `directory` into
    a StoreWriteError naming it."""
    try:
        yield
    except OSError as error:
        raise StoreWriteError(directory, name, error.strerror or str(error)) from None
    except tf.errors.OpError as error:
        raise StoreWriteError(directory, name, error.message) from None


class ShardWriter:
    """Appends token ids of one split to shard files (numbered, or named by `name`), starting a new
    shard at each `end_file` (a piece of the corpus ends) and every SHARD_TOKENS ids; records
    tokens, bytes of text and a CRC-32 per shard."""

    def __init__(self, directory, split, dtype, shard_tokens=SHARD_TOKENS, name=None):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.name = name or (lambda number: shard_name(split, number))  # number -> file name in the store
        self.shards, self.text_bytes = [], 0
        self._file = None
        with writing(directory, split):
            atomic.makedirs(os.path.join(directory, split))

    def add(self, ids, text_bytes):
        """Append `ids` (the tokens of `text_bytes` bytes of text)."""
        self.text_bytes += text_bytes
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._current["tokens"]
            chunk, ids = ids[:room], ids[room:]
            data = chunk.tobytes()
            with writing(self.directory, self._current["file"]):
                self._file.write(data)
            self._current["tokens"] += len(chunk)
            self._current["crc32"] = zlib.crc32(data, self._current["crc32"])
            if self._current["tokens"] == self.shard_tokens:
                self.end_file()

    def end_file(self):
        """The tokens of a source file (or a full shard) end here: the next ones start a shard."""
        if self._file is not None:
            file, self._file = self._file, None
            with writing(self.directory, self._current["file"]):
                file.close()

    def _open(self):
        name = self.name(len(self.shards))
        self._current = {"file": name, "tokens": 0, "crc32": 0}
        self.shards.append(self._current)
        path = os.path.join(self.directory, name)
        with writing(self.directory, name):  # locally open(): no TensorFlow to import on a Beam worker
            self._file = open(path, "wb") if is_local(path) else tf.io.gfile.GFile(path, "wb")

    def close(self):
        """Finish; the split's index entry."""
        self.end_file()
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards), "text_bytes": self.text_bytes}


def shard_name(split, number):
    """The file of shard `number` of a split, as index.json names it."""
    return f"{split}/{number:05d}.bin"


def write_index(directory, index):
    """Write index.json last: a store without one is incomplete."""
    with writing(directory, INDEX_FILE), tf.io.gfile.GFile(os.path.join(directory, INDEX_FILE), "w") as f:
        f.write(json.dumps(index, indent=1, ensure_ascii=False))


class TokenStore:
    """A prepared store, opened for reading."""

    def __init__(self, path, index):
        self.path, self.index = path, index
        self.dtype = np.dtype(index["dtype"])
        self._reader = ShardReader(path, self.dtype)

    @classmethod
    def open(cls, path):
        """Open the store at `path`; a TflmError if it is incomplete or its index is damaged."""
        index_path = os.path.join(path, INDEX_FILE)
        if not tf.io.gfile.exists(index_path):
            raise TflmError(f"{path} is not a prepared token store (no {INDEX_FILE}); "
                            "prepare it with python -m tflm.prepare")
        try:
            with tf.io.gfile.GFile(index_path, "r") as f:
                index = json.loads(f.read())
            check_index(index)
        except (ValueError, tf.errors.OpError) as error:
            raise TflmError(f"{index_path} is damaged ({error}); prepare the store again") from None
        return cls(path, index)

    @staticmethod
    def exists(path):
        """Whether anything (a store, or a store being written) is at `path`."""
        return tf.io.gfile.exists(path)

    @property
    def tokenizer_fingerprint(self):
        """The fingerprint of the tokenizer the ids belong to."""
        return self.index["tokenizer"]["fingerprint"]

    def tokens(self, split):
        """Token ids in a split."""
        return self.index["splits"][split]["tokens"]

    def shard_tokens(self, split):
        """Ids per shard of a split, in shard order."""
        return [s["tokens"] for s in self.index["splits"][split]["shards"]]

    def verify(self, splits=SPLITS, checksums=True):
        """Raise a TflmError naming the first shard (in index order) whose size or CRC-32 differs
        from the index (without `checksums`, only sizes: a stat per shard); shards are
        checksummed VERIFY_THREADS at a time."""
        shards = [shard for split in splits for shard in self.index["splits"][split]["shards"]]
        check = self._shard_problem if checksums else self._size_problem
        pool = concurrent.futures.ThreadPoolExecutor(VERIFY_THREADS)
        try:
            for problem in pool.map(check, shards):
                if problem:
                    raise TflmError(f"token store {self.path}: {problem}; prepare the store again")
        finally:
            pool.shutdown(cancel_futures=True)  # a damaged shard is reported without reading the rest

    def verify_in_background(self, splits=SPLITS):
        """Start `verify(splits)` in a thread; returns a function that waits for it to finish and
        raises the TflmError it found, if any."""
        found = []

        def run():
            try:
                self.verify(splits)
            except TflmError as error:
                found.append(error)

        thread = threading.Thread(target=run, name="tflm-store-verify", daemon=True)
        thread.start()

        def wait():
            thread.join()
            if found:
                raise found[0]

        return wait

    def _size_problem(self, shard):
        """What is wrong with a shard file's size (missing, truncated, grown), or None."""
        path, expected = os.path.join(self.path, shard["file"]), shard["tokens"] * self.dtype.itemsize
        try:
            size = tf.io.gfile.stat(path).length
        except tf.errors.NotFoundError:
            return f"{shard['file']} is missing"
        except tf.errors.OpError as error:
            return f"cannot read {shard['file']}: {error.message}"
        if size != expected:
            return f"{shard['file']} is {size} bytes, {INDEX_FILE} says {expected} (truncated or changed)"
        return None

    def _shard_problem(self, shard):
        """What is wrong with a shard file (missing, wrong size, wrong checksum), or None."""
        problem = self._size_problem(shard)
        if problem:
            return problem
        try:
            if file_crc32(os.path.join(self.path, shard["file"])) != shard["crc32"]:
                return f"{shard['file']} does not match its checksum in {INDEX_FILE} (damaged or changed)"
        except OSError as error:
            return f"cannot read {shard['file']}: {error.strerror}"
        except tf.errors.OpError as error:
            return f"cannot read {shard['file']}: {error.message}"
        return None

    def read(self, split, shards, positions, length):
        """int32 [n, length]: the ids of split `split` at `positions` of `shards` (numpy arrays)."""
        files = [self.index["splits"][split]["shards"][s]["file"] for s in shards]
        return self._reader.read(files, positions, length)


def check_index(index):
    """Raise a ValueError naming what a store's index lacks: a key, a type, the format, a shard's name."""
    check_schema(index, INDEX_SCHEMA, "")
    if index["format"] != FORMAT:
        raise ValueError(f"format {index['format']!r}, not {FORMAT!r}")
    if index["dtype"] not in DTYPES:
        raise ValueError(f"'dtype' is {index['dtype']!r}, not one of {', '.join(DTYPES)}")
    for split in SPLITS:
        for number, shard in enumerate(index["splits"][split]["shards"]):
            if shard["file"] != shard_name(split, number) or shard["tokens"] < 0:
                raise ValueError(f"'splits.{split}.shards[{number}]' is {shard!r:.80}, not shard {number} of {split}")


TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def check_schema(value, schema, where):
    """Raise a ValueError naming the first key (as 'splits.train.shards[0].crc32') that `value`
    lacks, or whose value is not of the type `schema` gives."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where!r} must be an object, not {value!r:.40}" if where else "not a JSON object")
        for key, part in schema.items():
            inner = f"{where}.{key}" if where else key
            if key not in value:
                raise ValueError(f"no key {inner!r}")
            check_schema(value[key], part, inner)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where!r} must be a list, not {value!r:.40}")
        for number, item in enumerate(value):
            check_schema(item, schema[0], f"{where}[{number}]")
    elif not isinstance(value, schema) or isinstance(value, bool):
        raise ValueError(f"{where!r} must be {TYPE_NAMES[schema]}, not {value!r:.40}")


def file_crc32(path, block=1 << 22):
    """CRC-32 of a file's bytes, streamed (local files with open(): 15x faster than tf.io.gfile's reads)."""
    crc = 0
    with (open(path, "rb") if is_local(path) else tf.io.gfile.GFile(path, "rb")) as f:
        while True:
            data = f.read(block)
            if not data:
                return crc
            crc = zlib.crc32(data, crc)


class ShardReader:
    """Positional reads of windows from shard files, keeping at most OPEN_FILES open; safe to
    call from tf.data's parallel map threads."""

    def __init__(self, directory, dtype):
        self.directory, self.dtype = directory, dtype
        self._open = collections.OrderedDict()
        self._local = is_local(directory)
        self._lock = threading.Lock()

    def read(self, files, positions, length):
        """int32 [len(files), length]: `length` ids from each file at each position."""
        out = np.empty((len(files), length), np.int32)
        nbytes = length * self.dtype.itemsize
        for row, (name, position) in enumerate(zip(files, positions)):
            with self._lock:  # an evicted handle is closed; no other thread may be reading it
                data = self._read_bytes(name, int(position) * self.dtype.itemsize, nbytes)
            if len(data) != nbytes:
                raise TflmError(f"token store {self.directory}: {name} is shorter than its index says; "
                                "prepare the store again")
            out[row] = np.frombuffer(data, self.dtype)
        return out

    def _read_bytes(self, name, offset, nbytes):
        handle = self._handle(name)
        if self._local:
            return os.pread(handle, nbytes, offset)
        handle.seek(offset)
        return handle.read(nbytes)

    def _handle(self, name):
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        path = os.path.join(self.directory, name)
        handle = os.open(path, os.O_RDONLY) if self._local else tf.io.gfile.GFile(path, "rb")
        self._open[name] = handle
        if len(self._open) > OPEN_FILES:
            _, oldest = self._open.popitem(last=False)
            os.close(oldest) if self._local else oldest.close()
        return handle
