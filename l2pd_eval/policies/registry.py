"""Name -> policy class registry (``policy=`` in model_args), with parameter validation."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from typing import Any

from l2pd_eval.policies.base import Policy
from l2pd_eval.registry import Registry
from l2pd_eval.typed_args import coerce_fields

POLICIES: Registry[type[Policy]] = Registry("policy")
_BUILTIN = ("low_confidence", "random", "threshold", "factor", "oracle", "learn2pd",
            "entropy", "topk_margin", "maskgit_plus", "origin", "dinfer_threshold", "dinfer_hierarchy",
            "dinfer_credit", "wino", "prophet", "slowfast", "block_threshold", "llada21_joint")


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: ``policy=<cls.name>`` selects ``cls``."""
    return POLICIES.register(cls)


def _load_builtins() -> None:
    for name in _BUILTIN:
        importlib.import_module(f"l2pd_eval.policies.{name}")


def available() -> list[str]:
    _load_builtins()
    return POLICIES.names()


def policy_params(name: str) -> list[str]:
    return list(policy_class(name).parameters())


def policy_class(name: str) -> type[Policy]:
    _load_builtins()
    return POLICIES.get(name)


def parse_policy_params(name: str, params: Mapping[str, Any], also_valid: Collection[str] = ()) -> dict[str, Any]:
    """Check the names and coerce the values of ``policy=name``'s parameters (the one place this happens).

    ``also_valid`` are the caller's own argument names (the lm-eval adapter's model_args), listed in the
    error so it shows everything the user could have meant.
    """
    cls = policy_class(name)
    POLICIES.check_parameters(name, cls.parameters(), params, also_valid)
    return coerce_fields(cls, params)


def get_policy(name: str, **params: Any) -> Policy:
    """Build a policy; an unknown parameter is an error naming the policy's valid parameters."""
    return policy_class(name)(**parse_policy_params(name, params))
