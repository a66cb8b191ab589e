"""Decoding methods (the report's rows): policy + parameters + KV cache + EoTP.

A run's method comes from its sidecar manifest, or from lm-eval's ``model_args`` when it has none;
``--baseline-method`` and baseline files name methods by the same fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Method:
    """A decoding method = policy (+ its parameters) + KV cache + EoTP; one table row."""

    policy: str
    params: tuple[tuple[str, str], ...] = ()
    cache: str = "none"
    eotp: bool = False

    @property
    def label(self) -> str:
        text = self.policy
        if self.params:
            text += "(" + ", ".join(f"{k}={v}" for k, v in self.params) + ")"
        if self.cache and self.cache != "none":
            text += f" + {self.cache} cache"
        if self.eotp:
            text += " + EoTP"
        return text

    def sort_key(self) -> tuple:
        order = {p: i for i, p in enumerate(POLICY_ORDER)}
        caches = {c: i for i, c in enumerate(CACHE_ORDER)}
        return (order.get(self.policy, len(order)), self.policy, self.eotp,
                caches.get(self.cache, len(caches)), self.cache, self.params)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "params": dict(self.params), "cache": self.cache, "eotp": self.eotp}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Method:
        return method_from_settings(data.get("policy"), data.get("params") or {}, data.get("cache"), data.get("eotp"))


# Policy parameters read from lm-eval's model_args when a run has no sidecar (the policies' field names).
MODEL_ARGS_PARAMS = ("threshold", "factor", "accept_thres", "filter")
POLICY_ORDER = ("low_confidence", "random", "threshold", "factor", "learn2pd", "oracle")
CACHE_ORDER = ("none", "prefix", "dual")


def _fmt_param(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        # A filter checkpoint path: its file name identifies it, the folder does not.
        return os.path.basename(value.rstrip("/\\")) if ("/" in value or "\\" in value) else value
    return None  # lists/dicts/None do not go into a row label


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):  # eotp=committed is EoTP too (the report does not tell the two rules apart)
        return value.strip().lower() in {"1", "true", "yes", "on", "committed"}
    return bool(value)


def method_from_settings(policy: Any, params: dict[str, Any] | None, cache: Any, eotp: Any) -> Method:
    items = []
    for key, value in sorted((params or {}).items()):
        text = _fmt_param(value)
        if text is not None:
            items.append((str(key), text))
    return Method(
        policy=str(policy or "unknown"),
        params=tuple(items),
        cache=str(cache or "none"),
        eotp=_to_bool(eotp) if eotp is not None else False,
    )


BASELINE = Method("low_confidence")


def parse_method_spec(spec: str) -> dict[str, str]:
    """``policy=threshold,threshold=0.9,cache=none,eotp=false`` (or just ``low_confidence``) -> fields."""
    fields: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key.strip()] = value.strip()
        elif i == 0:
            fields["policy"] = part
        else:
            raise ValueError(f"--baseline-method: cannot read {part!r}; use KEY=VALUE (policy, cache, eotp, params)")
    if "policy" not in fields:
        raise ValueError(f"--baseline-method {spec!r} names no policy; e.g. 'policy=low_confidence,cache=none'")
    return fields


def method_matches(method: Method, fields: dict[str, str]) -> bool:
    """Does ``method`` satisfy a parsed spec? cache/eotp default to none/false, params must match if given."""
    if method.policy != fields["policy"]:
        return False
    if method.cache != fields.get("cache", "none"):
        return False
    if method.eotp != _to_bool(fields.get("eotp", "false")):
        return False
    params = dict(method.params)
    for key, value in fields.items():
        if key in {"policy", "cache", "eotp"}:
            continue
        if key not in params:
            return False
        mine = params[key]
        try:
            if float(mine) != float(value):
                return False
        except ValueError:
            if mine != value:
                return False
    return True
