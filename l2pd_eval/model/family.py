"""Model families: the one table that maps a checkpoint to its config class, network and family facts.

Adding a family is one model file (a config dataclass and a network implementing
:class:`~l2pd_eval.model.interface.DiffusionLM`) plus one :func:`register_family` call here; docs/extending.md
says how. Networks name their modules after the checkpoint's keys, so loading needs no key mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import nn

from l2pd_eval.model import dream, llada
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.interface import MEMBERS
from l2pd_eval.model.tokenizer import DREAM_STYLE, LLADA_STYLE, TokenizerStyle

Attention = Literal["bidirectional", "block_causal"]


@dataclass(frozen=True)
class Family:
    """``*_token``: the tokenizer's spelling of each special token, looked up first (config.json's ids are the
    fallback; ``eot_id`` stands in for an end-of-turn id no config file carries). ``add_bos``: whether plain
    (non-chat) prompts start with the BOS token by default. ``tiny_preset`` and ``tokenizer_style``: the
    shape and tokenizer of the family's tiny test checkpoints (``model/tiny.py``, ``l2pd-eval make-tiny``).

    ``attention``: ``bidirectional`` (every position sees the whole sequence: LLaDA, Dream) or
    ``block_causal`` (a block sees itself and earlier blocks: LLaDA2.0, SDAR, Fast-dLLM v2), trained with
    blocks of ``block_size`` tokens (None for bidirectional families)."""

    name: str
    config_class: type[FileConfig]      # its ``model_type`` is what config.json names
    model_class: type[nn.Module]        # implements model.interface.DiffusionLM
    presets: dict[str, dict[str, Any]]  # ``random:<preset>`` shapes
    tiny_preset: str
    tokenizer_style: TokenizerStyle
    mask_token: str
    eos_token: str
    eot_token: str
    eot_id: int | None
    add_bos: bool
    # What the lm-eval harness reads of a family (l2pd_eval/harness):
    instruct_marker: str | None         # chat=auto: the chat template for a model or tokenizer whose name holds
    #                                     this (any case) and whose tokenizer has one; None: plain prompts
    paper_drop_ids: tuple[int, ...]     # ids the papers' token count leaves out (results/sidecar.py)
    attention: Attention = "bidirectional"
    block_size: int | None = None

    def __post_init__(self) -> None:
        where = f"model family {self.name!r}"
        if self.attention not in get_args(Attention):
            raise ValueError(f"{where}: attention={self.attention!r}; valid choices: {', '.join(get_args(Attention))}")
        if self.attention == "block_causal" and not (isinstance(self.block_size, int) and self.block_size > 0):
            raise ValueError(f"{where}: attention='block_causal' needs block_size=<its trained block length>, "
                             f"got {self.block_size!r}")
        if self.attention == "bidirectional" and self.block_size is not None:
            raise ValueError(f"{where}: block_size={self.block_size} is only for attention='block_causal'")
        if self.tiny_preset not in self.presets:
            raise ValueError(f"{where}: tiny_preset={self.tiny_preset!r} is not one of its presets "
                             f"({', '.join(self.presets)})")
        missing = [m for m in MEMBERS if not hasattr(self.model_class, m)]
        if missing:
            raise TypeError(f"{where}: {self.model_class.__name__} lacks {', '.join(missing)} of "
                            f"model.interface.DiffusionLM")


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the table. Its name, its config's ``model_type`` and its presets must be new: they
    are how a run, a checkpoint and ``random:<preset>`` find it."""
    for other in FAMILIES.values():
        clash = {"name": (family.name, other.name),
                 "model_type": (family.config_class.model_type, other.config_class.model_type)}
        for what, (new, old) in clash.items():
            if new == old:
                raise ValueError(f"register_family: {what} {new!r} is already the {other.name!r} family's")
        shared = set(family.presets) & set(other.presets)
        if shared:
            raise ValueError(f"register_family: presets {sorted(shared)} are already the {other.name!r} family's")
    FAMILIES[family.name] = family
    return family


# Both papers' llada/eval_llada.py: chat template iff 'instruct' in the model path; their TPS counts the
# re-tokenised answer without id 126081 (<|endoftext|>).
register_family(Family("llada", llada.LLaDAConfig, llada.LLaDA, llada.PRESETS,
                       mask_token="<|mdm_mask|>", eos_token="<|endoftext|>", eot_token="<|eot_id|>", eot_id=None,
                       add_bos=False, tiny_preset="tiny", tokenizer_style=LLADA_STYLE,
                       instruct_marker="instruct", paper_drop_ids=(126081,)))
# Fast-dLLM evaluates Dream-v0-Base with add_bos_token=true; the Instruct chat template brings its own start.
# Its dream/eval.py counts the generated ids that are not the tokenizer's eos (Dream-Base: <|endoftext|>), and
# applies the chat template only when asked (apply_chat_template=, default false): the name rule is LLaDA's.
register_family(Family("dream", dream.DreamConfig, dream.Dream, dream.PRESETS,
                       mask_token="<|mask|>", eos_token="<|endoftext|>", eot_token="<|im_end|>", eot_id=151645,
                       add_bos=True, tiny_preset="dream-tiny", tokenizer_style=DREAM_STYLE,
                       instruct_marker="instruct", paper_drop_ids=(151643,)))


def family_of_config_json(raw: dict[str, Any], source: str = "config.json") -> Family:
    """The family whose ``model_type`` the file names (a file without one is LLaDA's, as before)."""
    model_type = raw.get("model_type", "llada")
    for family in FAMILIES.values():
        if family.config_class.model_type == model_type:
            return family
    valid = ", ".join(repr(f.config_class.model_type) for f in FAMILIES.values())
    raise ValueError(f"pretrained: {source} has model_type={model_type!r}; valid choices: {valid}")


def family_of_preset(preset: str) -> Family:
    for family in FAMILIES.values():
        if preset in family.presets:
            return family
    raise ValueError(f"pretrained='random:{preset}': unknown preset; valid choices: {preset_names()}")


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
    """Refuse, at load, a family the engine and caches cannot decode yet (``source``: the ``pretrained=``
    value). Block-causal attention needs its own network mask and an exact cache of finished blocks."""
    if family.attention != "bidirectional":
        raise ValueError(f"pretrained={source!r}: the {family.name!r} family attends {family.attention} "
                         f"(trained block size {family.block_size}); only bidirectional families can be "
                         f"decoded so far")
