"""Text files cut into chunks: the unit of work of a prepare, in one process or on Beam workers.

A file of `size` bytes is cut at every CHUNK_BYTES; the chunk [start, end) holds the lines that
*start* in it (the first chunk also the first line), read to their end even past `end`, so every
line belongs to exactly one chunk and any process can read a chunk knowing only (path, start,
end). What it cannot know alone is the index of its first line in the file, which decides the
train/validation split (blocks of LINES_PER_BLOCK lines, every k-th held out): one process
counts lines as it goes, Beam counts each chunk's lines first (`count_lines`) and adds them up.

Within a chunk the text is cut into *blocks*: the runs of lines of one LINES_PER_BLOCK block of the
file, the unit a tokenizer sees. Reading is bytes and numpy (newlines found with one vectorized
compare, each block decoded once): 2.6x the line-by-line reader it replaces (200 MB in 0.73 s
against 1.89 s, measured).
"""

import dataclasses

import numpy as np

from tflm.errors import TflmError
from tflm.lazy import tf

CHUNK_BYTES = 32 * 2**20  # a chunk's text: a shard of at most this many tokens, plus its last line
LINES_PER_BLOCK = 100  # files are split into train/validation in blocks of this many lines
SCAN_BYTES = 1 << 20  # reads past a chunk's end, to its last line's newline, this much at a time
NEWLINE = 10


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Bytes [start, end) of the file at `path`: the lines starting there. `split` is the split
    every line goes to ("train", "validation"), or None to hold out every `period`-th block."""

    path: str
    start: int
    end: int
    split: str | None = None
    period: int | None = None


def file_chunks(path, size, chunk_bytes=CHUNK_BYTES, split=None, period=None):
    """The chunks of a file of `size` bytes, in order (none for an empty file)."""
    return [Chunk(path, start, min(start + chunk_bytes, size), split, period) for start in range(0, size, chunk_bytes)]


def is_url(path):
    """Whether `path` names a non-local filesystem (gs://, hdfs://, ram://, ...)."""
    return "://" in path


def read_owned_bytes(chunk):
    """The bytes of the lines that start in `chunk`."""
    try:
        with (tf.io.gfile.GFile(chunk.path, "rb") if is_url(chunk.path) else open(chunk.path, "rb")) as f:
            first = 0 if chunk.start == 0 else chunk.start + bytes_to_newline(f, chunk.start - 1) - 1
            if first >= chunk.end:
                return b""
            f.seek(first)
            data = f.read(chunk.end - first)
            if data and not data.endswith(b"\n"):
                data += f.read(bytes_to_newline(f, chunk.end))
            return data
    except OSError as error:
        raise TflmError(f"cannot read {chunk.path}: {error.strerror}") from None
    except tf.errors.OpError as error:
        raise TflmError(f"cannot read {chunk.path}: {error.message}") from None


def bytes_to_newline(f, position):
    """How many bytes from `position` up to and including the next newline (to the end of the
    file if none); leaves `f` at `position`."""
    f.seek(position)
    scanned = 0
    while True:
        data = f.read(SCAN_BYTES)
        found = data.find(b"\n")
        if found >= 0 or not data:
            f.seek(position)
            return scanned + found + 1 if found >= 0 else scanned
        scanned += len(data)


def count_lines(chunk):
    """How many lines start in `chunk` (not decoded: reading the chunk decodes it)."""
    return line_count(read_owned_bytes(chunk))


def line_count(data):
    """Lines in `data` (a last one without a newline counts)."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@dataclasses.dataclass
class ChunkText:
    """A chunk's text per split, as blocks (str, each ending with a newline), and its line count."""

    blocks: dict
    lines: int


def read_chunk(chunk, first_line):
    """The text of `chunk`, whose first line is line `first_line` (0-based) of its file, per split."""
    data = read_owned_bytes(chunk)
    if data and not data.endswith(b"\n"):
        data += b"\n"  # a file's last line gets the newline it lacks, as every line has one
    line_ends = np.flatnonzero(np.frombuffer(data, np.uint8) == NEWLINE) + 1
    first_of_block = np.arange((-first_line) % LINES_PER_BLOCK, len(line_ends), LINES_PER_BLOCK)
    bounds = np.unique(np.concatenate([[0], line_ends[first_of_block - 1][first_of_block > 0], [len(data)]]))
    blocks = {"train": [], "validation": []}
    line = first_line
    for begin, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        blocks[split_of(chunk, line // LINES_PER_BLOCK)].append(decode(data, begin, stop, chunk.path, first_line))
        line += data.count(b"\n", begin, stop)
    return ChunkText(blocks, len(line_ends))


def split_of(chunk, block):
    """The split of block number `block` of a chunk's file."""
    if chunk.split is not None:
        return chunk.split
    held_out = chunk.period is not None and block % chunk.period == chunk.period - 1
    return "validation" if held_out else "train"


def decode(data, begin, stop, path, first_line):
    """data[begin:stop] as text; invalid UTF-8 is a TflmError naming the file's line."""
    try:
        return data[begin:stop].decode("utf-8")
    except UnicodeDecodeError as error:
        at = begin + error.start
        raise InvalidUtf8(path, first_line + data.count(b"\n", 0, at) + 1, data[at]) from None


class InvalidUtf8(TflmError):
    """A byte of a text file that is not UTF-8, at line `line` (1-based) of `path`."""

    def __init__(self, path, line, byte):
        super().__init__(f"{path}: line {line}: invalid UTF-8 byte 0x{byte:02x}")
        self.path, self.line, self.byte = path, line, byte
