"""Preparing a token store: a corpus tokenized once into shards of token ids (tflm.data.store).
`python -m tflm.prepare` (tflm/prepare.py) runs it for a store several runs share, and training
runs it for a run that has no store yet (in RUN_DIR/store, or at data.store).

The tokenizer is learned from the training split first (byte needs none), unless a resumed run
brings its own; then the text is tokenized piece by piece: a chunk of a text file (tflm.data.chunks,
read as bytes and cut into blocks of lines with numpy), or a whole unit of the default corpus or
TFDS. Each piece's tokens start a shard of their own, so `write_piece` is the same work in this
process and on an Apache Beam worker (tflm.data.beam), which is why both write the same store.
Tokenizers see a chunk's text in blocks of lines, 1 MB of them per call: char and byte through a
numpy lookup, the subword kinds through their in-graph TensorFlow tokenizers, measured 1.8x
(sentencepiece) and 1.4x (wordpiece) faster on 100-line blocks than line by line. The ids are
the same but for sentencepiece, whose ties between equal-score segmentations fall differently
in about 0.4% of tokens: a store prepared now may differ there from one prepared before.

A local store is written under a temporary name and renamed into place; on other filesystems
(gs://, ...), where a directory cannot be renamed atomically, the shards are written in place and
index.json last, so a store is only ever opened whole. One process at a time prepares a local
store (a lock file beside it); a store is never overwritten, and `check_store_matches` tells
whether an existing one was prepared from a run's data settings.
"""

import concurrent.futures
import contextlib
import datetime
import fcntl
import os
import secrets
import shutil
import socket
import time

import numpy as np

from tflm import atomic
from tflm.atomic import is_local, parent_of
from tflm.data.chunks import CHUNK_BYTES, read_chunk
from tflm.data.sources import file_chunks_of, make_source
from tflm.data.store import (FORMAT, SPLITS, ShardWriter, StoreWriteError, TokenStore, id_dtype, shard_name,
                             write_index, writing)
from tflm.data.tokenizers import learned_tokenizer, text_batches
from tflm.errors import TflmError
from tflm.lazy import tf

TEXT_BATCH_CHARS = 1 << 20  # texts are tokenized in batches of about this many characters
RENAME_THREADS = 32  # shards renamed at once on object stores
# The data settings that decide what a store holds (seq_len does not: windows are cut on reading).
STORE_SETTINGS = ("source", "paths", "validation_paths", "tfds_name", "tfds_split", "tfds_validation_split",
                  "tfds_text_feature", "validation_fraction", "tokenizer", "vocab_size", "sentencepiece_model")


def store_settings(data_config):
    """{key: value} of the data settings a store is made from."""
    values = {key: getattr(data_config, key) for key in STORE_SETTINGS}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def check_store_matches(store, data_config, tokenizer=None):
    """Raise unless `store` was prepared from these data settings (and with `tokenizer`)."""
    recorded, wanted = store.index["data"], store_settings(data_config)
    for key in STORE_SETTINGS:
        if recorded.get(key) != wanted[key]:
            raise TflmError(f"token store {store.path} was prepared with data.{key}={recorded.get(key)!r}, not "
                            f"{wanted[key]!r}; use another data.store, or the same setting")
    if tokenizer is not None and tokenizer.fingerprint() != store.tokenizer_fingerprint:
        raise TflmError(f"token store {store.path} was prepared with another tokenizer than the run's "
                        f"({store.tokenizer_fingerprint[:12]} vs {tokenizer.fingerprint()[:12]}); "
                        "use another data.store")


def source_pieces(source, chunk_bytes):
    """{split: texts} per piece of the store, in order: a chunk of a text file (its first line
    counted from the chunks before it), or one unit of any other source."""
    chunks = file_chunks_of(source, chunk_bytes)
    if chunks is None:
        for split in SPLITS:
            for _, texts in source.units(split):
                yield {split: texts()}
        return
    first_line = 0
    for chunk in chunks:
        first_line = 0 if chunk.start == 0 else first_line
        text = read_chunk(chunk, first_line)
        first_line += text.lines
        yield text.blocks


def write_piece(target, dtype, tokenizer, texts, name_shard):
    """Tokenize one piece ({split: texts}) into shards named `name_shard(split, number in the piece)`;
    {split: {"shards": [...], "tokens", "text_bytes"}} of what it wrote."""
    written = {}
    for split, split_texts in texts.items():
        writer = ShardWriter(target, split, dtype, name=lambda number, split=split: name_shard(split, number))
        for batch in text_batches(split_texts, TEXT_BATCH_CHARS):
            ids = tokenizer.encode(batch)
            writer.add(np.concatenate(ids) if ids else np.zeros(0, np.int32), sum(len(t.encode("utf-8")) for t in batch))
        written[split] = writer.close()
    return written


def assemble_splits(target, pieces):
    """The index's splits from what each piece wrote, in piece order: shards renamed to their
    numbers in the split where a piece wrote them under another name (Beam workers do)."""
    splits, renames = {}, []
    for split in SPLITS:
        shards = []
        for piece in pieces:
            for shard in piece.get(split, {}).get("shards", []):
                name = shard_name(split, len(shards))
                if shard["file"] != name:
                    renames.append((shard["file"], name))
                shards.append(dict(shard, file=name))
        splits[split] = {"shards": shards, "tokens": sum(s["tokens"] for s in shards),
                         "text_bytes": sum(piece.get(split, {}).get("text_bytes", 0) for piece in pieces)}
    if splits["train"]["tokens"] == 0:
        raise TflmError("the training split is empty")
    rename_all(target, renames)
    return splits


def rename_all(target, renames):
    """Rename (old, new) files in a store; RENAME_THREADS at a time, as on object stores a rename
    is a copy (tens of thousands of shards for a terabyte)."""
    def rename(names):
        with writing(target, names[1]):
            atomic.rename(os.path.join(target, names[0]), os.path.join(target, names[1]))

    if is_local(target):
        for names in renames:
            rename(names)
        return
    with concurrent.futures.ThreadPoolExecutor(RENAME_THREADS) as pool:
        list(pool.map(rename, renames))


def store_index(dtype, tokenizer, data_config, source, splits, prepared):
    """index.json's content; `prepared` says how (one process, or a Beam runner and its workers)."""
    return {
        "format": FORMAT, "dtype": dtype.str,
        "tokenizer": {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
                      "vocabulary_size": tokenizer.vocabulary_size},
        "data": store_settings(data_config), "source": source.describe(), "splits": splits,
        "prepared": prepared,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class StoreExists(TflmError):
    """The store a process was about to prepare exists (another process prepared it meanwhile)."""


def prepare_store(data_config, path, tokenizer=None, log=print, wait=False, chunk_bytes=CHUNK_BYTES,
                  beam_options=None):
    """Tokenize the configured text into a new token store at `path`; returns it opened.

    `tokenizer` (a run's, when it resumes) is used as it is; otherwise one is learned from the
    training split. With `beam_options` (Apache Beam pipeline options, as one string) the work
    runs on a Beam runner's workers (tflm.data.beam), writing the same store. One process at a
    time prepares a local store: with `wait` this one waits for another that is preparing `path`
    (then raises StoreExists if it succeeded), otherwise that is a TflmError naming it. A store
    that cannot be written whole (a full disk, a failed pipeline) is removed.
    """
    with preparing_alone(path, wait, log):
        if TokenStore.exists(path):
            raise StoreExists(f"{path} already exists; a store is never overwritten: remove it or choose another path")
        try:
            if beam_options is not None:
                return beam_store_writer()(data_config, path, beam_options, log, chunk_bytes)
            return write_store(data_config, path, tokenizer, log, chunk_bytes)
        except StoreWriteError as error:
            raise TflmError(f"cannot write the token store {path}: {error.reason} (writing {error.name}); "
                            "the partial store was removed") from None


def beam_store_writer():
    """tflm.data.beam's write_store_with_beam; a TflmError naming the extra if Beam is not installed."""
    try:
        from tflm.data.beam import write_store_with_beam
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("apache_beam"):
            raise
        raise TflmError('--beam-options needs Apache Beam, which is not installed: pip install "tflm[beam]"') from None
    return write_store_with_beam


def write_store(data_config, path, tokenizer, log, chunk_bytes=CHUNK_BYTES):
    """prepare_store's work, in a staging directory renamed into place when local."""
    source = make_source(data_config)
    tokenizer = tokenizer or learn_logged(data_config, source, log)
    with staged(path) as target:
        with writing(target, "tokenizer"):
            tokenizer.save(os.path.join(target, "tokenizer"))
        dtype = id_dtype(tokenizer.vocabulary_size)
        numbers = {split: 0 for split in SPLITS}  # shards so far: one process names them in order
        pieces, progress = [], Progress(log)
        for texts in source_pieces(source, chunk_bytes):
            pieces.append(write_piece(target, dtype, tokenizer, texts,
                                      lambda split, number: shard_name(split, numbers[split] + number)))
            for split, written in pieces[-1].items():
                numbers[split] += len(written["shards"])
            progress.update(sum(written["text_bytes"] for written in pieces[-1].values()))
        splits = assemble_splits(target, pieces)
        write_index(target, store_index(dtype, tokenizer, data_config, source, splits,
                                        {"by": "one process", "chunk_bytes": chunk_bytes}))
    return TokenStore.open(path)


def learn_logged(data_config, source, log):
    """The data.tokenizer tokenizer learned from the source's training split, saying how long it took."""
    started = time.perf_counter()
    log(f"tflm.prepare: learning a {data_config.tokenizer} tokenizer from the training split")
    tokenizer = learned_tokenizer(data_config, training_texts(source))
    log(f"tflm.prepare: learned {tokenizer.vocabulary_size} ids in {time.perf_counter() - started:.1f}s")
    return tokenizer


@contextlib.contextmanager
def staged(path):
    """The directory to write a store at `path` into: a staging directory renamed into place when
    the block succeeds (locally), or `path` itself (elsewhere); removed if the block fails."""
    target = staging_path(path) if is_local(path) else path
    try:
        yield target
        if target != path:
            move_into_place(target, path)
    except BaseException:
        remove_partial(target)
        raise


class Progress:
    """Logs how much text a prepare has tokenized, every LOG_SECONDS."""

    LOG_SECONDS = 30

    def __init__(self, log):
        self.log, self.text_bytes = log, 0
        self.started = self.logged = time.perf_counter()

    def update(self, text_bytes):
        """Count `text_bytes` more; log if it is time."""
        self.text_bytes += text_bytes
        now = time.perf_counter()
        if now - self.logged >= self.LOG_SECONDS:
            self.logged = now
            self.log(f"tflm.prepare: {self.text_bytes / 1e6:,.0f} MB of text tokenized "
                     f"({self.text_bytes / 1e6 / (now - self.started):.1f} MB/s)")


def move_into_place(staged, path):
    """Rename a staged store to `path`; StoreExists if another process put one there first."""
    try:
        os.rename(staged, path)
    except OSError as error:
        if os.path.exists(path):
            raise StoreExists(f"{path} was prepared by another process meanwhile") from None
        raise TflmError(f"cannot move the token store into {path}: {error.strerror}") from None


def remove_partial(target):
    """Delete what a failed prepare wrote (a staging directory, or a remote store written in place)."""
    if is_local(target):
        shutil.rmtree(target, ignore_errors=True)
        return
    try:
        if tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
    except tf.errors.OpError:
        pass  # the prepare's own error is the one to report


@contextlib.contextmanager
def preparing_alone(path, wait, log):
    """Hold an exclusive lock (flock on PARENT/.NAME.preparing, released by the kernel if the
    process dies) while preparing the local store at `path`. Object stores have no such lock:
    two prepares into one gs:// path are not detected."""
    if not is_local(path):
        yield
        return
    lock_path = os.path.join(parent_of(path), f".{os.path.basename(os.path.abspath(path))}.preparing")
    make_parent(path)
    lock = locked_file(lock_path, path, wait, log)
    try:
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # while still held: a process that waited then sees the store (or none)
        lock.close()


def locked_file(lock_path, path, wait, log):
    """`lock_path` opened and flock()ed, retried if the holder unlinked it meanwhile."""
    while True:
        try:
            lock = open(lock_path, "a+", encoding="utf-8")
        except OSError as error:
            raise TflmError(f"cannot prepare a token store at {path}: {os.path.dirname(lock_path)}: "
                            f"{error.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            if not wait:
                lock.close()
                raise TflmError(f"{path} is being prepared by {holder} ({lock_path}); "
                                "wait for it to finish, or prepare another path") from None
            log(f"tflm.prepare: waiting for {holder}, which is preparing {path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(lock.fileno()).st_ino == os.stat(lock_path).st_ino:
                return lock
        lock.close()


def make_parent(path):
    """Create the directory that will hold `path`; a TflmError if it cannot be."""
    parent = parent_of(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise TflmError(f"cannot write a token store in {parent}: {error.strerror}") from None
    return parent


def staging_path(path):
    """A new hidden directory beside `path`, to fill and rename into place."""
    return os.path.join(make_parent(path), f".tflm-store-{secrets.token_hex(4)}")


def training_texts(source):
    """Every training string of a source, unit after unit."""
    for _, texts in source.units("train"):
        yield from texts()
