"""The batch-1 decode-attention kernel (``l2pd_eval.model.decode_attention``, ``SpeedConfig.triton_attention``):
switched off or on ineligible inputs ``cache_attention`` is SDPA's exact result; the kernel matches a
float64 reference within half-precision rounding for equal and grouped heads, single and split keys, is
deterministic, and a model step with it stays close to the SDPA step. Kernel tests run under Triton's
interpreter (``TRITON_INTERPRET=1``, float16: its bfloat16 ``tl.dot`` is wrong) or on a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.engine import SpeedConfig
from l2pd_eval.model import decode_attention as da
from l2pd_eval.model import skinny
from l2pd_eval.model.attention import cache_attention

kernel = pytest.mark.skipif(skinny.triton is None or not (skinny.INTERPRET or torch.cuda.is_available()),
                            reason="needs Triton with TRITON_INTERPRET=1, or a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16


def _qkv(h, hkv, n, length, d=64, dtype=HALF, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    q = draw(1, n, h, d).transpose(1, 2)  # [1, H, n, D] viewed from [1, n, H, D], as the model's projection
    return q, draw(1, hkv, length + 9, d, scale=0.5)[:, :, :length], draw(1, hkv, length + 9, d)[:, :, :length]


def _ref(q, k, v):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(g, 1),
                                          v.double().repeat_interleave(g, 1))


def test_switch_off_or_ineligible_is_sdpa_exactly():
    q, k, v = _qkv(4, 2, 8, 40, dtype=torch.float32, device="cpu")
    sdpa = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.equal(cache_attention(q, k, v, None, enable_gqa=True), sdpa)
    da.use_triton_attention(True)
    try:
        assert not da.eligible(q, k, None)  # float32 on CPU without the interpreter
        assert torch.equal(cache_attention(q, k, v, None, enable_gqa=True), sdpa)
        mask = torch.ones(1, 1, 1, 40, dtype=torch.bool)
        assert not da.eligible(q.half(), k.half(), mask)  # a key mask: SDPA
    finally:
        da.use_triton_attention(False)


def test_speed_config_sets_the_switch():
    from l2pd_eval.model import PRESETS, LLaDAConfig
    from l2pd_eval.model.loading import random_model

    model = random_model(LLaDAConfig.from_dict(PRESETS["tiny"]), torch.float32, "cpu")
    SpeedConfig(triton_attention=True).prepare(model)
    assert da.enabled()
    SpeedConfig().prepare(model)
    assert not da.enabled()


@kernel
@pytest.mark.parametrize("h,hkv,n,length,splits", [(4, 4, 32, 200, 3), (8, 2, 33, 150, None), (4, 1, 5, 64, 1),
                                                    (2, 2, 128, 300, 4), (7, 1, 33, 97, 2)])
def test_kernel_matches_float64(h, hkv, n, length, splits):
    q, k, v = _qkv(h, hkv, n, length, seed=h + n)
    out = da.decode_attention(q, k, v, splits=splits, block_n=32)
    tol = 2e-3 if HALF == torch.float16 else 1e-2
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert ((out.double() - _ref(q, k, v)).norm() / _ref(q, k, v).norm()).item() < tol
    assert torch.equal(da.decode_attention(q, k, v, splits=splits, block_n=32), out)  # deterministic
    assert out.transpose(1, 2).is_contiguous()  # [1, n, H, D] in memory: the output projection's layout


@kernel
def test_model_step_with_the_kernel_stays_close_to_sdpa():
    from l2pd_eval.caches import StepInput, make_strategy
    from l2pd_eval.model import PRESETS, LLaDAConfig
    from l2pd_eval.model.loading import random_model

    model = random_model(LLaDAConfig.from_dict(PRESETS["tiny"]), HALF, DEVICE)
    x = torch.randint(0, 300, (1, 64), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    pos = torch.arange(64, device=DEVICE).expand(1, 64)
    outs = []
    for on in (False, True):
        SpeedConfig(triton_attention=on).prepare(model)
        strat = make_strategy("dual", model, 1, 64)
        strat.logits(StepInput(x, pos, None, (32, 48), 64, step=0))
        outs.append(strat.logits(StepInput(x, pos, None, (32, 48), 64, step=1)).double())
    SpeedConfig().prepare(model)
    assert ((outs[1] - outs[0]).norm() / outs[0].norm()).item() < 2e-2
