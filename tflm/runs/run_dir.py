"""The run directory: a ledger of one training run that no code path silently destroys.

    RUN_DIR/config.yaml      the resolved config this run trains with
    RUN_DIR/vocab.json       the tokenizer (and any model file it names: tflm.data.tokenizers)
    RUN_DIR/store/           the token store, unless data.store names a shared one (tflm.data.store)
    RUN_DIR/checkpoints/     tf.train.CheckpointManager files (model, optimizer, step)
    RUN_DIR/history.jsonl    one JSON object per evaluation
    RUN_DIR/labels.json      a classifier's label names, in id order (tflm.data.labelled)
    RUN_DIR/init_from.json   the run it started from, if any (tflm.runs.init_from)
    RUN_DIR/tensorboard/     event files
    RUN_DIR/lock             held by the trainer writing here (tflm.runs.lock)

A new run directory appears whole or not at all: it is reserved before anything is prepared for
it (PARENT/.tflm-new-NAME, made exclusively, this process's lock inside: a second trainer stops
there), assembled there, store included, and renamed into place, lock and all; a reservation
whose trainer is gone is swept by the next start. Only the chief writes here, and only while it
holds the lock: it checks the lock before every history record and checkpoint, and if someone
deleted it, takes it again, or stops (exit 2) if another trainer has taken it meanwhile.
An existing directory is resumed, never restarted: its damaged parts are reported or repaired
(tflm.runs.checkpoint for checkpoints, `repair_history` here), and starting over takes `--restart`,
which moves the old directory aside rather than deleting it.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading

from tflm import atomic
from tflm.atomic import write_text
from tflm.config import Config, dump, read_yaml
from tflm.data import tokenizers
from tflm.errors import TflmError
from tflm.jsonl import BadLine, json_object
from tflm.runs.lock import (LOCK_FILE, OWNER, acquire_lock, check_if_held, create_exclusively, forget, lock_path,
                             moving, process_alive, read_lock, release, remove_lock)

RESERVATION_PREFIX = ".tflm-new-"


def utc_stamp():
    """'20261123-142233' in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_run_dir(config):
    """runs/<model type>-<UTC time>-<random>: two runs started in the same second still differ."""
    return os.path.join("runs", f"{config.model.type}-{utc_stamp()}-{secrets.token_hex(3)}")


def config_path(run_dir):
    """The resolved config of a run."""
    return os.path.join(run_dir, "config.yaml")


def vocab_path(run_dir):
    """The tokenizer vocabulary of a run."""
    return os.path.join(run_dir, "vocab.json")


def history_path(run_dir):
    """The evaluation history of a run."""
    return os.path.join(run_dir, "history.jsonl")


def is_run_dir(run_dir):
    """Whether `run_dir` holds a tflm run."""
    return atomic.isfile(config_path(run_dir)) and atomic.isfile(vocab_path(run_dir))


def check_usable(run_dir):
    """Raise unless `run_dir` is absent, empty, a tflm run directory, or one being created on a
    filesystem without atomic rename (its lock says by whom)."""
    if atomic.exists(run_dir) and not is_run_dir(run_dir):
        being_created = not atomic.is_local(run_dir) and LOCK_FILE in atomic.listdir(run_dir)
        if not atomic.isdir(run_dir) or (atomic.listdir(run_dir) and not being_created):
            raise TflmError(f"{run_dir} exists and is not a tflm run directory")


def read_config(run_dir):
    """The config a run was created with, checked as any config is (a damaged file is an error)."""
    path = config_path(run_dir)
    return Config.from_dict(read_yaml(path), origin=path, saved=True)


def reservation_path(run_dir):
    """Where a new local run directory is assembled before it is renamed into place:
    PARENT/.tflm-new-NAME, one name per run directory, so that two trainers starting the same new
    run directory meet there."""
    name = os.path.basename(os.path.abspath(run_dir))
    if len(RESERVATION_PREFIX + name) > 255:  # the longest file name most filesystems take
        name = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
    return os.path.join(atomic.parent_of(run_dir), RESERVATION_PREFIX + name)


def reserve(run_dir):
    """Claim a new run directory for this process before anything is prepared for it; returns
    False if it became a run directory meanwhile (lock it as an existing one then).

    Locally the claim is its reservation directory (`reservation_path`), made exclusively and
    holding this process's lock: a second trainer stops there naming the holder, and the
    reservation of a start that was killed is swept. On other filesystems (no atomic rename) the
    run directory itself is made and locked first. Until `create` renames it into place, SIGTERM
    removes the reservation before ending the process, as an exception or Ctrl-C does (through
    `release_lock`)."""
    if not atomic.is_local(run_dir):
        atomic.makedirs(run_dir)
        acquire_lock(run_dir)
        _reserved[run_dir] = run_dir
    else:
        _make_reservation(run_dir)
    if is_run_dir(run_dir):  # created by a trainer that has finished meanwhile
        release_lock(run_dir)
        return False
    _remove_on_sigterm(run_dir)
    return True


def _make_reservation(run_dir):
    """Make `reservation_path(run_dir)` and take the lock in it; one that a start which was
    stopped left behind is taken over (its lock is stale) and emptied."""
    staging = reservation_path(run_dir)
    with _reservations_locked(os.path.dirname(staging), run_dir):
        sweep_stale_reservations(os.path.dirname(staging))
        for _ in range(10):
            try:
                os.makedirs(staging, exist_ok=True)
            except OSError as error:
                raise TflmError(f"cannot create run directory {run_dir}: {error.strerror}") from None
            try:
                acquire_lock(run_dir, lock_dir=staging)
                break
            except TflmError:
                if os.path.isdir(staging):
                    raise
                # renamed into place by the trainer that held it, just now: it is a run directory
        else:
            raise TflmError(f"cannot reserve {run_dir}: other processes keep creating {staging}")
    _reserved[run_dir] = staging
    leftovers = [name for name in os.listdir(staging) if name != LOCK_FILE]
    if leftovers:
        print(f"tflm: warning: removing what a start that was stopped left in {staging}", file=sys.stderr)
    for name in leftovers:
        path = os.path.join(staging, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


@contextlib.contextmanager
def _reservations_locked(parent, run_dir):
    """Hold an exclusive flock on the directory `parent` while a start sweeps or takes over the
    reservations in it: between reading a stale lock and replacing it, no other start may take the
    same reservation over (it would lose what it prepares there)."""
    try:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(parent, os.O_RDONLY)
    except OSError as error:
        raise TflmError(f"cannot create run directory {run_dir}: {parent}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def sweep_stale_reservations(parent):
    """Remove the reservations in `parent` whose trainer on this host is gone: what starts that
    were killed left (a start that fails or is stopped removes its own), whatever run directory
    they were for. Call it under `_reservations_locked(parent)`."""
    for name in atomic.listdir(parent):
        staging = os.path.join(parent, name)
        holder = read_lock(lock_path(staging)) if name.startswith(RESERVATION_PREFIX) else None
        if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            continue  # not a reservation, or one this host cannot tell is stale at once
        if process_alive(holder["pid"], holder.get("process_start")):
            continue
        remove_lock(lock_path(staging))
        if not create_exclusively(lock_path(staging)):
            continue  # taken over by another start just now
        print(f"tflm: warning: removing what a start that was stopped left: {staging}", file=sys.stderr)
        shutil.rmtree(staging, ignore_errors=True)


def _remove_on_sigterm(run_dir):
    """Until the reservation ends, SIGTERM removes it, then ends the process as before."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.SIG_DFL:
        return  # a handler of the caller's own may not end the process: it and release_lock clean up

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        _end_reservation(run_dir, remove=True)
        signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_restore[run_dir] = previous


def _end_reservation(run_dir, remove):
    """Stop treating `run_dir` as being created by this process; `remove`: delete what it assembled."""
    staging = _reserved.pop(run_dir, None)
    previous = _sigterm_restore.pop(run_dir, None)
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
    if not remove or staging is None:
        return
    if staging != run_dir:
        forget(lock_path(staging))
        shutil.rmtree(staging, ignore_errors=True)
    elif (read_lock(lock_path(run_dir)) or {}).get("owner") == OWNER:  # another filesystem: made in place
        release(lock_path(run_dir))
        with contextlib.suppress(Exception):
            if not is_run_dir(run_dir):  # what this start made (a store prepared in place): the next begins afresh
                atomic.gfile().rmtree(run_dir)


def create(run_dir, config, tokenizer, store_dir=None, extra_files=None):
    """Create `run_dir` with its config, tokenizer, this process's lock, `extra_files` ({name:
    text}, e.g. labels.json) and, if given, the token store prepared for it (moved in as
    RUN_DIR/store unless it was prepared there): atomically on a local filesystem, assembled in
    its reservation (`reserve`, taken here unless it was); on others in place, lock first and
    config.yaml (which makes it a run directory) last."""
    extra_files = extra_files or {}
    if run_dir not in _reserved and not reserve(run_dir):
        raise TflmError(f"{run_dir} was created by another process meanwhile; use another --run-dir")
    staging = _reserved[run_dir]
    try:
        if staging == run_dir:  # another filesystem: written in place
            tokenizer.save(run_dir)
            for name, text in extra_files.items():
                write_text(os.path.join(run_dir, name), text)
            if store_dir and store_dir != os.path.join(run_dir, "store"):
                atomic.rename(store_dir, os.path.join(run_dir, "store"))
            write_text(config_path(run_dir), dump(config))
            _end_reservation(run_dir, remove=False)
            return
        write_text(config_path(staging), dump(config))
        tokenizer.save(staging)
        for name, text in extra_files.items():
            write_text(os.path.join(staging, name), text)
        if store_dir and store_dir != os.path.join(staging, "store"):
            os.rename(store_dir, os.path.join(staging, "store"))
        if os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # an empty directory the user made for the run
        with moving(staging, run_dir):  # the lock moves with the directory: refreshed at its new path
            try:
                os.rename(staging, run_dir)
            except OSError:
                raise TflmError(f"{run_dir} was created by another process meanwhile; use another --run-dir") from None
        _end_reservation(run_dir, remove=False)
    except BaseException:
        moved_in = staging != run_dir and os.path.isdir(os.path.join(staging, "store"))
        if moved_in and store_dir and not store_dir.startswith(staging + os.sep):
            os.rename(os.path.join(staging, "store"), store_dir)  # a store prepared elsewhere outlives a failure
        _end_reservation(run_dir, remove=True)
        raise


def replace_config(run_dir, config, tokenizer=None, extra_files=None):
    """Rewrite a run's config (resuming: only steps and intervals may differ), and its vocabulary
    and `extra_files` when it has not trained yet."""
    write_text(config_path(run_dir), dump(config))
    if tokenizer is not None:
        tokenizer.save(run_dir)
    for name, text in (extra_files or {}).items():
        write_text(os.path.join(run_dir, name), text)


def move_aside(run_dir):
    """`--restart`: rename an existing run directory to RUN_DIR.replaced-<time> (without this
    process's lock); returns the new name."""
    target = f"{run_dir.rstrip('/')}.replaced-{utc_stamp()}"
    with moving(run_dir):
        atomic.rename(run_dir, target)
    release(lock_path(target))
    return target


def load_tokenizer(run_dir):
    """The tokenizer a run was trained with."""
    return tokenizers.load_tokenizer(run_dir)


# --- history -------------------------------------------------------------------------------

def read_history(run_dir):
    """The evaluation records of a run, oldest first. A partial last line (a crash while
    appending) is left out; any other malformed line is a TflmError naming file and line."""
    return _parse_history(history_path(run_dir))[0]


def _parse_history(path):
    """(records, whether the file needs rewriting: its last line has no newline)."""
    if not atomic.exists(path):
        return [], False
    lines = atomic.read_bytes(path).split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete append does
    records = [_parse_record(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if tail.strip():
        try:
            records.append(_parse_record(path, len(lines) + 1, tail))
        except TflmError:
            pass  # the partial line of an interrupted append
    return records, bool(tail)


def _parse_record(path, number, line):
    """The history record on line `number`; a TflmError unless it is a JSON object with an integer 'step'."""
    try:
        record = json_object(line)
    except BadLine:
        record = {}
    if not isinstance(record.get("step"), int):
        raise TflmError(f"{path}:{number}: not a history record (a JSON object with a 'step'); "
                        "fix or remove that line")
    return record


def repair_history(run_dir, last_step):
    """Keep the records up to `last_step` (the checkpoint a run resumes from) and drop a partial
    last line; returns the kept records. Says what it dropped."""
    path = history_path(run_dir)
    records, unterminated = _parse_history(path)
    kept = [r for r in records if r["step"] <= last_step]
    if len(kept) == len(records) and not unterminated:
        return kept
    if len(kept) != len(records):
        print(f"tflm: warning: {path}: dropped {len(records) - len(kept)} record(s) after step {last_step}, "
              "the checkpoint training resumes from", file=sys.stderr)
    elif unterminated:
        print(f"tflm: warning: {path}: repaired its last line (a crash while writing it)", file=sys.stderr)
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_history(run_dir, record):
    """Append one evaluation record (every key the task reports), flushed to disk; a TflmError if
    this process lost its lock or the disk is full."""
    check_still_locked(run_dir)
    try:
        atomic.append_line(history_path(run_dir), json.dumps(record))
    except OSError as error:  # a full disk; a partial line is repaired on resume
        raise TflmError(f"cannot write {history_path(run_dir)}: {error.strerror}; the checkpoints are kept: "
                        "free some space and resume") from None


# --- writing while locked -------------------------------------------------------------------

_reserved = {}  # {run directory: where this process is assembling it (see `reserve`)}
_sigterm_restore = {}  # {run directory: the SIGTERM handler to restore when its reservation ends}
_write_checks = {}  # run_dir -> checks that must pass before the next history record or checkpoint


def check_before_writing(run_dir, check):
    """Make the next `check_still_locked(run_dir)` call `check()` first (e.g. the token store's
    checksums, verified while training resumes): it raises if nothing more may be written."""
    _write_checks.setdefault(run_dir, []).append(check)


def check_still_locked(run_dir):
    """`check_held` for the lock of `run_dir` if this process holds it (the chief, before it
    appends history or saves a checkpoint), after the checks `check_before_writing` added."""
    checks = _write_checks.get(run_dir, [])
    while checks:
        checks[0]()
        checks.pop(0)
    check_if_held(lock_path(run_dir))


def release_lock(run_dir):
    """Remove the lock if this process holds it, and what this process assembled of `run_dir`
    if it was still creating it (see `reserve`)."""
    _end_reservation(run_dir, remove=True)
    release(lock_path(run_dir))
