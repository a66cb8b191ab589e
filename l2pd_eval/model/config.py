"""The base of every family's config class: a dataclass read from and written to the checkpoint's
``config.json`` under the file's own key names."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class FileConfig:
    """A dataclass of a family's ``config.json`` fields under the file's own names: keys it does not model
    are kept in ``extra`` and written back, so a saved checkpoint keeps what the hub file said."""

    model_type: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        cfg.extra = {k: v for k, v in raw.items() if k not in names}
        cfg.validate()
        return cfg

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
                raise ValueError(f"config.json: {name}={value!r} is not supported; valid choices: {sorted(map(str, allowed))}")
