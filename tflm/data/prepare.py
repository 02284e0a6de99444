"""Preparing a token store: a corpus tokenized once into shards of token ids (tflm.data.store).
`python -m tflm.prepare` (tflm/prepare.py) runs it for a store several runs share, and training
runs it for a run that has no store yet (in RUN_DIR/store, or at data.store).

The tokenizer is learned from the training split first (byte needs none), unless a resumed run
brings its own; then each split is tokenized file by file. A local store is written under a
temporary name and renamed into place; on other filesystems (gs://, ...), where a directory
cannot be renamed atomically, the shards are written in place and index.json last, so a store is
only ever opened whole. One process at a time prepares a local store (a lock file beside it); a
store is never overwritten, and `check_store_matches` tells whether an existing one was prepared
from a run's data settings.
"""

import contextlib
import datetime
import fcntl
import os
import secrets
import shutil
import socket
import time

import numpy as np

from tflm.atomic import is_local, parent_of
from tflm.data.sources import make_source
from tflm.data.store import FORMAT, SPLITS, ShardWriter, StoreWriteError, TokenStore, id_dtype, write_index, writing
from tflm.data.tokenizers import learned_tokenizer, text_batches
from tflm.errors import TflmError
from tflm.lazy import tf

TEXT_BATCH_CHARS = 1 << 20  # texts are tokenized in batches of about this many characters
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


def tokenize_split(source, split, tokenizer, writer, log):
    """Tokenize every unit of a split into `writer`, one unit (file) after another."""
    for name, texts in source.units(split):
        started, before = time.perf_counter(), writer.text_bytes
        for batch in text_batches(texts(), TEXT_BATCH_CHARS):
            ids = tokenizer.encode(batch)
            writer.add(np.concatenate(ids) if ids else np.zeros(0, np.int32), len("".join(batch).encode("utf-8")))
        writer.end_file()
        megabytes = (writer.text_bytes - before) / 1e6
        if megabytes >= 10:
            log(f"tflm.prepare: {split}: {name}: {megabytes:.0f} MB in {time.perf_counter() - started:.0f}s")


class StoreExists(TflmError):
    """The store a process was about to prepare exists (another process prepared it meanwhile)."""


def prepare_store(data_config, path, tokenizer=None, log=print, wait=False):
    """Tokenize the configured text into a new token store at `path`; returns it opened.

    `tokenizer` (a run's, when it resumes) is used as it is; otherwise one is learned from the
    training split. One process at a time prepares a local store: with `wait` this one waits for
    another that is preparing `path` (then raises StoreExists if it succeeded), otherwise that
    is a TflmError naming it. A store that cannot be written whole (a full disk) is removed.
    """
    with preparing_alone(path, wait, log):
        if TokenStore.exists(path):
            raise StoreExists(f"{path} already exists; a store is never overwritten: remove it or choose another path")
        try:
            return write_store(data_config, path, tokenizer, log)
        except StoreWriteError as error:
            raise TflmError(f"cannot write the token store {path}: {error.reason} (writing {error.name}); "
                            "the partial store was removed") from None


def write_store(data_config, path, tokenizer, log):
    """prepare_store's work, in a staging directory renamed into place when local."""
    source = make_source(data_config)
    if tokenizer is None:
        log(f"tflm.prepare: learning a {data_config.tokenizer} tokenizer from the training split")
        tokenizer = learned_tokenizer(data_config, training_texts(source))
    target = staging_path(path) if is_local(path) else path
    try:
        with writing(target, "tokenizer"):
            tokenizer.save(os.path.join(target, "tokenizer"))
        dtype = id_dtype(tokenizer.vocabulary_size)
        splits = {}
        for split in SPLITS:
            writer = ShardWriter(target, split, dtype)
            tokenize_split(source, split, tokenizer, writer, log)
            splits[split] = writer.close()
        if splits["train"]["tokens"] == 0:
            raise TflmError("the training split is empty")
        write_index(target, {
            "format": FORMAT, "dtype": dtype.str,
            "tokenizer": {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(),
                          "vocabulary_size": tokenizer.vocabulary_size},
            "data": store_settings(data_config), "source": source.describe(), "splits": splits,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        if target != path:
            move_into_place(target, path)
    except BaseException:
        remove_partial(target)
        raise
    return TokenStore.open(path)


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
