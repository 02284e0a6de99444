"""Typed dataclass fields checked as they are set: the constraints an `Annotated` field type carries
(`OneOf` its choices, `Range` its bounds), `field_types` reading them off a dataclass, `convert`
turning a YAML value into the field's type within its constraint (or a one-line TflmError naming
the key), and `shown`, the short repr that error messages quote. tflm.config declares its sections
with them; nothing here knows the sections.
"""

import dataclasses
import functools
import math
import reprlib
import typing
from typing import Annotated

from tflm.errors import TflmError

SHOWN_CHARS = 100  # how much of a value an error message repeats


def shown(value):
    """repr(value) cut to about SHOWN_CHARS characters without expanding the rest of it, so an error
    message stays one short line however large or deep the value."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 3, 8, 8
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = SHOWN_CHARS


@dataclasses.dataclass(frozen=True)
class OneOf:
    """The value must be one of these."""

    choices: tuple

    def __init__(self, *choices):
        object.__setattr__(self, "choices", choices)

    def problem(self, value):
        """What is wrong with `value` (a phrase for after the key's name), or None."""
        return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {shown(value)}"


@dataclasses.dataclass(frozen=True)
class Range:
    """low <= value <= high (or low < value when `open_low`); floats must also be finite."""

    low: float
    high: float = math.inf
    open_low: bool = False

    def problem(self, value):
        """What is wrong with `value` (a phrase for after the key's name), or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if value < self.low or (self.open_low and value == self.low):
            if self.low == 0:
                return f"must be positive, got {value}" if self.open_low else f"must not be negative, got {value}"
            if self.low == 1 and isinstance(value, int):
                return f"must be positive, got {value}"
            return f"must be {'greater than' if self.open_low else 'at least'} {self.low}, got {value}"
        if value > self.high:
            return f"must be at most {self.high}, got {value}"
        return None


PATHS = tuple[str, ...]  # a field of paths: a list of strings in YAML, or one string for one path


@functools.cache
def field_types(cls):
    """{field name: (base type, constraint or None)} of a section class."""
    hints = typing.get_type_hints(cls, include_extras=True)
    result = {}
    for name, hint in hints.items():
        constraint = None
        if typing.get_origin(hint) is Annotated:
            hint, constraint = typing.get_args(hint)[:2]
        result[name] = (hint, constraint)
    return result


def convert(key, value, kind, constraint):
    """`value` as type `kind` within `constraint`, or a TflmError naming `key`."""
    value = _convert_type(key, value, kind)
    problem = constraint.problem(value) if constraint else None
    if problem:
        raise TflmError(f"{key} {problem}")
    return value


def _convert_type(key, value, kind):
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-3" as a string
            except ValueError:
                pass
    if kind is str and isinstance(value, str):
        return value
    if kind == PATHS:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    name = "list of strings" if kind == PATHS else kind.__name__
    raise TflmError(f"{key} must be {name}, got {shown(value)}")
