"""Model families (LLaDA, Dream, LLaDA-MoE), the interface the engine decodes through, loading and tokenizers."""

from l2pd_eval.model.interface import DiffusionLM, ModelConfig
from l2pd_eval.model.layers import KVCache
from l2pd_eval.model.llada import PRESETS, LLaDA, LLaDAConfig
from l2pd_eval.model.loading import SpecialIds, load_model, load_tokenizer, resolve_dtype, save_model

__all__ = ["DiffusionLM", "LLaDA", "LLaDAConfig", "KVCache", "ModelConfig", "PRESETS", "SpecialIds", "load_model",
           "load_tokenizer", "resolve_dtype", "save_model"]
