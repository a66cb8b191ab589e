"""Attention of a batch-1 cached chunk over its KV cache as one Triton kernel that splits the keys
(flash-decoding) for any head grouping: ``SpeedConfig.triton_attention``.

A batch-1 cached step asks every query head for ~32 queries over 1-2k keys. PyTorch's key-splitting flash
kernel serves equal head counts (``model.attention``), but grouped heads (Dream: 28 query, 4 key/value
heads) go to SDPA, whose kernels give each (head, query tile) one program and leave the GPU idle. Here
program (h, s) takes query head ``h`` (its key/value head ``h // group``) over key split ``s``, keeps an
online softmax in float32, and writes its partial (unnormalised sum, running max, running denominator);
the last split of a head to arrive merges the partials **in split order** (an atomic counter, as in
``model.skinny``), so the result does not depend on scheduling: eager and graph replays give the same
bits. Rounding differs from SDPA's (another order of sums): tests/test_decode_attention.py states the
tolerance. One row, no mask, 16-bit inputs, head dim a power of two up to 256, at most ``MAX_QUERIES``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from l2pd_eval.model.skinny import INTERPRET, triton

if triton is not None:
    import triton.language as tl

MAX_QUERIES = 128
_ON = False  # set by ``use_triton_attention`` (SpeedConfig.prepare); read by ``model.attention``


def use_triton_attention(on: bool) -> None:
    """Route eligible batch-1 cached attention through the kernel (a process-wide speed switch)."""
    global _ON
    _ON = bool(on)


def enabled() -> bool:
    return _ON


def eligible(q: Tensor, k: Tensor, mask: Tensor | None) -> bool:
    b, h, n, d = q.shape
    return (triton is not None and (q.is_cuda or INTERPRET) and q.dtype in (torch.bfloat16, torch.float16)
            and b == 1 and mask is None and n <= MAX_QUERIES and d <= 256 and d & (d - 1) == 0
            and h % k.shape[1] == 0 and k.stride(-1) == 1 and q.stride(-1) == 1)


if triton is not None:

    @triton.jit
    def decode_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, ws_ptr, ml_ptr, cnt_ptr, n, L, per_split, splits,
                                group, scale, sqh, sqn, skh, skl, svh, svl, soh, son,
                                BQ: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
        h = tl.program_id(0)
        s = tl.program_id(1)
        kvh = h // group
        rq = tl.arange(0, BQ)
        rd = tl.arange(0, D)
        rn = tl.arange(0, BN)
        q_ok = rq[:, None] < n
        q = tl.load(q_ptr + h * sqh + rq[:, None] * sqn + rd[None, :], mask=q_ok, other=0.0)
        m_i = tl.full((BQ,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BQ,), dtype=tl.float32)
        acc = tl.zeros((BQ, D), dtype=tl.float32)
        lo = s * per_split
        k_base = k_ptr + kvh * skh + (lo + rn)[:, None] * skl + rd[None, :]
        v_base = v_ptr + kvh * svh + (lo + rn)[:, None] * svl + rd[None, :]
        for start in range(0, per_split, BN):
            k_ok = (lo + start + rn) < L
            k = tl.load(k_base + start * skl, mask=k_ok[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k)) * scale
            qk = tl.where(k_ok[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.exp(qk - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + start * svl, mask=k_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        o_ptrs = o_ptr + h * soh + rq[:, None] * son + rd[None, :]
        if splits == 1:
            tl.store(o_ptrs, (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=q_ok)
        else:
            part = (h * splits + s) * BQ
            tl.store(ws_ptr + (part + rq[:, None]) * D + rd[None, :], acc)
            tl.store(ml_ptr + (part + rq) * 2, m_i)
            tl.store(ml_ptr + (part + rq) * 2 + 1, l_i)
            tl.debug_barrier()
            arrived = tl.atomic_add(cnt_ptr + h, 1, sem="acq_rel")
            if arrived == splits - 1:  # the last split of this head: merge all, in split order
                big = tl.full((BQ,), float("-inf"), dtype=tl.float32)
                for j in range(0, splits):
                    big = tl.maximum(big, tl.load(ml_ptr + ((h * splits + j) * BQ + rq) * 2, cache_modifier=".cg"))
                num = tl.zeros((BQ, D), dtype=tl.float32)
                den = tl.zeros((BQ,), dtype=tl.float32)
                for j in range(0, splits):
                    base = (h * splits + j) * BQ
                    w = tl.exp(tl.load(ml_ptr + (base + rq) * 2, cache_modifier=".cg") - big)
                    den += w * tl.load(ml_ptr + (base + rq) * 2 + 1, cache_modifier=".cg")
                    num += w[:, None] * tl.load(ws_ptr + (base + rq[:, None]) * D + rd[None, :], cache_modifier=".cg")
                tl.store(o_ptrs, (num / den[:, None]).to(o_ptr.dtype.element_ty), mask=q_ok)
                tl.atomic_xchg(cnt_ptr + h, 0)


class _Scratch:
    """Grown-only per-device buffers, kept alive for the CUDA graphs that hold their addresses."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[torch.device, str], Tensor] = {}
        self.kept: list[Tensor] = []

    def get(self, device: torch.device, name: str, numel: int, dtype: torch.dtype) -> Tensor:
        t = self.bufs.get((device, name))
        if t is None or t.numel() < numel:
            t = torch.zeros(max(numel, 1 << 16), dtype=dtype, device=device)
            self.bufs[(device, name)] = t
            self.kept.append(t)
        return t


_SCRATCH = _Scratch()


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def decode_attention(q: Tensor, k: Tensor, v: Tensor, splits: int | None = None, block_n: int = 64) -> Tensor:
    """Softmax attention of ``q`` [1, H, n, D] over ``k``/``v`` [1, H_kv, L, D] (``eligible`` inputs);
    returns [1, H, n, D], laid out as [1, n, H, D] in memory (the projection that follows reads it so)."""
    _, h, n, d = q.shape
    length = k.shape[2]
    if splits is None:  # about two programs per multiprocessor, at least one key tile each
        splits = max(1, min(-(-2 * _sm_count(q.device) // h), -(-length // block_n)))
    keys = -(-length // splits)  # keys per split, rounded up to whole tiles
    per_split = -(-keys // block_n) * block_n
    splits = -(-length // per_split)
    bq = max(16, 1 << (n - 1).bit_length())
    out = torch.empty(1, n, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    ws = _SCRATCH.get(q.device, "ws", h * splits * bq * d, torch.float32)
    ml = _SCRATCH.get(q.device, "ml", h * splits * bq * 2, torch.float32)
    cnt = _SCRATCH.get(q.device, "cnt", h, torch.int32)
    decode_attention_kernel[(h, splits)](
        q, k, v, out, ws, ml, cnt, n, length, per_split, splits, h // k.shape[1], 1.0 / math.sqrt(d),
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2), out.stride(1), out.stride(2),
        BQ=bq, BN=block_n, D=d, num_warps=4, num_stages=2)
    return out


@torch.library.custom_op("l2pd::decode_attention", mutates_args=())
def decode_attention_op(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """:func:`decode_attention` as an op ``torch.compile`` calls as it is (its scratch and counters live
    outside any graph)."""
    return decode_attention(q, k, v)


@decode_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    _, h, n, d = q.shape
    return q.new_empty(1, n, h, d).transpose(1, 2)
