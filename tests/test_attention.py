"""Kernel choice for cached steps (``l2pd_eval.model.attention``): where few (row, head) pairs would leave
the GPU idle, the key-splitting flash kernel; SDPA's own choice elsewhere, always on CPU. The CUDA tests run
on the GPU machine (docs/benchmarks.md gives the command) and compare against float64 and against SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.caches import StepInput, make_strategy
from l2pd_eval.model import LLaDAConfig
from l2pd_eval.model.attention import cache_attention, flash_splits_keys
from l2pd_eval.model.loading import random_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel choice is made on CUDA only")


def _qkv(batch: int, heads: int, queries: int, keys: int, dtype=torch.bfloat16, device="cpu"):
    gen = torch.Generator(device=device).manual_seed(0)

    def draw(n: int, scale: float = 1.0):
        return torch.randn(batch, heads, n, 128, generator=gen, dtype=torch.float32, device=device).mul(scale).to(dtype)

    # K/V as the leading slice of a longer cache buffer, like the model's [:kv_len]
    return draw(queries), draw(keys + 9, 0.3)[:, :, :keys], draw(keys + 9)[:, :, :keys]


def test_cpu_keeps_sdpa():
    q, k, v = _qkv(1, 32, 32, 1156)
    assert not flash_splits_keys(q, None)
    assert torch.equal(cache_attention(q, k, v, None), F.scaled_dot_product_attention(q, k, v))


def test_cpu_mask_and_grouped_heads_go_to_sdpa():
    q, k, v = _qkv(2, 4, 8, 40, dtype=torch.float32)
    mask = torch.rand(2, 1, 1, 40, generator=torch.Generator().manual_seed(1)) > 0.3
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(cache_attention(q, k, v, mask), ref)
    kv2 = k[:, :2], v[:, :2]  # two key heads for four query heads
    assert torch.equal(cache_attention(q, *kv2, None, enable_gqa=True),
                       F.scaled_dot_product_attention(q, *kv2, enable_gqa=True))


@cuda
def test_flash_is_chosen_only_where_the_gpu_would_idle():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    q, _, _ = _qkv(1, 32, 32, 1156, device="cuda")
    assert flash_splits_keys(q, None)
    assert not flash_splits_keys(q.expand(2, -1, -1, -1), None)  # cuDNN is as fast
    long_q = torch.empty(1, 32, 64 * (-(-int(0.8 * sms) // 32)), 128, dtype=q.dtype, device="cuda")
    assert not flash_splits_keys(long_q, None)  # enough query tiles to fill the GPU: no split, SDPA
    assert not flash_splits_keys(q, torch.ones(1, 1, 1, 1156, dtype=torch.bool, device="cuda"))  # masked
    assert not flash_splits_keys(q.float(), None)  # no float32 flash kernel
    assert not flash_splits_keys(q, None, enable_gqa=True)  # grouped heads: not measured, SDPA


@cuda
@pytest.mark.parametrize("queries, keys", [(32, 1156), (32, 1157), (128, 1924)])
def test_flash_choice_is_as_exact_as_sdpa(queries, keys):
    q, k, v = _qkv(1, 32, queries, keys, device="cuda")
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    got = cache_attention(q, k, v, None)
    sdpa = F.scaled_dot_product_attention(q, k, v)

    def err(t):
        return ((t.double() - ref).norm() / ref.norm()).item()
    assert err(got) < max(1.5 * err(sdpa), 4e-3)


@cuda
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("compiled", [False, True])
def test_cached_model_step_matches_sdpa_and_eager(cache, compiled):
    cfg = LLaDAConfig(d_model=512, n_layers=2, n_heads=4, mlp_hidden_size=1024, vocab_size=512, embedding_size=512,
                      max_sequence_length=2048)
    model = random_model(cfg, torch.bfloat16, "cuda", seed=0)
    if compiled:
        model.compile_blocks()
    total, block = 700, (600, 632)
    x = torch.randint(0, 512, (2, total), device="cuda")
    pos = torch.arange(total, device="cuda").expand(2, total)

    def steps(split_keys: bool, rows: int, graph: bool = True):
        strat = make_strategy(cache, model, rows, total, cuda_graph=graph, split_keys=split_keys)
        strat.logits(StepInput(x[:rows], pos[:rows], None, block, total, step=0))
        return [strat.logits(StepInput(x[:rows], pos[:rows], None, block, total, step=1)) for _ in range(3)]

    (plain, _, _), (flash, _, replayed) = steps(False, 1), steps(True, 1)
    assert torch.equal(flash, replayed)  # graph replay == the eager first run of the same shape
    torch.testing.assert_close(flash.float(), plain.float(), rtol=0.02, atol=0.02)
    for rows in (1, 2):  # graph replay == a strategy without graphs (compiled: another guard set)
        assert torch.equal(steps(True, rows)[2], steps(True, rows, graph=False)[2])
