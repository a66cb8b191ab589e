"""SDAR (``JetLM/SDAR-{1.7B,4B,8B}-Chat``): its ``config.json`` (:class:`SDARConfig`) and its network, Qwen3's
dense layout run block-causally behind the families' interface.

Module names mirror the hub checkpoint (``model.layers.{i}.self_attn.q_proj``, ``self_attn.q_norm``,
``mlp.gate_proj`` ..., ``lm_head``). What the hub's ``modeling_sdar.py`` computes, and this file too:
per-head RMSNorm of q and k over the head dim before rotary, split-half rotary over the full head in
float32 (theta 1e6), ``head_dim`` from the file (SDAR-4B: 32 heads x 128 != hidden 2560), grouped KV
heads, SwiGLU, position i predicted from its own hidden state, and attention restricted to the token's
block and earlier ones, blocks of ``block_size`` (config.json) counted from position 0
(:mod:`l2pd_eval.model.block_causal`). Sources: docs/families.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from l2pd_eval.errors import ConfigError
from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.block_causal import BlockCausalPredictor
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.layers import RMSNorm, Rotary
from l2pd_eval.model.llada_moe import HubRotary, SwiGLU


@dataclass
class SDARConfig(FileConfig):
    """The subset of SDAR's ``config.json`` the network needs; names are the file's own (Qwen3's plus
    ``block_size``, the block length it was trained with)."""

    model_type: ClassVar[str] = "sdar"
    architectures: ClassVar[tuple[str, ...]] = ("SDARForCausalLM",)
    sizes: ClassVar[tuple[str, ...]] = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                                        "block_size")
    context_key: ClassVar[str] = "max_position_embeddings"

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    block_size: int = 4
    mask_token_id: int | None = 151669
    eos_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    pad_token_id: int | None = 151643
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size

    @property
    def padded_vocab(self) -> int:
        return self.vocab_size

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @property
    def init_std(self) -> float:
        return self.initializer_range

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> SDARConfig:
        return cls.from_dict({**fields, "vocab_size": len(tokenizer), "initializer_range": init_std,
                              "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.eos_token_id})

    def validate(self) -> None:
        """Reject variants this implementation does not compute, instead of silently computing another net."""
        self.check_choices({
            "hidden_act": (self.hidden_act, {"silu"}),
            "use_sliding_window": (self.use_sliding_window, {False}),
            "rope_scaling": (self.rope_scaling, {None}),
        })
        if self.num_attention_heads % self.num_key_value_heads or self.head_dim % 2:
            raise ConfigError(f"config.json: num_attention_heads={self.num_attention_heads}, num_key_value_heads="
                              f"{self.num_key_value_heads}, head_dim={self.head_dim} are inconsistent")


# Shapes for random-weight runs (``pretrained=random:<name>``): SDAR-8B-Chat's and SDAR-4B-Chat's config.json
# (JetAstra/SDAR training/model/SDAR-*-Chat/), docs/families.md.
PRESETS: dict[str, dict[str, Any]] = {
    "sdar-8b": {},
    "sdar-4b": dict(hidden_size=2560, intermediate_size=9728),
    "sdar-tiny": dict(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      block_size=8, mask_token_id=None, eos_token_id=None, bos_token_id=None, pad_token_id=None),
}


class Attention(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, d, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int, write_index: Tensor | None,
                split_keys: bool = True) -> Tensor:
        b, n, _ = h.shape
        q = self.q_norm(self.q_proj(h).view(b, n, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(h).view(b, n, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        return self.o_proj(att.transpose(1, 2).reshape(b, n, -1))


class Layer(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int,
                write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start, kv_len, write_index,
                               split_keys)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Backbone(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class SDAR(BlockCausalPredictor):
    """SDAR mask predictor. ``forward`` returns logits for the requested positions only."""

    logit_shift: ClassVar[int] = 0

    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.config = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = HubRotary(cfg.head_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.norm

    @property
    def head_weight(self) -> Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

