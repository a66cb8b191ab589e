"""Name -> forward strategy class registry (``cache=`` in model_args): the one list of cache names."""

from __future__ import annotations

from l2pd_eval.caches.base import ForwardStrategy
from l2pd_eval.registry import Registry

CACHES: Registry[type[ForwardStrategy]] = Registry("cache", ordered=True)


def register(cls: type[ForwardStrategy]) -> type[ForwardStrategy]:
    """Class decorator: ``cache=<cls.name>`` selects ``cls``."""
    return CACHES.register(cls)


def available() -> list[str]:
    """Registered cache names, in registration order (the built-ins first: none, prefix, dual)."""
    return CACHES.names()


def cache_class(name: str) -> type[ForwardStrategy]:
    return CACHES.get(name)
