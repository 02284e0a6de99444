"""Files and directories, local or on any filesystem TensorFlow has (gs://, hdfs://, ram://...),
written so readers never see them half-written.

Locally a file is written beside its place and renamed into it (atomic on POSIX). On other
filesystems, where a rename is a copy (object stores have no atomic rename, and none at all for
directories), a file is written in one piece where it belongs: an object store makes a new
object visible only once it is complete. Directories that must appear whole are therefore
assembled under a temporary name and renamed only locally; elsewhere their parts are written in
place, the file that marks them complete last (config.yaml of a run, index.json of a token
store, saved_model.pb of an export).
"""

import json
import os
import secrets

from tflm.errors import TflmError


def is_local(path):
    """Whether `path` is on the local filesystem (no scheme such as gs:// or ram://)."""
    return "://" not in str(path)


def gfile():
    """tf.io.gfile, imported on first use."""
    import tensorflow as tf

    return tf.io.gfile


def exists(path):
    """Whether a file or directory exists at `path`."""
    return os.path.exists(path) if is_local(path) else gfile().exists(path)


def isfile(path):
    """Whether a file (not a directory) exists at `path`."""
    return os.path.isfile(path) if is_local(path) else gfile().exists(path) and not gfile().isdir(path)


def isdir(path):
    """Whether a directory exists at `path`."""
    return os.path.isdir(path) if is_local(path) else gfile().isdir(path)


def listdir(path):
    """Names in a directory ([] if it does not exist)."""
    if is_local(path):
        return os.listdir(path) if os.path.isdir(path) else []
    return [name.rstrip("/") for name in gfile().listdir(path)] if gfile().isdir(path) else []


def makedirs(path):
    """Create a directory and its parents if missing."""
    os.makedirs(path, exist_ok=True) if is_local(path) else gfile().makedirs(path)


def rename(source, target):
    """Rename a file or directory (atomic only locally); fails if `target` exists non-empty."""
    os.rename(source, target) if is_local(source) else gfile().rename(source, target, overwrite=False)


def read_bytes(path):
    """The bytes of a file."""
    if is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with gfile().GFile(path, "rb") as f:
        return f.read()


def write_bytes(path, data):
    """Write `data` to `path` so that no reader sees part of it (see the module docstring)."""
    if not is_local(path):
        if path.startswith("ram://") and gfile().exists(path):
            gfile().remove(path)  # TensorFlow's ram:// filesystem appends to an existing file
        with gfile().GFile(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path, text):
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    """`write_text` of `obj` as indented JSON (non-ASCII kept readable)."""
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=1))


def append_line(path, line):
    """Append one line to a file, flushed to disk locally."""
    if not is_local(path):
        with gfile().GFile(path, "a") as f:
            f.write(line + "\n")
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def staging_dir(parent, prefix, purpose):
    """A new directory in `parent` (created if needed) to fill and then rename into place, named
    `prefix` + random letters; a TflmError saying what could not be done (`purpose`) if
    `parent` is not writable."""
    try:
        if is_local(parent):
            os.makedirs(parent, exist_ok=True)
            return make_unique_dir(parent, prefix)
        path = f"{parent.rstrip('/')}/{prefix}{secrets.token_hex(4)}"
        gfile().makedirs(path)
        return path
    except OSError as error:
        raise TflmError(f"cannot {purpose}: {error.strerror}") from None
    except Exception as error:  # tf.errors.OpError from a remote filesystem
        raise TflmError(f"cannot {purpose}: {str(error).splitlines()[0]}") from None


def make_unique_dir(parent, prefix):
    """A new local directory `parent`/`prefix`+random letters. Unlike tempfile.mkdtemp (always
    0700) its mode honours the umask, as every directory tflm makes does: what it assembles is
    renamed into place for others (TF Serving, other users of a shared volume) to read."""
    while True:
        path = os.path.join(parent, f"{prefix}{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def in_memory(path):
    """Whether `path` is on TensorFlow's in-memory filesystem (ram://), which ends with the process."""
    return str(path).startswith("ram://")


def check_persistent(path, option):
    """Raise unless `path` outlives this process: the command line refuses ram:// (whatever a
    command writes there is gone when it exits); the Python API allows it."""
    if in_memory(path):
        raise TflmError(f"{option} {path}: ram:// is in this process's memory and is gone when the command "
                        "exits; give a local path or a persistent filesystem (gs://, hdfs://, ...)")


def parent_of(path):
    """The directory holding `path` (absolute for local paths)."""
    return os.path.dirname(os.path.abspath(path)) if is_local(path) else path.rstrip("/").rsplit("/", 1)[0]
