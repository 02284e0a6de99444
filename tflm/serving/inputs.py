"""The texts scoring, decoding and classifying are given, checked before any model runs: from the
command line and a file or stdin (`read_texts`, one text per line), or from Python (`check_strings`:
a list of valid UTF-8 strings, never a lone string taken for a list of characters).
"""

import sys

from tflm.errors import TflmError


def read_texts(texts, path):
    """The texts given on a command line, then the lines of `path` ("-" = stdin), if any."""
    texts = list(texts)
    if path:
        texts.extend(read_lines(path))
    if not texts:
        raise TflmError("give at least one text (arguments, or --file PATH with one text per line)")
    return texts


def read_lines(path):
    """The lines of UTF-8 file `path` ("-" = stdin), split at "\n" only, less a CRLF's "\r"."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        lines = data.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise TflmError(f"cannot read {path}: {error}") from None
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def check_strings(values, what):
    """`values` as a list of str; a TflmError for a lone str (a common slip), a non-str, or a str
    that is not valid UTF-8 (such as command-line bytes decoded with surrogateescape)."""
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise TflmError(f"{what} must be a list of strings, got {type(values).__name__}")
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value if len(value) <= 60 else value[:60] + "..."
            raise TflmError(f"{what} must be valid UTF-8; {shown!r} is not") from None
    return list(values)
