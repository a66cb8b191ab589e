"""Name -> class registries filled by a class decorator: the policies' (``policy=``) and the caches'
(``cache=``). Each class names itself (``cls.name``); the registry is the one list of valid names."""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, TypeVar

from l2pd_eval.errors import ConfigError

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """``kind`` is the setting the names are values of (``policy``, ``cache``), for the error messages;
    names are listed sorted, or in registration order with ``ordered``."""

    def __init__(self, kind: str, ordered: bool = False):
        self.kind, self.ordered = kind, ordered
        self.classes: dict[str, C] = {}

    def register(self, cls: C) -> C:
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name")
        if cls.name in self.classes and self.classes[cls.name] is not cls:
            raise ValueError(f"{self.kind} {cls.name!r} already registered by {self.classes[cls.name].__module__}")
        self.classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return list(self.classes) if self.ordered else sorted(self.classes)

    def get(self, name: str) -> C:
        if name not in self.classes:
            raise ConfigError(f"{self.kind}={name!r} is unknown; valid choices: {', '.join(self.names())}")
        return self.classes[name]

    def check_parameters(self, name: str, valid: Collection[str], given: Collection[str],
                         also_valid: Collection[str] = ()) -> None:
        """Refuse parameters ``<kind>=name`` does not take, in one line listing the valid ones (with
        ``also_valid``, the caller's own model_args keys, as well: everything the user could have meant)."""
        unknown = sorted(set(given) - set(valid))
        if unknown and also_valid:
            raise ConfigError(f"model_args: unknown argument(s) {', '.join(unknown)} for {self.kind}={name!r}; valid: "
                              f"{', '.join(sorted({*also_valid, *valid}))}")
        if unknown:
            raise ConfigError(f"{self.kind}={name!r} does not take {', '.join(unknown)}; valid parameters: "
                              f"{', '.join(valid) or '(none)'}")
