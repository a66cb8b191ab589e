"""Model families: the one table that maps a checkpoint to its config class, network and family facts.

A family's facts (special-token spellings, chat rule, attention kind, published tables, how ``config.json``
names it) are torch-free, in :mod:`l2pd_eval.family_facts`, so the results and ``reproduce`` read them
without torch; a :class:`Family` here is those facts plus the network side. Adding a family is one model
file (a config dataclass and a network implementing :class:`~l2pd_eval.model.interface.DiffusionLM`), its
facts, and one :func:`register_family` call here; docs/extending.md says how. Networks name their modules
after the checkpoint's keys, so loading needs no key mapping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from l2pd_eval import family_facts
from l2pd_eval.errors import ConfigError
from l2pd_eval.family_facts import FACTS, Attention, FamilyFacts  # noqa: F401 (Attention: re-exported)
from l2pd_eval.model import dream, llada, llada2_moe, llada_moe, sdar
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.interface import MEMBERS
from l2pd_eval.model.tokenizer import DREAM_STYLE, LLADA_MOE_STYLE, LLADA_STYLE, SDAR_STYLE, TokenizerStyle


@dataclass(frozen=True, kw_only=True)
class Family(FamilyFacts):
    """A family's facts (:class:`~l2pd_eval.family_facts.FamilyFacts`) and its network. ``tiny_preset`` and
    ``tokenizer_style``: the shape and tokenizer of the family's tiny test checkpoints (``model/tiny.py``,
    ``l2pd-eval make-tiny``). ``model_types`` and ``architectures`` default to the config class's."""

    config_class: type[FileConfig]      # its ``model_type`` / ``architectures`` are what config.json names
    model_class: type[nn.Module]        # implements model.interface.DiffusionLM
    presets: dict[str, dict[str, Any]]  # ``random:<preset>`` shapes
    tiny_preset: str
    tokenizer_style: TokenizerStyle

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"model family {self.name!r}"
        own = ((self.config_class.model_type,), tuple(self.config_class.architectures))
        for name, value in zip(("model_types", "architectures"), own, strict=True):
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        if self.model_types[0] != own[0][0] or not set(own[1]) <= set(self.architectures):
            raise ValueError(f"{where}: its config class writes model_type {own[0][0]!r} and architectures "
                             f"{list(own[1])}, which its facts do not name first ({self.model_types}, "
                             f"{self.architectures})")
        if self.tiny_preset not in self.presets:
            raise ValueError(f"{where}: tiny_preset={self.tiny_preset!r} is not one of its presets "
                             f"({', '.join(self.presets)})")
        missing = [m for m in MEMBERS if not hasattr(self.model_class, m)]
        if missing:
            raise TypeError(f"{where}: {self.model_class.__name__} lacks {', '.join(missing)} of "
                            f"model.interface.DiffusionLM")

    @classmethod
    def extending(cls, facts: FamilyFacts, **network: Any) -> Family:
        """The family of ``facts`` (a built-in entry of :data:`~l2pd_eval.family_facts.FACTS`) with its
        network fields (``config_class``, ``model_class``, ``presets``, ``tiny_preset``, ``tokenizer_style``)."""
        own = {f.name: getattr(facts, f.name) for f in dataclasses.fields(FamilyFacts)}
        return cls(**own, **network)

    @property
    def facts(self) -> FamilyFacts:
        """The torch-free part, as :data:`~l2pd_eval.family_facts.FACTS` holds it."""
        return FamilyFacts(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FamilyFacts)})


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the table (and its facts to the torch-free one, unless they are that table's own
    built-in entry). Its name, its architectures and its presets must be new; a ``model_type`` may be shared
    only by families that both name their architectures: they are how a run, a checkpoint and
    ``random:<preset>`` find it."""
    for other in FAMILIES.values():
        if family.name == other.name:
            raise ValueError(f"register_family: name {family.name!r} is already the {other.name!r} family's")
        shared = set(family.presets) & set(other.presets)
        if shared:
            raise ValueError(f"register_family: presets {sorted(shared)} are already the {other.name!r} family's")
    if FACTS.get(family.name) != family.facts:
        family_facts.register_facts(family.facts)
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family from both tables (a test's or a plugin's; the built-ins are not meant to go)."""
    FAMILIES.pop(name, None)
    FACTS.pop(name, None)


register_family(Family.extending(FACTS["llada"], config_class=llada.LLaDAConfig, model_class=llada.LLaDA,
                                 presets=llada.PRESETS, tiny_preset="tiny", tokenizer_style=LLADA_STYLE))
register_family(Family.extending(FACTS["dream"], config_class=dream.DreamConfig, model_class=dream.Dream,
                                 presets=dream.PRESETS, tiny_preset="dream-tiny", tokenizer_style=DREAM_STYLE))
register_family(Family.extending(FACTS["llada_moe"], config_class=llada_moe.LLaDAMoEConfig,
                                 model_class=llada_moe.LLaDAMoE, presets=llada_moe.PRESETS,
                                 tiny_preset="llada-moe-tiny", tokenizer_style=LLADA_MOE_STYLE))
register_family(Family.extending(FACTS["llada2_moe"], config_class=llada2_moe.LLaDA2MoeConfig,
                                 model_class=llada2_moe.LLaDA2Moe, presets=llada2_moe.PRESETS,
                                 tiny_preset="llada2-tiny", tokenizer_style=LLADA_MOE_STYLE))
register_family(Family.extending(FACTS["sdar"], config_class=sdar.SDARConfig, model_class=sdar.SDAR,
                                 presets=sdar.PRESETS, tiny_preset="sdar-tiny", tokenizer_style=SDAR_STYLE))


def family_of_config_json(raw: dict[str, Any], source: str = "config.json") -> Family:
    """The family of a ``config.json``: of its ``model_type``, the one its ``architectures`` names
    (:func:`~l2pd_eval.family_facts.family_name_of_config_json`)."""
    return FAMILIES[family_facts.family_name_of_config_json(raw, source)]


def family_of_preset(preset: str) -> Family:
    for family in FAMILIES.values():
        if preset in family.presets:
            return family
    raise ConfigError(f"pretrained='random:{preset}': unknown preset; valid choices: {preset_names()}")


def preset_names() -> str:
    """Every family's ``random:<preset>``, comma-separated (for error messages)."""
    return ", ".join(f"random:{p}" for f in FAMILIES.values() for p in f.presets)


def family_of(config: Any) -> Family:
    """The family of a loaded model's config object, e.g. ``family_of(model.config).attention``. The class
    must be the family's own: a family may subclass another's config class and stay a family of its own."""
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise TypeError(f"{type(config).__name__} is not the config class of any model family")


def family_name(config: Any) -> str | None:
    """The name of the family ``config`` belongs to; None for a config no family owns (a test double)."""
    return next((name for name, f in FAMILIES.items() if type(config) is f.config_class), None)


def check_supported(family: Family, source: str) -> None:
    """Refuse, at load, a family the engine and caches cannot decode (``source``: the ``pretrained=``
    value): a block-causal family needs a network that declares its grid (``block_size``, the
    attention mask of ``model.block_causal``)."""
    if family.attention == "block_causal" and not hasattr(family.model_class, "block_size"):
        raise ConfigError(f"pretrained={source!r}: the {family.name!r} family attends block-causally (trained "
                          f"block size {family.block_size}) but its network {family.model_class.__name__} declares "
                          f"no block_size; it cannot be decoded")
