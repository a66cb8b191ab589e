"""Name -> policy class registry (``policy=`` in model_args), with parameter validation."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from l2pd_eval.policies.base import Policy

_REGISTRY: dict[str, type[Policy]] = {}
_BUILTIN = ("low_confidence", "random", "threshold", "factor", "oracle", "learn2pd",
            "entropy", "topk_margin", "maskgit_plus", "origin")


def register(cls: type[Policy]) -> type[Policy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy {cls.name!r} already registered by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for name in _BUILTIN:
        importlib.import_module(f"l2pd_eval.policies.{name}")


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def policy_params(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(policy_class(name))]


def policy_class(name: str) -> type[Policy]:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"policy={name!r} is unknown; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _coerce(value: Any, kind: Any) -> Any:
    kind = str(kind)
    if isinstance(value, str):
        if "bool" in kind:
            return value.lower() in ("1", "true", "yes")
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return int(value)
    if "float" in kind and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def get_policy(name: str, **params: Any) -> Policy:
    """Build a policy; an unknown parameter is an error naming the policy's valid parameters."""
    cls = policy_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "(none)"
        raise ValueError(f"policy={name!r} does not take {', '.join(unknown)}; valid parameters: {valid}")
    return cls(**{k: _coerce(v, fields[k].type) for k, v in params.items()})
