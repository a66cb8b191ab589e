"""Model families: the one table that maps a checkpoint to its config class, network and special tokens.

Adding a family is one model file (config dataclass with ``from_dict``/``to_dict`` and the shape properties
the engine reads, a network with LLaDA's ``forward`` interface) plus one entry here. Networks name their
modules after the checkpoint's keys, so loading needs no key mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from l2pd_eval.model import config as llada_config
from l2pd_eval.model import dream
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.llada import LLaDA


@dataclass(frozen=True)
class Family:
    """``*_token``: the tokenizer's spelling of each special token, looked up first (config.json's ids are the
    fallback; ``eot_id`` stands in for an end-of-turn id no config file carries). ``add_bos``: whether plain
    (non-chat) prompts start with the BOS token by default."""

    name: str
    config_class: type[FileConfig]      # its ``model_type`` is what config.json names
    model_class: type[nn.Module]
    presets: dict[str, dict[str, Any]]  # ``random:<preset>`` shapes
    mask_token: str
    eos_token: str
    eot_token: str
    eot_id: int | None
    add_bos: bool
    # What the lm-eval harness reads of a family (l2pd_eval/harness):
    instruct_marker: str | None         # chat=auto: the chat template for a model or tokenizer whose name holds
    #                                     this (any case) and whose tokenizer has one; None: plain prompts
    paper_drop_ids: tuple[int, ...]     # ids the papers' token count leaves out (results/sidecar.py)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # Both papers' llada/eval_llada.py: chat template iff 'instruct' in the model path; their TPS counts the
    # re-tokenised answer without id 126081 (<|endoftext|>).
    Family("llada", llada_config.LLaDAConfig, LLaDA, llada_config.PRESETS,
           mask_token="<|mdm_mask|>", eos_token="<|endoftext|>", eot_token="<|eot_id|>", eot_id=None,
           add_bos=False, instruct_marker="instruct", paper_drop_ids=(126081,)),
    # Fast-dLLM evaluates Dream-v0-Base with add_bos_token=true; the Instruct chat template brings its own start.
    # Its dream/eval.py counts the generated ids that are not the tokenizer's eos (Dream-Base: <|endoftext|>), and
    # applies the chat template only when asked (apply_chat_template=, default false): the name rule is LLaDA's.
    Family("dream", dream.DreamConfig, dream.Dream, dream.PRESETS,
           mask_token="<|mask|>", eos_token="<|endoftext|>", eot_token="<|im_end|>", eot_id=151645,
           add_bos=True, instruct_marker="instruct", paper_drop_ids=(151643,)),
)}


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
    valid = ", ".join(f"random:{p}" for f in FAMILIES.values() for p in f.presets)
    raise ValueError(f"pretrained='random:{preset}': unknown preset; valid choices: {valid}")


def family_of(config: Any) -> Family:
    """The family of a loaded model's config object."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} is not the config class of any model family")
