"""Compact LLaDA network (bidirectional LLaMA-style transformer) with a positional KV-cache interface.

Module names mirror the hub checkpoint (``model.transformer.blocks.{i}.q_proj`` ...), so a state dict
loads without renaming. The cache is a per-layer buffer over the *whole* sequence: a forward over the
chunk ``[start, start + n)`` writes its fresh keys/values into that slice and attends to ``[:kv_len]``.
Prefix cache and dual cache are then the same call with a different chunk (see ``l2pd_eval.caches``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.compiling import compile_layers
from l2pd_eval.model.config import LLaDAConfig


class RMSNorm(nn.Module):
    """LLaDA's RMSNorm: statistics in float32, weight applied in the input dtype."""

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
    """Split-half rotary embedding over the full head dim, computed in float32 like the reference."""

    def __init__(self, head_dim: int, theta: float, max_len: int):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def tables(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin [B, 1, n, D]; float64 models keep float64 so tests can compare exactly."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.cos.to(work)[position_ids].unsqueeze(1), self.sin.to(work)[position_ids].unsqueeze(1))

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        xf = x.to(cos.dtype)
        return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys/values of every layer over the full sequence: ``k[l]``/``v[l]`` are [B, H_kv, T, D]."""

    k: list[Tensor]
    v: list[Tensor]

    @classmethod
    def empty(cls, cfg: LLaDAConfig, batch: int, length: int, dtype: torch.dtype, device) -> KVCache:
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)],
                   [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)])


class Block(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.ff_proj = nn.Linear(d, cfg.hidden_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.hidden_size, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int,
                write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        b, n, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, n, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.d_model),
            blocks=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        ))
        if not cfg.weight_tying:
            self.transformer["ff_out"] = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)


class LLaDA(nn.Module):
    """LLaDA mask predictor. ``forward`` returns logits for the requested positions only."""

    logit_shift: ClassVar[int] = 0  # position i is predicted from its own hidden state (Dream: from i - 1)

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.model = _Transformer(cfg)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.wte.weight.dtype

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache.empty(self.config, batch, length, self.dtype, self.device)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        key_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        start: int = 0,
        kv_len: int | None = None,
        logits_slice: slice | None = None,
        write_index: Tensor | None = None,
        split_keys: bool = True,
    ) -> Tensor:
        """Logits [B, n', V] for ``input_ids`` occupying absolute positions ``[start, start + n)``.

        Without a cache the chunk attends to itself (``start`` must be 0). With one, the chunk's fresh
        K/V overwrite the cache at its slice and the chunk attends to ``cache[:kv_len]``; ``key_mask``
        ([B, kv_len], True = visible) hides padding and cut-off positions. ``logits_slice`` is relative
        to the chunk: the vocabulary projection is the largest matmul, so only the block gets it.
        ``write_index`` (device tensor of the chunk's absolute positions) replaces ``start`` for cache
        writes, so the call has no Python-int dependence on the block and can be captured in a CUDA graph.
        ``split_keys``: allow the key-splitting attention kernel (``model.attention.cache_attention``).
        """
        b, n = input_ids.shape
        t = self.model.transformer
        if position_ids is None:
            position_ids = torch.arange(start, start + n, device=input_ids.device).expand(b, n)
        kv_len = (start + n) if kv_len is None else kv_len
        if cache is None and start != 0:
            raise ValueError("start must be 0 without a cache")
        mask = None if key_mask is None else key_mask[:, None, None, :kv_len]
        cos, sin = self.rotary.tables(position_ids, self.dtype)
        x = t.wte(input_ids)
        for i, block in enumerate(t.blocks):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, cos, sin, mask, layer_cache, start, kv_len, write_index, split_keys)
        if logits_slice is not None:
            x = x[:, logits_slice]
        x = t.ln_f(x)
        head = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        return F.linear(x, head)[..., : self.config.vocab_size]

    def compile_blocks(self, recompile_limit: int | None = 64, autotune: bool = False) -> LLaDA:
        """``torch.compile`` every block (dynamic shapes: one graph for all chunk lengths), fusing the
        float32 RMSNorm, rotary and SwiGLU elementwise passes around the GEMMs. Opt-in: compiling costs
        tens of seconds on first use; docs/benchmarks.md has the measured effect.

        A run meets one compiled graph per guard set (cache or not, key mask or not, a single row or
        several, graph capture's write index...), more than dynamo's default limit of 8, past which it
        silently falls back to eager. ``recompile_limit`` therefore raises dynamo's **process-wide**
        ``recompile_limit`` to at least this value (never lowers it); pass None to leave dynamo's setting
        alone. ``autotune``: see :func:`~l2pd_eval.model.compiling.compile_dynamic`. The engine compiles its
        own statistics when ``GenerationConfig.compile`` is set."""
        compile_layers(self.model.transformer.blocks, recompile_limit, autotune)
        return self

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Random init (normal, std ``init_std``; norms at one) for testing and benchmarking without weights."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, self.config.init_std, generator=gen)
