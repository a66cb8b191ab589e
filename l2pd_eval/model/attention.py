"""Attention of a short query chunk over a KV cache: pick the kernel that splits the keys across the GPU.

A batch-1 cached step asks 32 heads x 32 queries to read 1000-2000 keys each. SDPA dispatches that to the
cuDNN flash kernel on Hopper, which gives each (row, head, query tile) one thread block: 32 blocks on a
132-SM H100, and the cache is read far below the memory bandwidth. PyTorch's FlashAttention-2
kernel cuts the keys into chunks itself when (rows x heads x query tiles) leave most SMs idle and merges the
chunks by their log-sum-exp (flash-decoding); docs/benchmarks.md (item 13) has the measured per-layer
times. Elsewhere SDPA's own choice stands. Whether to use it at all is the caller's ``split_keys`` argument
(bench/bench_step.py --no-split-kv measures the step without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from l2pd_eval.model import decode_attention


@torch.compiler.assume_constant_result  # a device property: no guard and no graph break when compiled
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def flash_splits_keys(q: Tensor, mask: Tensor | None, enable_gqa: bool = False) -> bool:
    """Whether ``q`` [B, H, n, D] over the cache goes to the key-splitting flash kernel.

    FlashAttention-2 splits the keys when (rows x heads x 64-query tiles) would fill fewer than 80% of the
    SMs (its own heuristic, mirrored here). Measured, that wins at batch 1 (32 or 128 queries) but not at
    batch 2, where cuDNN's kernel is already as fast (profile_step.py, part attn_choice); hence one row only.
    The flash kernel takes no mask and wants 16-bit floats and a head dim that is a multiple of 8 up to
    256; equal query and key heads only, as grouped heads were not measured."""
    b, h, n, d = q.shape
    if (not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or b != 1
            or mask is not None or enable_gqa or d % 8 or d > 256):
        return False
    return h * -(-n // 64) < 0.8 * _sm_count(q.device.index or 0)


def cache_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, enable_gqa: bool = False,
                    split_keys: bool = True) -> Tensor:
    """Softmax attention ``q`` over ``k``/``v`` ([B, H, *, D]); ``mask`` [B, 1, 1, L] True = visible.
    ``split_keys`` allows the key-splitting flash kernel where ``flash_splits_keys`` picks it.

    ``enable_gqa`` comes from the config, not from ``k.shape``: under ``torch.compile(dynamic=True)`` the
    cache's head dim is symbolic, and a symbolic flag made inductor lower SDPA differently in the eager
    and the graph-captured step (their logits stopped being bit-identical)."""
    flash = split_keys and flash_splits_keys(q, mask, enable_gqa)
    if not flash and decode_attention.enabled() and decode_attention.eligible(q, k, mask):
        return decode_attention.decode_attention_op(q, k, v)  # SpeedConfig.triton_attention: grouped heads
    if flash:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=enable_gqa)


def attend_over_cache(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None,
                      start: int, kv_len: int, write_index: Tensor | None, enable_gqa: bool,
                      split_keys: bool = True) -> Tensor:
    """One layer's attention for a chunk at ``[start, start + n)``: write its fresh keys/values into the
    layer's cache (``write_index``, a device tensor of positions, replaces ``start`` so a CUDA graph serves
    every block; ``[B, n]``: a row's own positions, the chunk's queries gathered per row) and attend over ``cache[:kv_len]``; without a cache the chunk attends to itself.
    Shared by every model family, so the caches' call pattern means the same thing for all of them."""
    if cache is not None:
        ck, cv = cache
        n = k.shape[2]
        if write_index is None:
            ck[:, :, start:start + n] = k
            cv[:, :, start:start + n] = v
        elif write_index.dim() == 2:  # [B, n]: each row writes its own slots (dKV's gathered queries)
            index = write_index[:, None, :, None].expand_as(k)
            ck.scatter_(2, index, k)
            cv.scatter_(2, index, v)
        else:
            ck.index_copy_(2, write_index, k)
            cv.index_copy_(2, write_index, v)
        k, v = ck[:, :, :kv_len], cv[:, :, :kv_len]
    return cache_attention(q, k, v, mask, enable_gqa=enable_gqa, split_keys=split_keys)
