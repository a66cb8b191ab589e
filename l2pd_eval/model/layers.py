"""The floor every model family stands on: RMSNorm, rotary tables, the KV cache, the random init, and
:class:`MaskPredictor`, the ``nn.Module`` base that gives a family's network the members of
:class:`~l2pd_eval.model.interface.DiffusionLM` it would otherwise write again (device, dtype, cache,
compile, init, and the layer loop of ``forward``).

A family file (``llada.py``, ``dream.py``) keeps what is its own: module names after its checkpoint's keys,
biases and head layout, the output head, and ``logit_shift``. The math here is LLaDA's and Qwen2's alike
(RMSNorm statistics in float32, split-half rotary over the full head dim in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2pd_eval.model.compiling import compile_layers
from l2pd_eval.model.skinny import qkv


class RMSNorm(nn.Module):
    """RMSNorm with statistics in float32 and the weight applied in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """Split-half rotary embedding over the full head dim. The tables are computed in float64 and kept in
    float32 like the reference code's; they are not checkpoint weights (non-persistent buffers)."""

    def __init__(self, head_dim: int, theta: float, max_len: int):
        super().__init__()
        self.head_dim, self.theta, self.max_len = head_dim, theta, max_len
        cos, sin = self._tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self) -> tuple[Tensor, Tensor]:
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        ang = torch.outer(torch.arange(self.max_len, dtype=torch.float64), inv)
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().float(), ang.sin().float()

    def materialize(self, device: str | torch.device) -> None:
        """Compute the tables on the default device and move them to ``device``: a network built on the
        meta device (the loader's way) has none."""
        cos, sin = self._tables()
        self.cos, self.sin = cos.to(device), sin.to(device)

    def tables(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin [B, 1, n, D]; float64 models keep float64 so tests can compare exactly."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.cos.to(work)[position_ids].unsqueeze(1), self.sin.to(work)[position_ids].unsqueeze(1))

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        xf = x.to(cos.dtype)
        return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def project_heads(h: Tensor, projections: tuple[nn.Module, nn.Module, nn.Module], head_dim: int, cos: Tensor,
                  sin: Tensor, parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """q, k (rope applied) and v of the normed layer input ``h`` [b, n, d], by head ([b, H, n, D]), through
    the layer's (q, k, v) projections; ``parts`` names the ones to compute: "qkv" (one kernel when they are
    skinny), "qk" or "v" (dLLM-Cache projects some positions' values only); the others are None."""
    b, n, _ = h.shape
    if parts == "qkv":
        out = qkv(h, *projections)
    else:
        out = tuple(m(h) if p in parts else None for p, m in zip("qkv", projections, strict=True))
    q, k, v = (None if t is None else t.view(b, n, -1, head_dim).transpose(1, 2) for t in out)
    if q is not None:
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
    return q, k, v


@runtime_checkable
class LayerParts(Protocol):
    """What a family's layer exposes besides ``forward`` so a strategy can run its own layer loop over
    chosen positions (``caches/dllm_cache.py``), with the same math as ``forward`` (which is built from
    them): ``attn_input(x)`` the pre-attention norm; ``project(h, cos, sin, parts)`` q/k/v by head
    (:func:`project_heads`); ``attn_output(att)`` [b, H, n, D] -> the attention's residual delta [b, n, d];
    ``mlp_delta(x)`` the MLP's residual delta (its norm included). A layer attends with
    :func:`~l2pd_eval.model.attention.cache_attention`; the network's ``head(h)`` turns hidden rows into
    logits (final norm and output head)."""

    def attn_input(self, x: Tensor) -> Tensor: ...

    def project(self, h: Tensor, cos: Tensor, sin: Tensor,
                parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]: ...

    def attn_output(self, att: Tensor) -> Tensor: ...

    def mlp_delta(self, x: Tensor) -> Tensor: ...


class PreNormLayer(nn.Module):
    """A layer laid out as Qwen2's, under its checkpoint names (``input_layernorm``, ``self_attn`` with
    ``project`` and ``output``, ``post_attention_layernorm``, ``mlp``): Dream's and LLaDA-MoE's ``forward``
    and :class:`LayerParts`. A subclass builds the modules."""

    input_layernorm: nn.Module
    self_attn: nn.Module
    post_attention_layernorm: nn.Module
    mlp: nn.Module

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int,
                write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start, kv_len, write_index,
                               split_keys)
        return x + self.mlp_delta(x)

    def attn_input(self, x: Tensor) -> Tensor:
        return self.input_layernorm(x)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor,
                parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.self_attn.project(h, cos, sin, parts)

    def attn_output(self, att: Tensor) -> Tensor:
        return self.self_attn.output(att)

    def mlp_delta(self, x: Tensor) -> Tensor:
        return self.mlp(self.post_attention_layernorm(x))


@dataclass
class KVCache:
    """Keys/values of every layer over the full sequence: ``k[l]``/``v[l]`` are [B, H_kv, T, D]."""

    k: list[Tensor]
    v: list[Tensor]

    @classmethod
    def empty(cls, cfg: Any, batch: int, length: int, dtype: torch.dtype, device) -> KVCache:
        """Uninitialised buffers for ``cfg``'s ``n_layers``, ``kv_heads`` and ``head_dim``."""
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)],
                   [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)])


@torch.no_grad()
def init_normal(module: nn.Module, std: float, seed: int | None = None) -> None:
    """Random init for testing and benchmarking without weights: RMSNorm weights at one, every other
    parameter normal(0, ``std``), drawn in ``named_parameters`` order from a generator seeded ``seed``."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    norms = {id(m.weight) for m in module.modules() if isinstance(m, RMSNorm)}
    for p in module.parameters():
        if id(p) in norms:
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=gen)


def attention_mask(key_mask: Tensor | None, attn_mask: Tensor | None, queries: int, kv_len: int) -> Tensor | None:
    """The boolean mask every layer hands SDPA (True = may attend), from ``forward``'s two optional masks:
    ``key_mask`` [B, >= kv_len] (one row for every query: [B, 1, 1, kv_len], the fast path) and the general
    ``attn_mask`` [B, queries, >= kv_len] (a row per query: [B, 1, queries, kv_len]), combined by AND."""
    mask = None if key_mask is None else key_mask[:, None, None, :kv_len]
    if attn_mask is None:
        return mask
    if attn_mask.dim() != 3 or attn_mask.shape[1] != queries or attn_mask.shape[2] < kv_len:
        raise ValueError(f"attn_mask must be [batch, {queries} queries, >= {kv_len} keys] bool, got "
                         f"{list(attn_mask.shape)}")
    rows = attn_mask[:, None, :, :kv_len]
    return rows if mask is None else rows & mask


def slices_of(logits_slice: slice | tuple[slice, ...] | None) -> tuple[slice | None, ...]:
    """``forward``'s ``logits_slice`` as a tuple of slices (a single slice or None is a tuple of one)."""
    return tuple(logits_slice) if isinstance(logits_slice, (tuple, list)) else (logits_slice,)


class MaskPredictor(nn.Module):
    """Base of the families' networks. A subclass sets ``config`` and ``rotary`` in ``__init__``, names its
    token embedding and its list of transformer layers (``token_embedding``, ``blocks``), and writes
    ``forward``: usually :meth:`hidden_states`, then its own norm, slice and output head.

    Each layer is called as ``layer(x, cos, sin, mask, layer_cache, start, kv_len, write_index,
    split_keys)`` and attends through :func:`~l2pd_eval.model.attention.attend_over_cache`, so every
    family's cache writes mean the same thing to the caches."""

    config: Any
    rotary: Rotary
    logit_shift: ClassVar[int] = 0
    skinny_head: bool = False  # the output head through the skinny-GEMM op (``model.skinny.use_skinny``)

    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache.empty(self.config, batch, length, self.dtype, self.device)

    def hidden_states(self, input_ids: Tensor, position_ids: Tensor | None, key_mask: Tensor | None,
                      cache: KVCache | None, start: int, kv_len: int | None, write_index: Tensor | None,
                      split_keys: bool, embed_delta: Tensor | None = None,
                      attn_mask: Tensor | None = None) -> Tensor:
        """The last layer's output [B, n, d] for the chunk (before the final norm); the arguments and
        their defaults as in :meth:`~l2pd_eval.model.interface.DiffusionLM.forward`."""
        b, n = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(start, start + n, device=input_ids.device).expand(b, n)
        kv_len = (start + n) if kv_len is None else kv_len
        if cache is None and start != 0:
            raise ValueError("start must be 0 without a cache")
        mask = self.attention_mask(key_mask, position_ids, start, kv_len, write_index)
        if attn_mask is not None:  # the general per-query rule, ANDed with the family's own
            rows = attention_mask(None, attn_mask, n, kv_len)
            mask = rows if mask is None else rows & mask
        cos, sin = self.rotary.tables(position_ids, self.dtype)
        x = self.token_embedding(input_ids)
        if embed_delta is not None:
            x = x + embed_delta.to(x.dtype)
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, cos, sin, mask, layer_cache, start, kv_len, write_index, split_keys)
        return x

    def head(self, h: Tensor) -> Tensor:
        """Logits of hidden rows ``h`` [b, n, d] (the last layer's output): final norm and output head."""
        raise NotImplementedError

    def rows_for(self, x: Tensor, logits_slice: slice | tuple[slice, ...] | None,
                 logits_index: Tensor | None) -> Tensor:
        """The hidden rows whose logits ``forward`` returns, for a family whose row ``i`` predicts position
        ``i``: the ``logits_index`` columns per row, else the ``logits_slice`` parts in order, else all
        (Dream, which predicts one position later, reads its own rows: ``model.dream``)."""
        if logits_index is not None:
            return self.gather_rows(x, logits_index)
        if logits_slice is None:
            return x
        parts = slices_of(logits_slice)
        return x[:, parts[0]] if len(parts) == 1 else torch.cat([x[:, p] for p in parts], dim=1)

    @staticmethod
    def gather_rows(x: Tensor, logits_index: Tensor) -> Tensor:
        """The hidden states [B, k, d] of the chunk columns ``logits_index`` [B, k], per row (``forward``'s
        ``logits_index``: the columns a chunk gathered per row predicts from)."""
        return x.gather(1, logits_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def attention_mask(self, key_mask: Tensor | None, position_ids: Tensor, start: int, kv_len: int,
                       write_index: Tensor | None) -> Tensor | None:
        """What each layer's attention may see: the key mask [B, 1, 1, kv_len] (bidirectional families), or
        None when every key is visible. Block-causal networks override it (``model.block_causal``)."""
        return None if key_mask is None else key_mask[:, None, None, :kv_len]

    def project(self, x: Tensor, weight: Tensor) -> Tensor:
        """The output head ``x @ weight.T``: ``F.linear``, or the skinny-GEMM op once ``use_skinny`` set it."""
        if self.skinny_head:
            from l2pd_eval.model.skinny import few_rows, skinny_linear

            if few_rows(x):
                return skinny_linear(x, weight)
        return F.linear(x, weight)

    def compile_blocks(self, recompile_limit: int | None = 64, autotune: bool = False) -> MaskPredictor:
        """``torch.compile`` every layer (dynamic shapes: one graph for all chunk lengths), fusing the
        float32 RMSNorm, rotary and SwiGLU elementwise passes around the GEMMs. Opt-in: compiling costs
        tens of seconds on first use; docs/benchmarks.md has the measured effect.

        A run meets one compiled graph per guard set (cache or not, key mask or not, a single row or
        several, graph capture's write index...), more than dynamo's default limit of 8, past which it
        silently falls back to eager. ``recompile_limit`` therefore raises dynamo's **process-wide**
        ``recompile_limit`` to at least this value (never lowers it); pass None to leave dynamo's setting
        alone. ``autotune``: see :func:`~l2pd_eval.model.compiling.compile_dynamic`. The engine compiles its
        own statistics when ``GenerationConfig.compile`` is set."""
        compile_layers(self.blocks, recompile_limit, autotune)
        return self

    def init_weights(self, seed: int | None = None) -> None:
        """:func:`init_normal` with the config's ``init_std``."""
        init_normal(self, self.config.init_std, seed)

    def init_buffers(self, device: str | torch.device) -> None:
        """Recompute the buffers no checkpoint holds (every :class:`Rotary`'s tables) on ``device``."""
        for module in self.modules():
            if isinstance(module, Rotary):
                module.materialize(device)
