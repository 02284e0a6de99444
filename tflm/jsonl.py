"""JSON Lines as tflm reads them (a run's history.jsonl, labelled .jsonl files): one JSON object
per line, blank lines skipped, a bad line reported by its number. Each caller words its own error.

Lines end at "\\n" only (a CRLF's "\\r" is JSON whitespace), so a text holding U+2028 or another
character str.splitlines() would split at stays one record.
"""

import json


class BadLine(ValueError):
    """A line that is not a JSON object: its `number` (from 1), its text (`line`) and why (`reason`)."""

    def __init__(self, number, line, reason):
        super().__init__(f"line {number}: {reason}")
        self.number, self.line, self.reason = number, line, reason


def json_object(line, number=1):
    """The JSON object on one line (str or bytes); BadLine if it is not valid JSON or not an object."""
    try:
        value = json.loads(line)
    except ValueError as error:  # JSONDecodeError, invalid UTF-8, an integer of more than 4300 digits
        raise BadLine(number, line, f"not valid JSON ({getattr(error, 'msg', error)})") from None
    if not isinstance(value, dict):
        raise BadLine(number, line, f"expected a JSON object, found {type(value).__name__}")
    return value


def json_objects(lines, start=1):
    """[(line number, object)] of the non-blank lines of `lines` (a str or bytes to split at "\\n",
    or a list of lines, numbered from `start`); BadLine at the first that is not a JSON object."""
    if isinstance(lines, (str, bytes)):
        lines = lines.split("\n" if isinstance(lines, str) else b"\n")
    return [(number, json_object(line, number)) for number, line in enumerate(lines, start=start) if line.strip()]
