"""The base of every family's config class: a dataclass read from and written to the checkpoint's
``config.json`` under the file's own key names."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from l2pd_eval.errors import ConfigError

#: The longest context config.json may declare (Dream-7B: 131072 positions; LLaDA: 4096).
MAX_CONTEXT = 1 << 20


class FileConfig:
    """A dataclass of a family's ``config.json`` fields under the file's own names: keys it does not model
    are kept in ``extra`` and written back, so a saved checkpoint keeps what the hub file said."""

    model_type: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    #: The file's keys that are sizes: each a positive integer (or null where the field allows None).
    sizes: ClassVar[tuple[str, ...]] = ()
    #: The file's key of the context length, refused above :data:`MAX_CONTEXT` (a typo, not a model).
    context_key: ClassVar[str] = ""
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        raw = dict(raw)
        cls.check_sizes(raw)
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        cfg.extra = {k: v for k, v in raw.items() if k not in names}
        cfg.validate()
        return cfg

    @classmethod
    def check_sizes(cls, raw: dict[str, Any]) -> None:
        """Sizes are positive integers (a JSON ``32.0`` counts as 32) and the context is not absurd: a zero
        head count or a fractional width would otherwise fail deep inside the network, or never."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in cls.sizes:
            value = raw.get(key, defaults.get(key))
            if value is None and key in raw and defaults.get(key) is not None:
                raise ConfigError(f"config.json: {key}=null; it must be a positive integer")
            if value is None:
                continue
            if isinstance(value, float) and value.is_integer():
                raw[key] = value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.json: {key}={value!r} must be a positive integer; check the file, or "
                                  "use the config.json that came with the weights")
        context = raw.get(cls.context_key, defaults.get(cls.context_key))
        if isinstance(context, int) and context > MAX_CONTEXT:
            raise ConfigError(f"config.json: {cls.context_key}={context} is more than {MAX_CONTEXT} positions, "
                              "which no released model has (rope tables alone would not fit); check the file")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        out.update(self.extra)
        out.setdefault("model_type", self.model_type)
        out.setdefault("architectures", list(self.architectures))
        return out

    def validate(self) -> None:
        raise NotImplementedError

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any):
        """A config of ``fields`` (the file's own key names) whose vocabulary and special ids are
        ``tokenizer``'s and whose random init has ``init_std``: how ``model/tiny.py`` writes test checkpoints."""
        raise NotImplementedError

    @staticmethod
    def check_choices(checks: dict[str, tuple[Any, set[Any]]]) -> None:
        """``{name: (value, allowed)}``: one error naming the first unsupported setting and the valid ones."""
        for name, (value, allowed) in checks.items():
            if not any(value == a for a in allowed):  # by equality: a value may be a dict (rope_scaling)
                raise ConfigError(f"config.json: {name}={value!r} is not supported; valid choices: {sorted(map(str, allowed))}")
