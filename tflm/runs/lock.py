"""The lock of a run directory: which process trains it, kept alive while it does.

    RUN_DIR/lock   {"owner", "pid", "host", "process_start", "since", "refreshed", "command"}

A trainer takes the lock exclusively (O_EXCL locally; write and read back elsewhere) and a thread
rewrites it every LOCK_REFRESH_S. A lock whose process is gone (same host) or that went unrefreshed
for LOCK_LEASE_S (another host) is stale and taken over. The holder checks its lock at every
refresh and before every write (tflm.runs.run_dir.check_still_locked): a deleted lock is taken again, a
lock another trainer took ends this one (exit 2), so two trainers never write one run directory.
"""

import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
import threading
import time

from tflm import atomic
from tflm.errors import TflmError
from tflm.quiet import flush_native_logs

LOCK_FILE = "lock"
LOCK_REFRESH_S = 10  # a trainer touches its lock this often
LOCK_LEASE_S = 60  # a lock from another host untouched this long belongs to a trainer that is gone


def lock_path(directory):
    """The lock file of a run directory (or of its reservation)."""
    return os.path.join(directory, LOCK_FILE)


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
        return not process_alive(holder["pid"], holder.get("process_start"))
    deadline = time.monotonic() + LOCK_LEASE_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read_lock(path)
        if not now or now.get("refreshed") != holder.get("refreshed"):
            return not now  # released (gone), or refreshed (alive)
    return True


def process_alive(pid, started):
    """Whether process `pid`, started at `started` (process_start), still runs."""
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


def acquire_lock(run_dir, lock_dir=None):
    """Take the run directory's lock (in `lock_dir`: its reservation, see tflm.runs.run_dir.reserve)
    for this process, clearing a stale one; a TflmError naming the holder if another live trainer has it.
    The lock is refreshed while held."""
    path = lock_path(lock_dir or run_dir)
    for _ in range(40):
        if create_exclusively(path):
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
            raise TflmError(in_use_message(run_dir, holder))
        print(f"tflm: warning: removing the stale lock of a trainer that is gone: {path}", file=sys.stderr)
        remove_lock(path)
    raise TflmError(f"cannot lock {run_dir}: another process keeps taking {path}")


def in_use_message(run_dir, holder):
    """The error when another live trainer holds (or is creating) `run_dir`."""
    return (f"{run_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}; "
            "wait for it to finish, or stop that process: a lock whose trainer is gone is taken over at the next "
            f"start (at once on the same host, after {LOCK_LEASE_S}s without a refresh from another host)")


def create_exclusively(path):
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


_held_locks = set()  # the lock files this process holds, refreshed by one thread
_guard = threading.RLock()  # over _held_locks and the renames that move a held lock
_refresher = None


def _refresh_while_held(path):
    """Rewrite `path` every LOCK_REFRESH_S until it is released, so other hosts see it is alive."""
    global _refresher
    with _guard:
        _held_locks.add(path)
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(target=_refresh_locks, name="tflm-lock-refresh", daemon=True)
            _refresher.start()


def _refresh_locks():
    """Refresh every held lock each LOCK_REFRESH_S, until none is held."""
    while True:
        time.sleep(LOCK_REFRESH_S)
        if not _refresh_held_locks():
            return


def _refresh_held_locks():
    """Rewrite each held lock; whether any is held (if not, the refresh thread ends). A lock
    another trainer took (after someone deleted it) ends this process at once, with one line and
    exit code 2: two trainers never write one run directory."""
    global _refresher
    with _guard:
        if not _held_locks:
            _refresher = None
            return False
        for path in list(_held_locks):
            try:
                check_held(path)
            except TflmError as error:
                _exit_lost(error)
                continue
            except Exception:  # a passing error of a remote filesystem: checked again at the next refresh
                continue
            with contextlib.suppress(Exception):
                atomic.write_text(path, json.dumps(lock_record()))
        return True


def check_held(path):
    """Make sure this process still holds the lock at `path`: take it again if it was deleted
    (with a warning); a TflmError if another trainer holds it now, or its directory is gone."""
    holder = read_lock(path)
    if holder is None:  # being written by another process right now, or a read that failed
        time.sleep(0.25)
        holder = read_lock(path)
    if holder is None or holder.get("owner") == OWNER:
        return  # still unreadable (a passing filesystem error): checked again at the next refresh
    run_dir = os.path.dirname(path)
    if not atomic.isdir(run_dir):
        raise TflmError(f"{run_dir} was moved or deleted while this trainer wrote it; stopped")
    if holder == {} and create_exclusively(path):
        print(f"tflm: warning: {path} was deleted while this trainer held it; took it again", file=sys.stderr,
              flush=True)
        return
    holder = read_lock(path) or {}
    raise TflmError(f"{run_dir}: its lock was deleted while this trainer held it, and pid {holder.get('pid')} on "
                    f"{holder.get('host')} took it; stopped so that two trainers never write one run directory")


def check_if_held(path):
    """`check_held(path)` if this process holds that lock; nothing otherwise."""
    with _guard:
        if path in _held_locks:
            check_held(path)


def forget(path):
    """Stop refreshing (and checking) the lock at `path`, leaving the file as it is."""
    with _guard:
        _held_locks.discard(path)


@contextlib.contextmanager
def moving(old_dir, new_dir=None):
    """Around the rename of a directory holding this process's lock: the refresh thread waits,
    then refreshes the lock at its new place (or forgets it, for `new_dir` None)."""
    with _guard:
        yield
        if lock_path(old_dir) in _held_locks:
            _held_locks.discard(lock_path(old_dir))
            if new_dir is not None:
                _held_locks.add(lock_path(new_dir))


def release(path):
    """Stop refreshing the lock at `path` and remove it if this process holds it."""
    forget(path)
    if (read_lock(path) or {}).get("owner") == OWNER:
        remove_lock(path)


def _exit_lost(error):
    """End the process at once, from the refresh thread: the main thread may be in a long step."""
    flush_native_logs()
    print(f"tflm: error: {error}", file=sys.stderr, flush=True)
    os._exit(TflmError.exit_code)


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


def remove_lock(path):
    """Delete the lock file at `path` (whoever holds it), if there is one."""
    if atomic.is_local(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    elif atomic.exists(path):
        atomic.gfile().remove(path)
