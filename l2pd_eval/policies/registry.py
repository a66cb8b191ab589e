"""Name -> policy class registry (``policy=`` in model_args), with parameter validation."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from typing import Any

from l2pd_eval.policies.base import Policy
from l2pd_eval.typed_args import coerce_fields

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
    return list(policy_class(name).parameters())


def policy_class(name: str) -> type[Policy]:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"policy={name!r} is unknown; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def parse_policy_params(name: str, params: Mapping[str, Any], also_valid: Collection[str] = ()) -> dict[str, Any]:
    """Check the names and coerce the values of ``policy=name``'s parameters (the one place this happens).

    ``also_valid`` are the caller's own argument names (the lm-eval adapter's model_args), listed in the
    error so it shows everything the user could have meant.
    """
    cls = policy_class(name)
    kinds = cls.parameters()
    unknown = sorted(set(params) - set(kinds))
    if unknown and also_valid:
        raise ValueError(f"model_args: unknown argument(s) {', '.join(unknown)} for policy={name!r}; valid: "
                         f"{', '.join(sorted({*also_valid, *kinds}))}")
    if unknown:
        raise ValueError(f"policy={name!r} does not take {', '.join(unknown)}; valid parameters: "
                         f"{', '.join(kinds) or '(none)'}")
    return coerce_fields(cls, params)


def get_policy(name: str, **params: Any) -> Policy:
    """Build a policy; an unknown parameter is an error naming the policy's valid parameters."""
    return policy_class(name)(**parse_policy_params(name, params))
