"""Name -> forward strategy class registry (``cache=`` in model_args): the one list of cache names."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from l2pd_eval.caches.base import CacheParams, ForwardStrategy
from l2pd_eval.registry import Registry
from l2pd_eval.typed_args import coerce_fields

CACHES: Registry[type[ForwardStrategy]] = Registry("cache", ordered=True)


def register(cls: type[ForwardStrategy]) -> type[ForwardStrategy]:
    """Class decorator: ``cache=<cls.name>`` selects ``cls``. Its ``Params`` must be a ``CacheParams``
    dataclass whose every field has a default: ``cache=<name>`` alone has to mean something."""
    params = cls.Params
    if not (isinstance(params, type) and issubclass(params, CacheParams) and dataclasses.is_dataclass(params)):
        raise ValueError(f"cache {cls.name!r}: Params must be a dataclass subclassing caches.base.CacheParams")
    required = [f.name for f in dataclasses.fields(params)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise ValueError(f"cache {cls.name!r}: parameter(s) {', '.join(required)} need a default")
    return CACHES.register(cls)


def available() -> list[str]:
    """Registered cache names, in registration order (the built-ins first: none, prefix, dual)."""
    return CACHES.names()


def cache_class(name: str) -> type[ForwardStrategy]:
    return CACHES.get(name)


def cache_params(name: str) -> list[str]:
    """The model_args keys ``cache=name`` takes (its ``Params`` fields)."""
    return list(cache_class(name).parameters())


def parse_cache_params(name: str, params: Mapping[str, Any], also_valid: Collection[str] = ()) -> dict[str, Any]:
    """Check the names, coerce the values and validate ``cache=name``'s parameters (the one place this
    happens, as ``parse_policy_params`` for policies). Returns every parameter, the defaults filled in, so
    a recorded run says its whole configuration. ``also_valid``: the caller's other keys, listed in the
    error so it shows everything the user could have meant."""
    cls = cache_class(name)
    CACHES.check_parameters(name, cls.parameters(), params, also_valid)
    return dataclasses.asdict(cls.Params(**coerce_fields(cls.Params, params)))
