"""Load checkpoints of every model family (local directory or hub id), random-weight presets, tokenizers and
special ids. Which network a checkpoint gets is decided in one place, :func:`_family_config`."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2pd_eval.errors import ConfigError, ConfigFileNotFound
from l2pd_eval.family_facts import Checkpoint, find_checkpoint
from l2pd_eval.model.family import (
    FAMILIES,
    Family,
    check_supported,
    family_of,
    family_of_config_json,
    family_of_preset,
    preset_names,
)
from l2pd_eval.model.interface import DiffusionLM, ModelConfig

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32, "float64": torch.float64}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``auto`` means bf16 on GPUs (the protocol's dtype) and float32 on CPU (bf16 matmuls are slow there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; valid choices: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_checkpoint(pretrained: str, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a hub id fetched (or found in the HF cache) by huggingface_hub."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            if (path / "adapter_config.json").is_file():
                raise ConfigFileNotFound(f"pretrained={pretrained!r} is a LoRA adapter, not a model: pass "
                                         f"pretrained=<its base model>,adapter={pretrained}")
            raise ConfigFileNotFound(f"pretrained={pretrained!r}: directory has no config.json")
        return path
    if path.exists() or pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise ConfigFileNotFound(
            f"pretrained={pretrained!r} is neither a checkpoint directory nor a hub id (owner/name); "
            f"valid forms: a local checkpoint directory, a hub id (e.g. GSAI-ML/LLaDA-8B-Instruct), or one of "
            f"{preset_names()}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(pretrained, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, gated, or a typo: one message that names the argument
        raise ConfigFileNotFound(f"pretrained={pretrained!r}: could not fetch from the Hugging Face hub ({err})") from err


def read_config(directory: Path) -> ModelConfig:
    """``directory/config.json`` as its family's config; a corrupt file or a bad value is one error naming it."""
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable config.json ({err}); download or copy the checkpoint "
                          "again") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}; download or copy the "
                          "checkpoint again")
    try:
        return family_of_config_json(raw, str(path)).config_class.from_dict(raw)
    except ConfigError as err:
        text = str(err)
        raise ConfigError(f"{path}{text[len('config.json'):]}" if text.startswith("config.json") else
                          f"{path}: {text}") from None


def _family_config(pretrained: str, directory: Path | None) -> tuple[Any, Family]:
    """(config, family) for ``random:<preset>`` or a checkpoint directory: the family dispatch. A family
    the engine cannot decode yet is refused here, before any weights are read."""
    if directory is None:
        preset = pretrained.split(":", 1)[1]
        family = family_of_preset(preset)
        cfg = family.config_class.from_dict(family.presets[preset])
    else:
        cfg = read_config(directory)
        family = family_of(cfg)
    check_supported(family, pretrained)
    return cfg, family


def peek_config(pretrained: str, revision: str | None = None) -> ModelConfig:
    """The config of ``pretrained`` (a folder, hub id or ``random:<preset>``) without reading any weights:
    checks that need the context length or vocabulary run before a long load."""
    directory = None if pretrained.startswith("random:") else resolve_checkpoint(pretrained, revision)
    return _family_config(pretrained, directory)[0]


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConfigFileNotFound(f"{directory}: no model.safetensors or model.safetensors.index.json")


def read_safetensors(path: Path, fix: str, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, str]]:
    """Tensors and header metadata of one ``.safetensors`` file; a truncated or foreign file is one error
    naming the file and ``fix`` (safetensors itself names neither)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as err:
        raise ConfigError(f"{path}: not a readable .safetensors file ({err}): the file is truncated or corrupt; "
                          f"{fix}") from None


def _check_shapes(model: DiffusionLM, state: dict[str, torch.Tensor], pretrained: str, directory: Path) -> None:
    """config.json decides every shape; weights of other shapes mean the two files do not belong together."""
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise ConfigError(
            f"pretrained={pretrained!r}: the weights do not match {directory / 'config.json'} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); check n_layers and "
            f"weight_tying in config.json, or use the config.json that came with these weights")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"pretrained={pretrained!r}: {directory / 'config.json'} does not match the weights: {k} has shape "
            f"{list(state[k].shape)} in the weights but config.json implies {list(expected[k].shape)} "
            f"({len(wrong)} tensor(s) differ). Check config.json's d_model, n_heads, n_kv_heads, mlp_hidden_size, "
            f"vocab_size / embedding_size, or use the config.json that came with these weights")


def checkpoint_identity(pretrained: str, revision: str | None = None, seed: int = 0,
                        adapter: str | None = None) -> dict[str, str]:
    """What a checkpoint is, wherever it lies: ``family``, ``name`` (a hub id as given, a local folder by its
    own name, ``random:<preset>``) and ``fingerprint``, a short hash of config.json and of each weight file's
    size, first and last MiB (fine-tunes of one architecture differ there; a full hash of 16 GB is not
    needed to tell checkpoints apart). Filters record the identity they were trained on; sidecars and
    baselines record it instead of a machine's absolute path."""
    if pretrained.startswith("random:"):
        cfg, family = _family_config(pretrained, None)
        digest = hashlib.sha256(f"{pretrained}:seed={seed}".encode()).hexdigest()[:16]
        return {"family": family.name, "name": f"{pretrained} (seed {seed})", "fingerprint": digest}
    directory = resolve_checkpoint(pretrained, revision)
    family = family_of(read_config(directory))  # also checks config.json, before any weights are read
    h = hashlib.sha256((directory / "config.json").read_bytes())
    files = _weight_files(directory)
    if adapter:  # a LoRA adapter changes the weights: its files count too (each file's size and ends)
        files += sorted(p for p in Path(adapter).expanduser().rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        h.update(str(size).encode())
        with file.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    local = Path(pretrained).expanduser().is_dir()
    name = "/".join(directory.resolve().parts[-2:]) if local else pretrained + (f"@{revision}" if revision else "")
    if adapter:
        folder = Path(adapter).expanduser()
        name += f" + adapter {'/'.join(folder.resolve().parts[-2:]) if folder.is_dir() else adapter}"
    return {"family": family.name, "name": name, "fingerprint": h.hexdigest()[:16]}


def check_vocab(tokenizer: Any, config: ModelConfig, tokenizer_name: str, model_name: str) -> None:
    """A token id past the embedding would fail deep inside the forward pass; refuse the pair at load."""
    size = len(tokenizer)
    if size > config.padded_vocab:
        raise ConfigError(
            f"tokenizer={tokenizer_name!r} has {size} tokens but pretrained={model_name!r} has only "
            f"{config.padded_vocab} embedding rows, so its ids would run past the model's vocabulary: use the "
            f"tokenizer that belongs to this model (tokenizer=<its directory or hub id>)")


def load_model(pretrained: str, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
               revision: str | None = None, seed: int = 0, adapter: str | None = None) -> DiffusionLM:
    """Build a network of the checkpoint's family from a checkpoint directory, a hub id, or
    ``random:<preset>`` (random weights, e.g. the 8B shape); ``adapter``: a LoRA adapter (folder or hub id)
    merged into it (``model/adapter.py``)."""
    torch_dtype = resolve_dtype(dtype, device)
    if adapter is not None:
        from l2pd_eval.model.adapter import merge_adapter

        model = load_model(pretrained, torch_dtype, device, revision, seed)
        return merge_adapter(model, adapter, family_of(model.config).name, revision)
    if pretrained.startswith("random:"):
        return random_model(_family_config(pretrained, None)[0], torch_dtype, device, seed)
    directory = resolve_checkpoint(pretrained, revision)
    cfg, family = _family_config(pretrained, directory)
    with torch.device("meta"):
        model = family.model_class(cfg)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        state.update(read_safetensors(file, "download or copy the checkpoint again", device)[0])
    state = {k: v.to(torch_dtype) for k, v in state.items()}
    _check_shapes(model, state, pretrained, directory)
    model.load_state_dict(state, assign=True)
    model.init_buffers(device)
    model.name_or_path = str(pretrained)
    # A released checkpoint whose facts differ from its family's (iLLaDA's mask id): family_facts.CHECKPOINTS.
    model.checkpoint = find_checkpoint(pretrained, str(directory), family=family.name)
    return model.eval().requires_grad_(False)  # an inference harness: no autograd graph, ever


def random_model(cfg: ModelConfig, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> DiffusionLM:
    """A network of ``cfg``'s family with random weights (``init_weights(seed)``)."""
    family = family_of(cfg)
    check_supported(family, "random")
    # Built on meta and materialised in the target dtype: an 8B float32 detour would need 32 GB.
    with torch.device("meta"):
        model = family.model_class(cfg).to(dtype)
    model.to_empty(device=device)
    model.init_buffers(device)
    model.init_weights(seed)
    model.name_or_path = "random"
    model.checkpoint = None
    return model.eval().requires_grad_(False)


def save_model(model: DiffusionLM, directory: str | Path, dtype: torch.dtype | None = None,
               tokenizer: Any = None) -> Path:
    """Write config.json + model.safetensors with the original key names (what :func:`load_model` reads)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype else v).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    with open(directory / "config.json", "w") as fh:
        json.dump(cfg, fh, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


#: Files of which a tokenizer folder has at least one (fast tokenizer, its config, sentencepiece, BPE vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(path: str | Path, revision: str | None = None, argument: str = "tokenizer"):
    """The tokenizer of a checkpoint folder or hub id; ``argument`` (``tokenizer`` or ``pretrained``) is what
    the errors name: a path that does not exist, a folder without tokenizer files, one that does not load."""
    from transformers import AutoTokenizer

    if str(path).startswith("random:"):
        raise ConfigError(f"pretrained={path!r} has no tokenizer; pass tokenizer=<dir or hub id> in model_args")
    local = Path(str(path)).expanduser()
    if not local.is_dir() and (local.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1):
        raise ConfigFileNotFound(f"{argument}={str(path)!r} is not a folder (and not a hub id owner/name); pass "
                                 "tokenizer=<the model's checkpoint folder or hub id>")
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigFileNotFound(
            f"{argument}={str(path)!r}: the folder has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer files that came with the model into it, or pass tokenizer=<folder or hub id>")
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if not local.is_dir():
        kwargs["trust_remote_code"] = os.environ.get("L2PD_TRUST_REMOTE_CODE", "0") == "1"
    from transformers.utils import logging as hf_logging

    # AutoTokenizer peeks at config.json and warns that it does not know model_type "llada", or (Dream's
    # config.json, Qwen2-style) that the key rope_scaling is deprecated: harmless noise for a tokenizer.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`rope_scaling` is deprecated", category=FutureWarning)
            return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as err:  # offline hub id, a corrupt tokenizer.json, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{argument}={str(path)!r}: could not load its tokenizer ({first}); check the folder's "
                          "tokenizer files, or for a hub id the network / HF_HUB_OFFLINE and the HF cache") from None
    finally:
        hf_logging.set_verbosity(previous)


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the decoder needs. ``eot`` is the set that ends an answer (end-of-text and end-of-turn);
    ``bos`` is what a family with ``add_bos`` puts before plain prompts (None: the tokenizer has none)."""

    mask: int
    eos: int
    eot: tuple[int, ...] = field(default=())
    bos: int | None = None

    @property
    def end_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.eos, *self.eot)))

    @classmethod
    def resolve(cls, tokenizer=None, config: ModelConfig | None = None, mask_id: int | None = None,
                eos_id: int | None = None, eot_ids: tuple[int, ...] | list[int] | None = None,
                checkpoint: Checkpoint | None = None) -> SpecialIds:
        """Overrides first, then a known ``checkpoint``'s own ids (``load_model`` sets ``model.checkpoint``;
        iLLaDA's mask id 5), then the tokenizer's special tokens (spelt as the model family spells them), then
        config.json, then the family's defaults."""
        family = FAMILIES["llada"] if config is None else family_of(config)
        eot_given = eot_ids is not None
        if mask_id is None and checkpoint is not None:
            mask_id = checkpoint.mask_id

        def from_tok(token: str) -> int | None:
            if tokenizer is None:
                return None
            idx = tokenizer.convert_tokens_to_ids(token)
            return None if idx is None or idx == tokenizer.unk_token_id else int(idx)

        mask = mask_id if mask_id is not None else from_tok(family.mask_token)
        if mask is None and config is not None:
            mask = config.mask_token_id
        if mask is None and family.mask_id is not None and (config is None or family.mask_id < config.vocab_size):
            mask = family.mask_id
        eos = eos_id if eos_id is not None else from_tok(family.eos_token)
        if eos is None and tokenizer is not None and tokenizer.eos_token_id is not None:
            eos = int(tokenizer.eos_token_id)
        if eos is None and config is not None:
            eos = config.eos_token_id
        if mask is None or eos is None:
            raise ConfigError("cannot find the mask / end-of-text token ids in tokenizer or config.json; "
                              "pass mask_id=<int> and eos_id=<int> in model_args")
        if eot_ids is None:
            turn = from_tok(family.eot_token)
            if turn is None and family.eot_id is not None and (config is None or family.eot_id < config.vocab_size):
                turn = family.eot_id
            eot_ids = (eos,) if turn is None else (eos, turn)
        bos = None if tokenizer is None or tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        if bos is None and config is not None:
            bos = getattr(config, "bos_token_id", None)
        if config is not None:  # an id past the embedding would fail deep inside the first forward pass
            rows = config.padded_vocab
            for name, ids, given in (("mask_id", (mask,), mask_id is not None), ("eos_id", (eos,), eos_id is not None),
                                     ("eot_ids", tuple(eot_ids), eot_given)):
                bad = [int(i) for i in ids if not 0 <= int(i) < rows]
                if bad:
                    where = "as given" if given else "from the tokenizer / config.json"
                    raise ConfigError(f"{name}={';'.join(map(str, bad))} ({where}) is outside the model's vocabulary "
                                      f"of {rows} ids (0..{rows - 1}); pass {name}=<an id below {rows}>, or the "
                                      "tokenizer that belongs to this model")
        return cls(mask=int(mask), eos=int(eos), eot=tuple(int(i) for i in eot_ids), bos=bos)
