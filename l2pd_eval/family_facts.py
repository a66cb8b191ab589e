"""What is known of each model family and of each released checkpoint, without torch.

The family table (``l2pd_eval/model/family.py``) extends each :class:`FamilyFacts` entry here with its
network; the results, the report and ``reproduce`` read this module only (they stay torch-free). Two tables:

* :data:`FACTS`: per family, how ``config.json`` names it (``model_type``, then ``architectures``), how
  its tokenizer spells the special tokens, its chat rule, the ids the papers' token count drops, its attention
  kind, and the published tables of runs of it (``results/published/<name>.json``).
* :data:`CHECKPOINTS`: released checkpoints of those families whose facts differ from their family's (iLLaDA's
  mask id 5, a chat rule a hub name does not show, a LoRA adapter and its base) or whose published cells pair
  only with runs of that checkpoint (``model`` in a published entry). :func:`find_checkpoint` recognises one
  from a ``pretrained=`` value or a checkpoint folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, get_args

from l2pd_eval.errors import ConfigError

Attention = Literal["bidirectional", "block_causal"]


@dataclass(frozen=True)
class FamilyFacts:
    """``*_token``: the tokenizer's spelling of each special token, looked up first (config.json's ids are the
    fallback; ``eot_id`` and ``mask_id`` stand in for ids no config file carries). ``add_bos``: whether plain
    (non-chat) prompts start with the BOS token by default.

    ``model_types`` / ``architectures``: what ``config.json`` says (the first model type is the one written).
    Among the families of a file's ``model_type``, the one its ``architectures`` names is its family, else
    the first (LLaDA-MoE's hub config says ``"llada"``, as LLaDA-8B's does). Empty for a family made with
    :class:`~l2pd_eval.model.family.Family` directly: its config class gives them.

    ``attention``: ``bidirectional`` (every position sees the whole sequence: LLaDA, Dream) or
    ``block_causal`` (a block sees itself and earlier blocks: LLaDA2.0, SDAR, Fast-dLLM v2), trained with
    blocks of ``block_size`` tokens (None for bidirectional families)."""

    name: str
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
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    mask_id: int | None = None          # the mask id when neither tokenizer nor config.json has one
    published: tuple[str, ...] = ()     # results/published/<name>.json tables of runs of this family
    name_markers: tuple[str, ...] = ()  # a model name holding one (any case) is of this family; () = (name,)

    def __post_init__(self) -> None:
        where = f"model family {self.name!r}"
        if self.attention not in get_args(Attention):
            raise ValueError(f"{where}: attention={self.attention!r}; valid choices: {', '.join(get_args(Attention))}")
        if self.attention == "block_causal" and not (isinstance(self.block_size, int) and self.block_size > 0):
            raise ValueError(f"{where}: attention='block_causal' needs block_size=<its trained block length>, "
                             f"got {self.block_size!r}")
        if self.attention == "bidirectional" and self.block_size is not None:
            raise ValueError(f"{where}: block_size={self.block_size} is only for attention='block_causal'")

    @property
    def markers(self) -> tuple[str, ...]:
        return self.name_markers or (self.name,)


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint of a family. ``mask_id``: its mask id where the family's spelling would find
    another (the tokenizer lookup comes after it; an explicit ``mask_id=`` wins). ``instruct``: whether
    ``chat=auto`` renders its prompts with the chat template (None: the family's name rule). ``base``: for a
    LoRA adapter (``adapter=``), the checkpoint it was trained on."""

    hub_id: str
    family: str
    mask_id: int | None = None
    instruct: bool | None = None
    base: str | None = None
    note: str = ""  # what differs from the family and how its authors decode it (docs/families.md)

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


FACTS: dict[str, FamilyFacts] = {}
CHECKPOINTS: dict[str, Checkpoint] = {}  # by hub id, lower case


def register_facts(facts: FamilyFacts) -> FamilyFacts:
    """Add a family's facts; the name must be new, and an architecture is one family's only."""
    if facts.name in FACTS:
        raise ValueError(f"register_family: name {facts.name!r} is already the {facts.name!r} family's")
    for other in FACTS.values():
        shared = set(facts.architectures) & set(other.architectures)
        if shared:
            raise ValueError(f"register_family: architectures {sorted(shared)} are already the {other.name!r} family's")
        if set(facts.model_types) & set(other.model_types) and not (facts.architectures and other.architectures):
            raise ValueError(f"register_family: model_type {facts.model_types[0]!r} is already the {other.name!r} "
                             f"family's; two families may share one only when both name their architectures")
    FACTS[facts.name] = facts
    return facts


def _checkpoint(hub_id: str, family: str, **facts: Any) -> None:
    CHECKPOINTS[hub_id.lower()] = Checkpoint(hub_id, family, **facts)


# The built-in families (their networks: l2pd_eval/model/{llada,dream,llada_moe,llada2_moe,sdar}.py).
# Both papers' llada/eval_llada.py: chat template iff 'instruct' in the model path; their TPS counts the
# re-tokenised answer without id 126081 (<|endoftext|>).
register_facts(FamilyFacts(
    "llada", mask_token="<|mdm_mask|>", eos_token="<|endoftext|>", eot_token="<|eot_id|>", eot_id=None,
    add_bos=False, instruct_marker="instruct", paper_drop_ids=(126081,), model_types=("llada",),
    architectures=("LLaDAModelLM",),
    published=("learn2pd", "fastdllm_llada", "d3llm_llada", "dparallel_llada", "llada_eval_instruct", "llada_eval_1p5",
               "dpad_llada_instruct", "dpad_llada15", "dllm_cache_llada_instruct", "dkv_cache_llada_instruct")))
# Fast-dLLM evaluates Dream-v0-Base with add_bos_token=true; the Instruct chat template brings its own start.
# Its dream/eval.py counts the generated ids that are not the tokenizer's eos (Dream-Base: <|endoftext|>), and
# applies the chat template only when asked (apply_chat_template=, default false): the name rule is LLaDA's.
register_facts(FamilyFacts(
    "dream", mask_token="<|mask|>", eos_token="<|endoftext|>", eot_token="<|im_end|>", eot_id=151645,
    add_bos=True, instruct_marker="instruct", paper_drop_ids=(151643,), model_types=("Dream",),
    architectures=("DreamModel",), published=("fastdllm_dream", "d3llm_dream", "dparallel_dream", "dpad_dream",
                                              "dllm_cache_dream", "dkv_cache_dream")))
# LLaDA-MoE-7B-A1B: its hub config says model_type "llada" (dllm's edited copies "lladamoe"); the mask id
# 156895 is in no config file (dInfer, the model card and llama.cpp's converter use it); dInfer's token count
# leaves out its eos 156892. Turns end with <|role_end|> (its id is read from the tokenizer).
register_facts(FamilyFacts(
    "llada_moe", mask_token="<|mask|>", eos_token="<|endoftext|>", eot_token="<|role_end|>", eot_id=None,
    mask_id=156895, add_bos=False, instruct_marker="instruct", paper_drop_ids=(156892,),
    model_types=("llada", "lladamoe"), architectures=("LLaDAMoEModelLM",),
    name_markers=("llada-moe", "lladamoe", "llada_moe")))

# LLaDA2.0: block-causal over blocks of 32 (dFactory's block-diffusion SFT configs; the hub config.json has no
# key for it); LLaDA-MoE's tokenizer family (mask 156895 in no config file, eos 156892, <|role_end|>). Every
# released LLaDA2.0 checkpoint is an instruct model without "instruct" in its name: CHECKPOINTS says so.
register_facts(FamilyFacts(
    "llada2_moe", mask_token="<|mask|>", eos_token="<|endoftext|>", eot_token="<|role_end|>", eot_id=None,
    mask_id=156895, add_bos=False, instruct_marker="instruct", paper_drop_ids=(156892,), attention="block_causal",
    block_size=32, model_types=("llada2_moe",), architectures=("LLaDA2MoeModelLM",),
    name_markers=("llada2", "llada-2", "llada_2")))
# SDAR: Qwen3 dense, block-causal; its config.json carries the trained block size (4 for the default release,
# 8..64 for the variants), which wins over this default. Qwen's ChatML ids (<|im_end|> 151645 ends a turn).
register_facts(FamilyFacts(
    "sdar", mask_token="<|MASK|>", eos_token="<|endoftext|>", eot_token="<|im_end|>", eot_id=151645,
    add_bos=False, instruct_marker="chat", paper_drop_ids=(151643,), attention="block_causal", block_size=4,
    model_types=("sdar",), architectures=("SDARForCausalLM",)))

# Released checkpoints (hub ids as their authors publish them; docs/families.md has the sources).
_checkpoint("GSAI-ML/LLaDA-8B-Instruct", "llada")
_checkpoint("GSAI-ML/LLaDA-8B-Base", "llada")
_checkpoint("GSAI-ML/LLaDA-1.5", "llada", instruct=True,
            note="LLaDA-8B-Instruct after VRPO; same tokenizer, ids and chat template")
_checkpoint("GSAI-ML/iLLaDA-8B-Base", "llada", mask_id=5, instruct=False,
            note="LLaDA's architecture; the authors' README: reuse LLaDA's code with mask_id=5")
_checkpoint("GSAI-ML/iLLaDA-8B-Instruct", "llada", mask_id=5, instruct=True,
            note="LLaDA's architecture; the authors' README: reuse LLaDA's code with mask_id=5")
_checkpoint("Zigeng/dParallel-LLaDA-8B-instruct", "llada",
            note="LLaDA-8B-Instruct with a merged LoRA; decoded with dParallel's entropy threshold")
_checkpoint("d3LLM/d3LLM_LLaDA", "llada", instruct=True,
            note="LLaDA-8B-Instruct distilled; decoded with d3LLM's multi-block rule")
_checkpoint("SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora", "llada", instruct=True, base="GSAI-ML/LLaDA-8B-Instruct",
            note="LoRA; trained and decoded with a block-causal mask counted from the prompt's end")
_checkpoint("Dream-org/Dream-v0-Base-7B", "dream")
_checkpoint("Dream-org/Dream-v0-Instruct-7B", "dream")
_checkpoint("Zigeng/dParallel_Dream_7B_Instruct", "dream",
            note="Dream-v0-Instruct-7B with a merged LoRA; decoded with dParallel's entropy threshold")
_checkpoint("d3LLM/d3LLM_Dream", "dream", instruct=True,
            note="Dream-v0-Instruct-7B distilled; decoded with d3LLM's multi-block rule")
_checkpoint("inclusionAI/LLaDA-MoE-7B-A1B-Base", "llada_moe")
_checkpoint("inclusionAI/LLaDA-MoE-7B-A1B-Instruct", "llada_moe")
_checkpoint("inclusionAI/LLaDA-MoE-7B-A1B-Instruct-TD", "llada_moe", instruct=True)
_checkpoint("inclusionAI/LLaDA2.0-mini", "llada2_moe", instruct=True,
            note="decoded with its own threshold rule over blocks of 32 (its hub generate)")
_checkpoint("inclusionAI/LLaDA2.0-flash", "llada2_moe", instruct=True,
            note="decoded with its own threshold rule over blocks of 32 (its hub generate)")
_checkpoint("inclusionAI/LLaDA2.0-mini-preview", "llada2_moe", instruct=True)
_checkpoint("JetLM/SDAR-1.7B-Chat", "sdar", instruct=True)
_checkpoint("JetLM/SDAR-4B-Chat", "sdar", instruct=True)
_checkpoint("JetLM/SDAR-8B-Chat", "sdar", instruct=True,
            note="block 4, 4 denoising steps, its dynamic/static low-confidence rule (SDAR's evaluation code)")


def family_name_of_config_json(raw: dict[str, Any], source: str = "config.json") -> str:
    """The family a ``config.json`` is of: among the families of its ``model_type`` (a file without one is
    LLaDA's, as before), the one naming an entry of its ``architectures``, else the first of them."""
    model_type = raw.get("model_type", "llada")
    candidates = [f for f in FACTS.values() if model_type in f.model_types]
    if not candidates:
        valid = ", ".join(dict.fromkeys(repr(t) for f in FACTS.values() for t in f.model_types))
        raise ConfigError(f"pretrained: {source} has model_type={model_type!r}; valid choices: {valid}")
    named = [f for f in candidates if set(raw.get("architectures") or ()) & set(f.architectures)]
    return (named or candidates)[0].name


def _hub_names(name: str) -> list[str]:
    """Lower-case candidates for a hub id: the value itself, ``owner/name`` of a hub cache folder
    (``models--owner--name/snapshots/<rev>``), and a folder's own name (matched against the name part)."""
    text = name.strip().rstrip("/")
    out = [text.lower()]
    for part in PurePath(text).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            out.append(part[len("models--"):].replace("--", "/", 1).lower())
    out.append(PurePath(text).name.lower())
    return out


def find_checkpoint(*names: str | None, family: str | None = None) -> Checkpoint | None:
    """The released checkpoint ``names`` (``pretrained=`` values, checkpoint folders) refer to: its hub id in
    any case, a hub cache folder of it, or a folder named as its hub name. ``family``: only a checkpoint of
    this family (a folder named like another family's checkpoint is not it)."""
    by_name = {c.hub_id.split("/", 1)[1].lower(): c for c in CHECKPOINTS.values()}
    for name in names:
        if not name:
            continue
        for candidate in _hub_names(name):
            found = CHECKPOINTS.get(candidate) or by_name.get(candidate)
            if found is not None and (family is None or found.family == family):
                return found
    return None


def family_name_of_model(name: str | None) -> str | None:
    """The family a model name (a ``pretrained=`` value) is of: a known checkpoint's, else the family whose
    longest name marker it holds; None when neither says."""
    known = find_checkpoint(name)
    if known is not None:
        return known.family
    low = (name or "").lower()
    hits = [(len(m), f.name) for f in FACTS.values() for m in f.markers if m.lower() in low]
    return max(hits)[1] if hits else None


def instruct_by_name(family: FamilyFacts, names: tuple[str | None, ...]) -> bool:
    """The chat rule on names: a known checkpoint's own, else the family's marker in any of ``names``."""
    known = find_checkpoint(*names, family=family.name)
    if known is not None and known.instruct is not None:
        return known.instruct
    marker = family.instruct_marker
    return marker is not None and any(marker.lower() in (n or "").lower() for n in names)


__all__ = ["Attention", "CHECKPOINTS", "Checkpoint", "FACTS", "FamilyFacts", "family_name_of_config_json",
           "family_name_of_model", "find_checkpoint", "instruct_by_name", "register_facts"]
