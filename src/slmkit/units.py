"""Numbers with a unit, checked where an option is declared.

Each parser takes what the user typed (a string, or a number from a recipe) and
returns the value or raises ``ValueError`` saying what is allowed; the CLI
declares them on its options (``typer.Option(..., parser=units.fraction)``) and
config classes use the same ones, so ``--sparsity 2`` and ``sparsity: 2`` in a
recipe fail alike, before any work, with the user's own spelling of the option.
Non-finite numbers (``nan``, ``inf``) are refused everywhere.
"""
from __future__ import annotations

import math
import re

from .errors import SlmError, help_hint

_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$", re.I)


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got '{value}'") from None
    if not math.isfinite(x):
        raise ValueError(f"must be a finite number, got {value}")
    return x


def finite(value) -> float:
    """Any finite number."""
    return _number(value)


def positive(value) -> float:
    """A finite number above 0."""
    x = _number(value)
    if x <= 0:
        raise ValueError(f"must be above 0, got {value}")
    return x


def non_negative(value) -> float:
    """A finite number, 0 or more."""
    x = _number(value)
    if x < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return x


def fraction(value) -> float:
    """A fraction strictly between 0 and 1 (a share of weights, of words)."""
    x = _number(value)
    if not 0 < x < 1:
        raise ValueError(f"must be a fraction between 0 and 1 (exclusive), e.g. 0.5; got {value}")
    return x


def probability(value) -> float:
    """A number in [0, 1] (top-p, a mixing weight)."""
    x = _number(value)
    if not 0 <= x <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return x


def count(value) -> int:
    """A whole count, optionally with a suffix: ``90000000``, ``90M``, ``1.2B``, ``5e7``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count, got {value}")
    if isinstance(value, int):
        n = value
    else:
        m = _COUNT.match(str(value))
        if not m:
            raise ValueError(f"'{value}' is not a count; write e.g. 90M or 90000000")
        x = float(m[1]) * _SUFFIX.get(m[2].upper(), 1)
        if not math.isfinite(x) or x != int(x):
            raise ValueError(f"'{value}' is not a whole count")
        n = int(x)
    if n < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return n


def fraction_or_count(value) -> float | int:
    """A fraction in (0, 1) or a whole count (``0.7``, ``90M``, ``5e7``); ``2.0`` is neither."""
    if isinstance(value, str) and value.strip()[-1:].upper() in _SUFFIX:
        return count(value)
    x = _number(value)
    if 0 < x < 1:
        return x
    text = str(value).strip()
    whole_count = isinstance(value, int) or (isinstance(value, str) and (
        text.isdigit() or text[-1:].upper() in _SUFFIX or "e" in text.lower()))
    if x >= 1 and whole_count:
        return count(value)
    raise ValueError(f"{value} is neither a fraction in (0, 1) nor a whole count; write e.g. "
                     "0.7 or 90M")


def option(parse, flag: str, value):
    """``parse(value)`` with a ValueError or SlmError turned into one naming ``flag``."""
    try:
        return parse(value)
    except SlmError as exc:
        if exc.what.startswith(flag):
            raise
        raise SlmError(f"{flag}: {exc.what}", exc.fix) from None
    except ValueError as exc:
        raise SlmError(f"{flag}: {exc}", help_hint()) from None
