"""A parameter grid from the command line: ``threshold=0.5:0.95:0.05`` (a range, both ends included) or
``accept_thres=0.9,0.95`` (a list); several ``--grid`` options multiply."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

#: model_args a sweep fixes itself (the model, the method being swept, where the sidecar goes).
FIXED = ("pretrained", "policy", "sidecar")
MAX_POINTS = 200


def _decimal(text: str, spec: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"--grid {spec!r}: {text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"--grid {spec!r}: {text!r} is not a finite number")
    return value


def _values(spec: str, key: str, text: str) -> list[str]:
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--grid {spec!r}: a range is START:STOP:STEP (e.g. threshold=0.5:0.95:0.05)")
        start, stop, step = (_decimal(p, spec) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"--grid {spec!r}: need STEP > 0 and STOP >= START")
        count = int((stop - start) / step) + 1
        if count > MAX_POINTS:
            raise ValueError(f"--grid {spec!r}: {count} points; at most {MAX_POINTS} per sweep")
        # Decimal steps: 0.5 + 9 * 0.05 is 0.95 exactly, never 0.9500000000000001.
        return [str((start + i * step).normalize()) if start + i * step != 0 else "0" for i in range(count)]
    values = [v.strip() for v in text.split(",")]
    if not all(values):
        raise ValueError(f"--grid {spec!r}: empty value in the list; e.g. accept_thres=0.9,0.95")
    if len(set(values)) != len(values):
        raise ValueError(f"--grid {spec!r}: a value is listed twice")
    return values


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]


def parse_axis(spec: str) -> Axis:
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ValueError(f"--grid {spec!r}: expected KEY=START:STOP:STEP or KEY=A,B,C (a model_arg of the method, "
                         "e.g. threshold=0.5:0.95:0.05)")
    if key in FIXED:
        raise ValueError(f"--grid {spec!r}: {key} is fixed by the sweep (--model / --policy); grid the method's "
                         "parameters or other model_args")
    if "," in key or any(c.isspace() for c in key):
        raise ValueError(f"--grid {spec!r}: {key!r} is not a model_arg name")
    values = _values(spec, key, text)
    for v in values:
        if "," in v or "=" in v:
            raise ValueError(f"--grid {spec!r}: value {v!r} cannot go into lm-eval's model_args")
        try:
            number = float(v)
        except ValueError:
            continue  # a word (cache=none,dual): the adapter checks it with the other model_args
        if not math.isfinite(number):
            raise ValueError(f"--grid {spec!r}: value {v!r} is not a finite number")
    return Axis(key, tuple(values))


def points(specs: list[str]) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the axes, in the order given (the last axis varies fastest)."""
    if not specs:
        raise ValueError("--grid KEY=VALUES is required (e.g. --grid threshold=0.5:0.95:0.05)")
    axes = [parse_axis(s) for s in specs]
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--grid: {sorted({k for k in keys if keys.count(k) > 1})[0]} is given twice")
    combos = list(itertools.product(*[[(a.key, v) for v in a.values] for a in axes]))
    if len(combos) > MAX_POINTS:
        raise ValueError(f"--grid: {len(combos)} points; at most {MAX_POINTS} per sweep")
    return [tuple(c) for c in combos]


def point_key(point: tuple[tuple[str, str], ...]) -> str:
    """The point's folder name: ``threshold-0.5`` or ``accept_thres-0.9_threshold-0.5``."""
    return "_".join(f"{k}-{v}" for k, v in sorted(point))
