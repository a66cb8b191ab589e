"""Model families (LLaDA, Dream, LLaDA-MoE), the interface the engine decodes through, loading and tokenizers.

The names below load on first use (PEP 562), so a torch-free submodule (``l2pd_eval.model.tiny``'s command
line, its ``--help``) does not pay for torch.
"""

from importlib import import_module

_LAZY = {
    "DiffusionLM": "interface", "ModelConfig": "interface", "KVCache": "layers", "PRESETS": "llada",
    "LLaDA": "llada", "LLaDAConfig": "llada", "SpecialIds": "loading", "load_model": "loading",
    "load_tokenizer": "loading", "resolve_dtype": "loading", "save_model": "loading",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
