"""A persistent cache of XLA's compiled programs, so a resumed run does not compile them again.

TensorFlow keeps each compiled program in a file when TF_XLA_FLAGS holds
`--tf_xla_persistent_cache_directory=DIR`, and a later process that compiles the same program
(same function, shapes and HLO: a changed model or config is another entry, checked against the
program's HLO when loaded) loads it instead. The entries carry the compiling CPU's features
(TensorFlow warns that another CPU "could lead to execution errors such as SIGILL"), so the
directory is one per TensorFlow version and CPU: ~/.cache/tflm/xla/<key>, or $TFLM_COMPILE_CACHE/<key>;
TFLM_COMPILE_CACHE=off turns it off, and a TF_XLA_FLAGS that names a directory already wins.

Keys of entries include the traced function's name, numbered in tracing order, so the start of a
new run (which traces its data preparation first) fills entries that its resumptions do not use;
every resumption after the first, on every worker, loads them.
"""

import hashlib
import importlib.metadata
import os
import platform
import re

CACHE_ENV = "TFLM_COMPILE_CACHE"
FLAG = "--tf_xla_persistent_cache_directory"


def machine_key():
    """A short name for this TensorFlow version on this CPU model and instruction set."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = platform.processor()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    described = [tensorflow_version(), platform.machine(), model.group(1) if model else "",
                 " ".join(sorted(flags.group(1).split())) if flags else cpuinfo]
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]


def tensorflow_version():
    """The installed TensorFlow's version, read without importing it (whichever package provides
    it); None when no known package does."""
    for package in ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly"):
        try:
            return f"{package} {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cache_directory():
    """Where this machine's compiled programs are kept; None when the cache is off."""
    base = os.environ.get(CACHE_ENV, "")
    if base.lower() in ("off", "0", "false"):
        return None
    if tensorflow_version() is None:
        return None  # entries of two TensorFlow versions must not mix
    base = base or os.path.join(os.path.expanduser("~"), ".cache", "tflm", "xla")
    return os.path.join(base, machine_key())


def use_compile_cache():
    """Point TensorFlow's persistent XLA cache at `cache_directory()` (before TensorFlow compiles
    anything); returns the directory in use, or None."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    named = re.search(rf"{FLAG}=(\S+)", flags)
    if named:
        return named.group(1)
    directory = cache_directory()
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before
    os.environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={directory}".strip()
    return directory
