"""LLaDA2.0 (``inclusionAI/LLaDA2.0-mini``, ``-flash``): its ``config.json`` (:class:`LLaDA2MoeConfig`) and its
network, a mixture of experts with group-limited sigmoid routing, run block-causally.

Module names mirror the hub checkpoint (``model.word_embeddings``, ``model.layers.{i}.attention.
query_key_value``, ``attention.{query,key}_layernorm``, ``attention.dense``, ``mlp.gate.weight``,
``mlp.gate.expert_bias``, ``mlp.experts.{j}.gate_proj`` (stacked by :mod:`l2pd_eval.model.moe`),
``mlp.shared_experts``, ``lm_head``). What the hub's ``modeling_llada2_moe.py`` computes, and this file too:
one fused q/k/v projection split by heads (q heads, then k, then v), per-head RMSNorm of q and k before
rotary, split-half rotary on the first ``partial_rotary_factor`` of each head with frequencies over those
dims, dense SwiGLU layers below ``first_k_dense_replace``, and in the MoE layers a router in float32:
sigmoid scores, the choice made on scores plus ``expert_bias`` within the ``topk_group`` best of
``n_group`` groups (a group's score: the sum of its two best), the weights the unbiased scores of the
chosen experts renormalised (top-k > 1) and scaled by ``routed_scaling_factor``; experts weighed and
summed in float32; a shared expert added. Attention is block-causal (:mod:`l2pd_eval.model.block_causal`)
over blocks of 32, the block length it was trained with (its config.json has no key for it; a ``block_size``
key, which our tiny checkpoints write, overrides it). Sources: docs/families.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2pd_eval.errors import ConfigError
from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.block_causal import BlockCausalPredictor
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.layers import RMSNorm, Rotary
from l2pd_eval.model.llada_moe import HubRotary, SwiGLU
from l2pd_eval.model.moe import Experts

TRAINED_BLOCK = 32  # inclusionAI/dFactory configs/sft/llada2_*_bd_sft.yaml: block_size 32


@dataclass
class LLaDA2MoeConfig(FileConfig):
    """The subset of LLaDA2.0's ``config.json`` the network needs; names are the file's own
    (``LLaDA2MoeConfig`` of the hub's ``configuration_llada2_moe.py``)."""

    model_type: ClassVar[str] = "llada2_moe"
    architectures: ClassVar[tuple[str, ...]] = ("LLaDA2MoeModelLM",)
    sizes: ClassVar[tuple[str, ...]] = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "vocab_size", "max_position_embeddings",
                                        "num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group",
                                        "topk_group")
    context_key: ClassVar[str] = "max_position_embeddings"

    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = 128
    first_k_dense_replace: int = 1
    num_experts: int = 256
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 512
    num_shared_experts: int | None = 1
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    score_function: str | None = "sigmoid"
    partial_rotary_factor: float = 0.5
    rope_theta: float = 600000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_bias: bool = False
    use_qk_norm: bool = True
    tie_word_embeddings: bool = False
    mask_token_id: int | None = None     # not in the hub file: the family's 156895 (family_facts.py)
    eos_token_id: int | None = 156892
    pad_token_id: int | None = 156892
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

    def __post_init__(self) -> None:
        if self.head_dim is None:  # the hub class's rule
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def block_size(self) -> int:
        """The block length of the attention grid: a ``block_size`` key if the file has one, else 32."""
        return int(self.extra.get("block_size", TRAINED_BLOCK))

    @property
    def mlp_width(self) -> int:
        """The widest per-token MLP activation: k expert rows (each its F-wide hidden and a d-wide copy of the
        token in and out) plus the shared expert, or a dense layer's width."""
        moe = self.num_experts_per_tok * (self.moe_intermediate_size + self.hidden_size)
        moe += self.moe_intermediate_size * (self.num_shared_experts or 0)
        return max(moe, self.intermediate_size if self.first_k_dense_replace else 0)

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
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> LLaDA2MoeConfig:
        return cls.from_dict({**fields, "vocab_size": len(tokenizer), "initializer_range": init_std,
                              "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "pad_token_id": tokenizer.pad_token_id})

    def validate(self) -> None:
        """Reject variants this implementation does not compute, instead of silently computing another net."""
        self.check_choices({
            "hidden_act": (self.hidden_act, {"silu"}),
            "rope_scaling": (self.rope_scaling, {None}),
            # the hub gate computes a sigmoid whatever this says; another value would mean another model
            "score_function": (self.score_function, {"sigmoid", None}),
        })
        where = "config.json (LLaDA2.0)"
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}")
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise ConfigError(f"{where}: partial_rotary_factor={self.partial_rotary_factor} must give an even "
                              f"number of rotary dims in (0, head_dim={self.head_dim}]")
        if self.num_experts % self.n_group or not 0 < self.topk_group <= self.n_group:
            raise ConfigError(f"{where}: num_experts={self.num_experts}, n_group={self.n_group}, topk_group="
                              f"{self.topk_group}: experts must split evenly into groups, topk_group in 1..n_group")
        per_group = self.num_experts // self.n_group
        if per_group < 2 or not 0 < self.num_experts_per_tok <= self.topk_group * per_group:
            raise ConfigError(f"{where}: num_experts_per_tok={self.num_experts_per_tok} must be in 1.."
                              f"{self.topk_group * per_group} (topk_group x experts per group, >= 2 per group)")
        block = self.extra.get("block_size", TRAINED_BLOCK)
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ConfigError(f"{where}: block_size={block!r} must be a positive integer")


# Shapes for random-weight runs (``pretrained=random:<name>``): dFactory's copies of the released config.json
# files (configs/model_configs/llada2_{mini,flash}/), docs/families.md.
PRESETS: dict[str, dict[str, Any]] = {
    "llada2-mini": {},
    "llada2-flash": dict(hidden_size=4096, intermediate_size=9216, num_hidden_layers=32, num_attention_heads=32,
                         moe_intermediate_size=1024),
    "llada2-tiny": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                        num_experts_per_tok=2, moe_intermediate_size=16, n_group=4, topk_group=2,
                        max_position_embeddings=4096, block_size=8, mask_token_id=None, eos_token_id=None,
                        pad_token_id=None),
}


class Gate(nn.Module):
    """The router (``mlp.gate``): float32 sigmoid scores, group-limited top-k on scores + ``expert_bias``."""

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.scale = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.d_model))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(weights [T, k] float32, experts [T, k]) of the tokens ``x`` [T, d]."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias.float()
        t = biased.shape[0]
        groups = biased.view(t, self.n_group, -1)
        best_groups = groups.topk(2, dim=-1).values.sum(-1).topk(self.topk_group, dim=-1).indices
        keep = torch.zeros(t, self.n_group, dtype=torch.bool, device=x.device).scatter_(1, best_groups, True)
        experts = groups.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(t, -1).topk(self.top_k, -1).indices
        weights = scores.gather(1, experts)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.scale, experts


class SparseMoE(nn.Module):
    """Router + experts + the shared expert (``mlp.shared_experts``)."""

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.gate = Gate(cfg)
        self.experts = Experts(cfg.num_experts, cfg.d_model, cfg.moe_intermediate_size)
        if cfg.num_shared_experts is not None:
            self.shared_experts = SwiGLU(cfg.d_model, cfg.moe_intermediate_size * cfg.num_shared_experts)

    def forward(self, h: Tensor) -> Tensor:
        x = h.reshape(-1, h.shape[-1])
        y = self.experts(x, *self.gate(x)).view_as(h)
        return y + self.shared_experts(h) if hasattr(self, "shared_experts") else y


class Attention(nn.Module):
    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim, self.rot = cfg.n_heads, cfg.kv_heads, hd, cfg.rotary_dim
        self.query_key_value = nn.Linear(d, (cfg.n_heads + 2 * cfg.kv_heads) * hd, bias=cfg.use_qkv_bias)
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(hd, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(hd, cfg.rms_norm_eps)
        self.dense = nn.Linear(cfg.n_heads * hd, d, bias=cfg.use_bias)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.rot == self.head_dim:
            return Rotary.apply(x, cos, sin)
        return torch.cat((Rotary.apply(x[..., :self.rot], cos, sin), x[..., self.rot:]), dim=-1)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int, write_index: Tensor | None,
                split_keys: bool = True) -> Tensor:
        b, n, _ = h.shape
        qkv = self.query_key_value(h).view(b, n, self.n_heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = qkv.split((self.n_heads, self.kv_heads, self.kv_heads), dim=2)
        if hasattr(self, "query_layernorm"):  # per head, over the head dim
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        return self.dense(att.transpose(1, 2).reshape(b, n, -1))


class Layer(nn.Module):
    def __init__(self, cfg: LLaDA2MoeConfig, moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = SparseMoE(cfg) if moe else SwiGLU(cfg.d_model, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int,
                write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask, cache, start, kv_len, write_index,
                               split_keys)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Backbone(nn.Module):
    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg, i >= cfg.first_k_dense_replace) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class LLaDA2Moe(BlockCausalPredictor):
    """LLaDA2.0 mask predictor. ``forward`` returns logits for the requested positions only."""

    logit_shift: ClassVar[int] = 0

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.config = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = HubRotary(cfg.rotary_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.word_embeddings

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.norm

    @property
    def head_weight(self) -> Tensor:
        return self.model.word_embeddings.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def init_weights(self, seed: int | None = None) -> None:
        """Random weights (``MaskPredictor.init_weights``); expert biases, buffers, start at zero."""
        super().init_weights(seed)
        for module in self.modules():
            if isinstance(module, Gate):
                module.expert_bias.zero_()
