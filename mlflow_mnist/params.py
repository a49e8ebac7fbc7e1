"""Hyperparameters as plain data: the ``Params`` dict, the checks tasks build their validation from, and the
text forms users type (``--overrides``) and runs show (``kernel_size=(5, 5)``).

Nothing here knows any model: a task lists its hyperparameters and validates them with these helpers.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

Params = dict[str, Any]
#: ``--overrides``' text, or (Python callers) the dict itself.
Overrides = str | Mapping[str, Any]


class HyperparameterError(ValueError):
    """A hyperparameter value a task cannot use; the message names key, value and the allowed values."""


class StageError(ValueError):
    """An unknown stage, step, space, strategy or task, or malformed overrides; the message lists what is allowed."""


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise HyperparameterError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def check_number(key: str, value: Any, kind: type, low: float, high: float | None, high_open: bool = False) -> Any:
    """``value`` as ``kind`` (int or float) within [low, high] (or [low, high) with ``high_open``)."""
    try:
        number = kind(value)
        # 6.5 is no int; a whole number past float's 2**53 (99999999999999999999) is one, and no float equals it.
        if kind is int and not isinstance(value, (int, str)) and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise HyperparameterError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number):
        raise HyperparameterError(f"{key}={value!r} must be a finite number")
    too_high = high is not None and (number >= high if high_open else number > high)
    if number < low or too_high:
        bound = "" if high is None else (f" and below {high}" if high_open else f" and at most {high}")
        raise HyperparameterError(f"{key}={value!r} must be at least {low}{bound}")
    return number


# The pair forms a user types: "5", "5x5", "5,5" and "(5, 5)", spaces allowed around the numbers; anything more
# (a trailing "x", unbalanced or doubled parentheses) is a typo to refuse, not to read past.
_PAIR_TEXT = re.compile(r"\s*(?:(\d+)|(\d+)\s*[x,]\s*(\d+)|\(\s*(\d+)\s*,\s*(\d+)\s*\))\s*")


def as_pair(key: str, value: Any) -> tuple[int, int]:
    """(5, 5), [5, 5], 5, "5", "(5, 5)", "5,5", "5x5" -> (5, 5); a string of any other form is refused."""
    parts = value
    if isinstance(value, str):
        match = _PAIR_TEXT.fullmatch(value)
        numbers = [number for number in match.groups() if number is not None] if match else []
        parts = numbers * 2 if len(numbers) == 1 else numbers
    elif isinstance(value, int):
        parts = (value, value)
    try:
        pair = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise HyperparameterError(f"{key}={value!r} must be a pair of positive integers such as (3, 3)")
    return pair


def check_known(params: Params, known: Iterable[str], required: Iterable[str]) -> None:
    """Every key is one the task knows, and every required key is there."""
    known = tuple(known)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise HyperparameterError(f"unknown hyperparameter {unknown[0]!r}: known are {', '.join(known)}")
    missing = [key for key in required if key not in params]
    if missing:
        raise HyperparameterError(f"missing hyperparameter(s) {', '.join(missing)}")


def format_value(value: Any) -> str:
    """How a value reads in run names and params: pairs as ``(5, 5)``."""
    return f"({value[0]}, {value[1]})" if isinstance(value, tuple) and len(value) == 2 else str(value)


def json_value(value: Any) -> Any:
    """A value as JSON holds it (tuples become lists); :func:`from_json` reverses it."""
    return list(value) if isinstance(value, tuple) else value


def from_json(values: dict[str, Any]) -> Params:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


_SPLIT_OVERRIDES = re.compile(r",\s*(?=[A-Za-z_]\w*\s*=)")


def parse_value(text: str) -> Any:
    """``"10"`` -> 10, ``"0.1"`` -> 0.1, ``"(5,5)"`` / ``"5x5"`` -> (5, 5), anything else stays a string."""
    text = text.strip()
    if re.fullmatch(r"\d+\s*x\s*\d+", text):
        return tuple(int(part) for part in text.split("x"))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_overrides(text: Overrides | None, known: Iterable[str]) -> Params:
    """``"neurons_3=10,kernel_size=(5,5)"`` -> {"neurons_3": 10, "kernel_size": (5, 5)}; keys must be ``known``.
    Python callers may give the dict itself (its text values read as typed ones are)."""
    known = tuple(known)
    overrides: Params = {}
    if isinstance(text, Mapping):
        for key, value in text.items():
            if key not in known:
                raise HyperparameterError(f"unknown hyperparameter {key!r} in overrides: known are {', '.join(known)}")
            overrides[key] = parse_value(value) if isinstance(value, str) else value
        return overrides
    if text is not None and not isinstance(text, str):
        raise StageError(f"overrides={text!r} is neither text nor a dict: write e.g. '{known[0]}=10'")
    if not text or not text.strip():
        return overrides
    for item in _SPLIT_OVERRIDES.split(text.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise StageError(f"override {item!r} is not KEY=VALUE: write e.g. '{known[0]}=10'")
        if key not in known:
            raise HyperparameterError(f"unknown hyperparameter {key!r} in overrides: known are {', '.join(known)}")
        if key in overrides:
            raise StageError(f"override {key!r} is given twice ({text.strip()!r}): give each hyperparameter once")
        overrides[key] = parse_value(value)
    return overrides
