"""LLaDA-MoE (``inclusionAI/LLaDA-MoE-7B-A1B-*``): its ``config.json`` (:class:`LLaDAMoEConfig`) and its
network, an OLMoE-style mixture of experts run bidirectionally, behind the families' interface.

Module names mirror the hub checkpoint (``model.layers.{i}.self_attn.q_proj``, ``mlp.gate``,
``mlp.experts.{j}.gate_proj`` ...; :mod:`l2pd_eval.model.moe` keeps the experts stacked under those names).
What the hub's ``modeling_lladamoe.py`` computes, and this file too: per-head RMSNorm of q and k over the head
dim before rotary (``qk_layernorm``), split-half rotary on the first ``partial_rotary_factor`` of each head,
router softmax in float32 over all experts (plus ``expert_bias`` when enabled), top-k with **no**
renormalisation whatever ``norm_topk_prob`` says (the hub block hard-codes it off), weights cast to the
activation dtype, an optional shared expert and dense layers (``moe_layer_freq`` 0), position i predicted from
its own hidden state. Sources and what the hub file computes differently: docs/families.md.

One deliberate difference: the hub file never applies an attention mask (every layer drops it), so a
left-padded batch there would let real tokens attend to padding. The engine hides padding with the key mask
the other families take, which makes a padded row compute what the hub file computes for that row alone
(batched == unbatched); docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.layers import KVCache, MaskPredictor, PreNormLayer, RMSNorm, Rotary
from l2pd_eval.model.moe import Experts


@dataclass
class LLaDAMoEConfig(FileConfig):
    """The subset of LLaDA-MoE's ``config.json`` the network needs; names are the file's own (the hub's
    ``LLaDAConfig``, whose ``model_type`` is ``"llada"`` like LLaDA-8B's: ``architectures`` tells them apart)."""

    model_type: ClassVar[str] = "llada"
    architectures: ClassVar[tuple[str, ...]] = ("LLaDAMoEModelLM",)

    vocab_size: int = 157184
    hidden_size: int = 2048
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 16
    num_experts: int = 64
    num_experts_per_tok: int = 8
    expert_intermediate_size: int = 1024
    dense_intermediate_size: int = 8192
    shared_expert_intermediate_size: int | None = None
    moe_layer_freq: list[int] | None = None  # per layer: 1 MoE, 0 dense; None: every layer MoE
    moe_router_enable_expert_bias: bool | None = None
    moe_router_score_function: str | None = "softmax"
    norm_topk_prob: bool | None = False      # read by the hub class, ignored by its MoE block (module docstring)
    qk_layernorm: bool | None = True
    partial_rotary_factor: float = 1.0
    rope_theta: float = 50000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    attention_bias: bool = False
    clip_qkv: float | None = None
    tie_word_embeddings: bool = False
    mask_token_id: int | None = None        # not in the hub file: the family's 156895 (family_facts.py)
    eos_token_id: int | None = 156892
    pad_token_id: int | None = 156892
    bos_token_id: int | None = None
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
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def layer_is_moe(self) -> list[bool]:
        return [bool(f) for f in self.moe_layer_freq] if self.moe_layer_freq is not None else [True] * self.n_layers

    @property
    def mlp_width(self) -> int:
        """The widest per-token MLP activation: k expert rows (each its F-wide hidden and a d-wide copy of the
        token in and out) plus the shared expert, or a dense layer's width."""
        moe = self.num_experts_per_tok * (self.expert_intermediate_size + self.hidden_size)
        moe += self.shared_expert_intermediate_size or 0
        return max(moe, self.dense_intermediate_size if not all(self.layer_is_moe) else 0)

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
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> LLaDAMoEConfig:
        return cls.from_dict({**fields, "vocab_size": len(tokenizer), "initializer_range": init_std,
                              "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "pad_token_id": tokenizer.pad_token_id})

    def validate(self) -> None:
        """Reject variants this implementation does not compute, instead of silently computing another net."""
        self.check_choices({
            "hidden_act": (self.hidden_act, {"silu"}),
            "rope_scaling": (self.rope_scaling, {None}),
            # the hub block computes a softmax whatever this says; another value would mean another model
            "moe_router_score_function": (self.moe_router_score_function, {"softmax", None}),
        })
        where = "config.json (LLaDA-MoE)"
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.kv_heads:
            raise ValueError(f"{where}: hidden_size={self.hidden_size}, num_attention_heads="
                             f"{self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads} are inconsistent")
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise ValueError(f"{where}: partial_rotary_factor={self.partial_rotary_factor} must give an even "
                             f"number of rotary dims in (0, head_dim={self.head_dim}]")
        if self.moe_layer_freq is not None and (len(self.moe_layer_freq) != self.num_hidden_layers
                                                or not set(self.moe_layer_freq) <= {0, 1}):
            raise ValueError(f"{where}: moe_layer_freq={self.moe_layer_freq} must hold one 0 (dense) or 1 (MoE) "
                             f"per layer ({self.num_hidden_layers} layers)")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"{where}: num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts="
                             f"{self.num_experts}")
        if self.shared_expert_intermediate_size is not None and self.shared_expert_intermediate_size <= 0:
            raise ValueError(f"{where}: shared_expert_intermediate_size={self.shared_expert_intermediate_size}; "
                             "use null for no shared expert")


# Shapes for random-weight runs (``pretrained=random:<name>``). llada-moe-7b: the released shape (16 layers of
# 64 experts, top-8, width 1024; 7.36 B parameters, ~1.4 B active), docs/families.md has the sources.
PRESETS: dict[str, dict[str, Any]] = {
    "llada-moe-7b": dict(moe_layer_freq=[1] * 16),
    "llada-moe-tiny": dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, expert_intermediate_size=32,
                           dense_intermediate_size=96, moe_layer_freq=[1, 1], max_position_embeddings=1024,
                           mask_token_id=None, eos_token_id=None, pad_token_id=None),
}


class HubRotary(Rotary):
    """The hub file's rotary tables: inverse frequencies and angles in float32 (``Rotary`` takes float64
    angles, which rounds differently by up to 1e-6 at these positions)."""

    def _tables(self) -> tuple[Tensor, Tensor]:
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        ang = torch.outer(torch.arange(self.max_len, dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos(), ang.sin()


class SwiGLU(nn.Module):
    """A dense MLP (``mlp`` of a dense layer, ``shared_expert``)."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, width, bias=False)
        self.up_proj = nn.Linear(d, width, bias=False)
        self.down_proj = nn.Linear(width, d, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class SparseMoE(nn.Module):
    """Router (``gate``) + experts: softmax in float32, top-k, no renormalisation."""

    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.d_model, cfg.num_experts, bias=False)
        self.experts = Experts(cfg.num_experts, cfg.d_model, cfg.expert_intermediate_size)
        self.expert_bias: Tensor | None
        if cfg.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))
        else:
            self.expert_bias = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(weights [T, k] in ``x``'s dtype, experts [T, k]) of the tokens ``x`` [T, d]."""
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:  # shifts the choice and the weights alike, kept in float32 as the
            probs = (probs + self.expert_bias).float()  # hub block's in-place add keeps it
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        return weights.to(x.dtype), experts

    def forward(self, h: Tensor) -> Tensor:
        x = h.reshape(-1, h.shape[-1])
        return self.experts(x, *self.route(x)).view_as(h)


class Attention(nn.Module):
    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim, self.rot = cfg.n_heads, cfg.kv_heads, hd, cfg.rotary_dim
        self.clip = cfg.clip_qkv
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.attention_bias)
        if cfg.qk_layernorm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.rot == self.head_dim:
            return Rotary.apply(x, cos, sin)
        return torch.cat((Rotary.apply(x[..., :self.rot], cos, sin), x[..., self.rot:]), dim=-1)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int, write_index: Tensor | None,
                split_keys: bool = True) -> Tensor:
        q, k, v = self.project(h, cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        return self.output(att)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor,
                parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """q, k (normed, rope applied) and v by head; ``parts`` as in ``model.layers.project_heads``."""
        b, n, _ = h.shape
        heads = {"q": self.n_heads, "k": self.kv_heads, "v": self.kv_heads}
        q, k, v = (getattr(self, f"{p}_proj")(h).view(b, n, heads[p], self.head_dim) if p in parts else None
                   for p in "qkv")
        if q is not None and hasattr(self, "q_norm"):  # per head, over the head dim
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (None if t is None else (t if self.clip is None else t.clamp(-self.clip, self.clip)).transpose(1, 2)
                   for t in (q, k, v))
        if q is not None:
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        return q, k, v

    def output(self, att: Tensor) -> Tensor:
        b, _, n, _ = att.shape
        return self.o_proj(att.transpose(1, 2).reshape(b, n, -1))


class Layer(PreNormLayer):
    def __init__(self, cfg: LLaDAMoEConfig, moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = SparseMoE(cfg) if moe else SwiGLU(cfg.d_model, cfg.dense_intermediate_size)
        if moe and cfg.shared_expert_intermediate_size is not None:
            self.shared_expert = SwiGLU(cfg.d_model, cfg.shared_expert_intermediate_size)

    def mlp_delta(self, x: Tensor) -> Tensor:  # with the shared expert
        h = self.post_attention_layernorm(x)
        y = self.mlp(h)
        if hasattr(self, "shared_expert"):
            y = y + self.shared_expert(h)
        return y


class _Backbone(nn.Module):
    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg, moe) for moe in cfg.layer_is_moe)
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class LLaDAMoE(MaskPredictor):
    """LLaDA-MoE mask predictor. ``forward`` returns logits for the requested positions only."""

    logit_shift: ClassVar[int] = 0

    def __init__(self, cfg: LLaDAMoEConfig):
        super().__init__()
        self.config = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = HubRotary(cfg.rotary_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        key_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        start: int = 0,
        kv_len: int | None = None,
        logits_slice: slice | tuple[slice, ...] | None = None,
        write_index: Tensor | None = None,
        split_keys: bool = True,
        embed_delta: Tensor | None = None,
        attn_mask: Tensor | None = None,
        logits_index: Tensor | None = None,
    ) -> Tensor:
        """Logits [B, n', V] for the ``logits_slice`` positions of ``input_ids`` occupying absolute positions
        ``[start, start + n)`` (or its ``logits_index`` columns, per row): the contract of
        :meth:`~l2pd_eval.model.interface.DiffusionLM.forward`."""
        x = self.hidden_states(input_ids, position_ids, key_mask, cache, start, kv_len, write_index, split_keys,
                               embed_delta=embed_delta, attn_mask=attn_mask)
        return self.head(self.rows_for(x, logits_slice, logits_index))

    def head(self, h: Tensor) -> Tensor:
        weight = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return F.linear(self.model.norm(h), weight)

    def init_weights(self, seed: int | None = None) -> None:
        """Random weights (``MaskPredictor.init_weights``); expert biases, buffers, start at zero."""
        super().init_weights(seed)
        for module in self.modules():
            if isinstance(module, SparseMoE) and module.expert_bias is not None:
                module.expert_bias.zero_()
