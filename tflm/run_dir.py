"""The run directory: a ledger of one training run that no code path silently destroys.

    RUN_DIR/config.yaml      the resolved config this run trains with
    RUN_DIR/vocab.json       the tokenizer (and any model file it names: tflm.tokenizer)
    RUN_DIR/store/           the token store, unless data.store names a shared one (tflm.store)
    RUN_DIR/checkpoints/     tf.train.CheckpointManager files (model, optimizer, step)
    RUN_DIR/history.jsonl    one JSON object per evaluation
    RUN_DIR/labels.json      a classifier's label names, in id order (tflm.labelled)
    RUN_DIR/init_from.json   the run it started from, if any (tflm.init_from)
    RUN_DIR/tensorboard/     event files
    RUN_DIR/lock             held by the trainer writing here (pid, host, start time)

A new run directory appears whole or not at all: it is assembled under a temporary name, lock
included, and renamed into place. Only the chief writes here, and only while it holds the lock.
An existing directory is resumed, never restarted: its damaged parts are reported or repaired
(tflm.checkpoint for checkpoints, `repair_history` here), and starting over takes `--restart`,
which moves the old directory aside rather than deleting it.
"""

import contextlib
import datetime
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time

from tflm import atomic
from tflm.atomic import staging_dir, write_text
from tflm.config import Config, dump, read_yaml
from tflm.errors import TflmError

HISTORY_KEYS = ("step", "tokens_seen", "elapsed_s", "loss", "accuracy", "val_loss", "val_accuracy",
                "val_perplexity", "bits_per_byte", "val_bits_per_byte", "tokens_per_sec")
CLASSIFY_HISTORY_KEYS = ("step", "examples_seen", "elapsed_s", "loss", "accuracy", "macro_f1", "val_loss",
                         "val_accuracy", "val_macro_f1", "val_confusion", "examples_per_sec")
LOCK_FILE = "lock"
LOCK_REFRESH_S = 10  # a trainer touches its lock this often
LOCK_LEASE_S = 60  # a lock from another host untouched this long belongs to a trainer that is gone


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


def lock_path(run_dir):
    """The lock file of a run."""
    return os.path.join(run_dir, LOCK_FILE)


def is_run_dir(run_dir):
    """Whether `run_dir` holds a tflm run."""
    return atomic.isfile(config_path(run_dir)) and atomic.isfile(vocab_path(run_dir))


def check_usable(run_dir):
    """Raise unless `run_dir` is absent, empty, or a tflm run directory."""
    if atomic.exists(run_dir) and not is_run_dir(run_dir):
        if not atomic.isdir(run_dir) or atomic.listdir(run_dir):
            raise TflmError(f"{run_dir} exists and is not a tflm run directory")


def read_config(run_dir):
    """The config a run was created with, checked as any config is (a damaged file is an error)."""
    path = config_path(run_dir)
    return Config.from_dict(read_yaml(path), origin=path, saved=True)


def create(run_dir, config, tokenizer, store_dir=None, extra_files=None):
    """Create `run_dir` with its config, tokenizer, this process's lock, `extra_files` ({name:
    text}, e.g. labels.json) and, if given, the token store prepared for it (moved in as
    RUN_DIR/store): atomically on a local filesystem; on others in place, lock first and
    config.yaml (which makes it a run directory) last."""
    extra_files = extra_files or {}
    if not atomic.is_local(run_dir):
        atomic.makedirs(run_dir)
        acquire_lock(run_dir)
        tokenizer.save(run_dir)
        for name, text in extra_files.items():
            write_text(os.path.join(run_dir, name), text)
        if store_dir:
            atomic.rename(store_dir, os.path.join(run_dir, "store"))
        write_text(config_path(run_dir), dump(config))
        return
    staging = staging_dir(atomic.parent_of(run_dir), ".tflm-new-", f"create run directory {run_dir}")
    try:
        write_text(config_path(staging), dump(config))
        tokenizer.save(staging)
        for name, text in extra_files.items():
            write_text(os.path.join(staging, name), text)
        write_text(lock_path(staging), json.dumps(lock_record()))
        if store_dir:
            os.rename(store_dir, os.path.join(staging, "store"))
        if os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # an empty directory the user made for the run
        try:
            os.rename(staging, run_dir)
        except OSError:
            raise TflmError(f"{run_dir} was created by another process meanwhile; use another --run-dir") from None
        _refresh_while_held(lock_path(run_dir))
    except BaseException:
        if store_dir and os.path.isdir(os.path.join(staging, "store")):
            os.rename(os.path.join(staging, "store"), store_dir)  # the prepared store outlives a failed creation
        shutil.rmtree(staging, ignore_errors=True)
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
    """`--restart`: rename an existing run directory to RUN_DIR.replaced-<time>; returns the new name."""
    target = f"{run_dir.rstrip('/')}.replaced-{utc_stamp()}"
    atomic.rename(run_dir, target)
    return target


def load_tokenizer(run_dir):
    """The tokenizer a run was trained with."""
    from tflm.tokenizer import load_tokenizer

    return load_tokenizer(run_dir)


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
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
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
    """Append one evaluation record, flushed to disk."""
    keys = CLASSIFY_HISTORY_KEYS if "examples_seen" in record else HISTORY_KEYS
    atomic.append_line(history_path(run_dir), json.dumps({k: record[k] for k in keys}))


# --- the lock --------------------------------------------------------------------------------

OWNER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"  # this process, as a lock names it


def lock_record():
    """Who holds a lock: this process, and when it last said it was alive."""
    return {"owner": OWNER, "pid": os.getpid(), "host": socket.gethostname(),
            "process_start": process_start(os.getpid()),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "refreshed": time.time(), "command": " ".join(sys.argv)}


def process_start(pid):
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid apart; None
    where /proc is not there."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _proc_stat(pid):
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        int(fields[19])
        return fields
    except (OSError, ValueError, IndexError):
        return None


def holder_is_gone(holder, path):
    """Whether the trainer in a lock record has stopped: on this host, its process is gone; on
    another, it stopped refreshing the lock (it does every LOCK_REFRESH_S): this waits up to
    LOCK_LEASE_S to see a refresh."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _process_alive(holder["pid"], holder.get("process_start"))
    deadline = time.monotonic() + LOCK_LEASE_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read_lock(path)
        if not now or now.get("refreshed") != holder.get("refreshed"):
            return not now  # released (gone), or refreshed (alive)
    return True


def _process_alive(pid, started):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: the pid exists, assume it is the holder
    return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)


def acquire_lock(run_dir):
    """Take the run directory's lock for this process, clearing a stale one; a TflmError naming
    the holder if another live trainer has it. The lock is refreshed while held."""
    path = lock_path(run_dir)
    for _ in range(40):
        if _create_exclusively(path):
            _refresh_while_held(path)
            return
        holder = read_lock(path)
        if holder == {}:
            continue  # released meanwhile
        if holder is None:
            time.sleep(0.25)  # being written right now, or a crash while writing it
            if read_lock(path) is not None:
                continue
        elif not holder_is_gone(holder, path):
            raise TflmError(
                f"{run_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')}; wait for it to finish, or delete {path} if that process is gone")
        print(f"tflm: warning: removing the stale lock of a trainer that is gone: {path}", file=sys.stderr)
        _remove(path)
    raise TflmError(f"cannot lock {run_dir}: another process keeps taking {path}")


def _create_exclusively(path):
    """Write this process's lock at `path` unless one is there; whether it did. Locally O_EXCL
    makes that atomic; elsewhere the write is read back, and the last writer wins."""
    if not atomic.is_local(path):
        if atomic.exists(path):
            return False
        atomic.write_text(path, json.dumps(lock_record()))
        time.sleep(0.5)
        return (read_lock(path) or {}).get("owner") == OWNER
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as error:
        raise TflmError(f"cannot lock {os.path.dirname(path)}: {error.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(lock_record(), f)
    return True


_held_locks = set()


def _refresh_while_held(path):
    """Rewrite `path` every LOCK_REFRESH_S until it is released, so other hosts see it is alive."""
    _held_locks.add(path)
    if len(_held_locks) == 1:
        threading.Thread(target=_refresh_locks, name="tflm-lock-refresh", daemon=True).start()


def _refresh_locks():
    while _held_locks:
        time.sleep(LOCK_REFRESH_S)
        for path in list(_held_locks):
            if (read_lock(path) or {}).get("owner") == OWNER:
                with contextlib.suppress(Exception):
                    atomic.write_text(path, json.dumps(lock_record()))


def read_lock(path):
    """The record in a lock file; {} if there is none, None if it is empty or unreadable (a
    crash while writing it)."""
    try:
        holder = json.loads(atomic.read_bytes(path))
        return holder if isinstance(holder, dict) else None
    except FileNotFoundError:
        return {}
    except ValueError:
        return None
    except Exception as error:  # tf.errors from a remote filesystem
        return {} if type(error).__name__ == "NotFoundError" else None


def _remove(path):
    if atomic.is_local(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    elif atomic.exists(path):
        atomic.gfile().remove(path)


def release_lock(run_dir):
    """Remove the lock if this process holds it."""
    path = lock_path(run_dir)
    _held_locks.discard(path)
    if (read_lock(path) or {}).get("owner") == OWNER:
        _remove(path)
