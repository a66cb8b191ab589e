"""One strict rule per type for settings that arrive as text: ``--model_args`` and policy parameters.

lm-eval turns ``k=v`` text into Python values by guessing (``true`` -> True, ``1`` -> 1, ``none`` -> None,
``0.5`` -> 0.5, anything else stays a string); Python callers pass real values. Both go through
:func:`coerce` for the field's declared type, so ``eotp=no`` or ``gen_length=12.5`` is an error naming the
argument and its valid values, never a guess that silently means something else. Recorded settings
(results files, sidecars, command lines) are compared through :func:`comparable`, which spells them one way.

Torch-free: the report (l2pd_eval/results) and the reproduction planner use it too.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from l2pd_eval.errors import ConfigError

#: The spellings a boolean accepts (any case); lm-eval may also hand over a real bool or the int 0/1.
TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")
BOOL_SPELLINGS = "true, false, 1, 0 (any case)"
INTEGER = re.compile(r"^[+-]?\d+$")  # what a whole number looks like as text


def comparable(value: Any) -> str | None:
    """A recorded setting spelt one way, so two records of it compare equal: lm-eval stores model_args
    typed (``False``, ``0.9``) where a sidecar or a command line holds text (``"false"``, ``"0.90"``).
    Booleans and the words true/false/none (any case) become lower-case words, numbers their float's
    ``repr``, other text is stripped; ``None`` (not recorded) stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    if text.lower() in ("true", "false", "none"):
        return text.lower()
    try:
        return repr(float(text))
    except ValueError:
        return text


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_WORDS or text in FALSE_WORDS:
            return text in TRUE_WORDS
    raise ConfigError(f"{name}={value!r} is not a boolean; valid values: {BOOL_SPELLINGS}")


def _parse_int(name: str, value: Any) -> int:
    """A whole number; an integral float counts (the stock CLI reads ``block_length=-32`` as -32.0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and INTEGER.match(value.strip()):
        return int(value)
    raise ConfigError(f"{name}={value!r} is not an integer")


def _parse_float(name: str, value: Any) -> float:
    """A finite number: ``nan``/``inf`` would decode garbage or pass every check."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{name}={value!r} is not a number")
    if not math.isfinite(number):
        raise ConfigError(f"{name}={value!r} is not a finite number; give a finite value")
    return number


def _parse_str(name: str, value: Any) -> str:
    # lm-eval reads `eot_ids=126081` or `revision=2` as numbers: their text is what was typed.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{name}={value!r} is not text")


def _parse_literal(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """A choice of words; a choice that contains true and false takes every boolean spelling too."""
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    if {"true", "false"} <= set(choices):
        try:
            return "true" if parse_bool(name, value) else "false"
        except ValueError:
            pass
    raise ConfigError(f"{name}={value!r}; valid choices: {', '.join(choices)}")


_SCALARS = {bool: parse_bool, int: _parse_int, float: _parse_float, str: _parse_str}


def coerce(name: str, value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float, str, a Literal of words, ``X | None``, ``int | str``)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(kind)):
            return None
        errors = []
        for option in options:  # in declared order: `int | str` keeps 4 an int and `auto` a string
            try:
                return coerce(name, value, option)
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        return _parse_literal(name, value, typing.get_args(kind))
    parse = _SCALARS.get(kind)
    return value if parse is None else parse(name, value)


def parameters(cls: type) -> dict[str, Any]:
    """A dataclass's user-settable fields -> declared type (``init=False`` and ``_private`` ones excluded),
    keyword-only ones (a base class's, shared by its subclasses) last."""
    hints = typing.get_type_hints(cls)
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.kw_only is True)
    return {f.name: hints[f.name] for f in fields if f.init and not f.name.startswith("_")}


def coerce_fields(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Each of ``values`` (all of them parameters of ``cls``) coerced to its field's type."""
    kinds = parameters(cls)
    return {k: coerce(k, v, kinds[k]) for k, v in values.items()}


def finite_float(minimum: float | None = None) -> Callable[[str], float]:
    """An ``argparse`` ``type=`` for a finite number (at least ``minimum``): ``--acc-tol nan`` would pass every
    comparison, so it is a usage error, as is any ``inf``."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a finite value")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum:g}")
        return value

    parse.__name__ = "finite number"
    return parse
