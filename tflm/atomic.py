"""Writing files and directories so readers never see them half-written."""

import json
import os
import tempfile

from tflm.errors import TflmError


def write_text(path, text):
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    """`write_text` of `obj` as indented JSON (non-ASCII kept readable)."""
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=1))


def staging_dir(parent, prefix, purpose):
    """A new hidden directory in `parent` (created if needed) to fill and then rename into
    place; a TflmError saying what could not be done (`purpose`) if `parent` is not writable."""
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as error:
        raise TflmError(f"cannot {purpose}: {error.strerror}") from None
