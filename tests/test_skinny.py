"""The skinny-GEMM kernel (``l2pd_eval.model.skinny``): off CUDA and without Triton the ops compute exactly
the model's own math; the Triton kernel matches a float64 reference within half-precision rounding, is
deterministic (split partials summed in split order), leaves its counters at zero, and on CUDA a graph
replay equals the eager step bit for bit.

The kernel tests run under Triton's interpreter (``TRITON_INTERPRET=1`` with Triton installed, e.g.
``TRITON_INTERPRET=1 python -m pytest tests/test_skinny.py``) and on a CUDA machine; the interpreter's
``tl.dot`` mishandles bfloat16 (Triton 3.6), so interpreter checks use float16, the same kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.model import skinny
from l2pd_eval.model.loading import random_model
from l2pd_eval.model.skinny import Tile, choose_tile, default_tile, skinny_linear, skinny_swiglu, use_skinny

kernel = pytest.mark.skipif(skinny.triton is None or not (skinny.INTERPRET or torch.cuda.is_available()),
                            reason="needs Triton with TRITON_INTERPRET=1, or a CUDA device")
cuda = pytest.mark.skipif(skinny.triton is None or not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16


def _tiny(dtype=torch.float32, device="cpu"):
    from l2pd_eval.model import PRESETS, LLaDAConfig

    return random_model(LLaDAConfig.from_dict(PRESETS["tiny"]), dtype, device, seed=0)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).norm() / ref.norm()).item()


def test_off_the_kernel_the_ops_are_the_models_own_math():
    gen = torch.Generator().manual_seed(0)
    x, w, u = (torch.randn(s, generator=gen) for s in ((3, 5, 64), (128, 64), (128, 64)))
    b = torch.randn(128, generator=gen)
    assert torch.equal(skinny_linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(skinny_swiglu(x, w, u), F.silu(F.linear(x, w)) * F.linear(x, u))


def test_use_skinny_keeps_parameters_and_cpu_logits():
    model = _tiny()
    keys = list(model.state_dict())
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    before = model(ids)
    use_skinny(model, True)
    assert list(model.state_dict()) == keys and model.skinny_head
    assert all(m.skinny for m in model.modules() if isinstance(m, skinny.SkinnyLinear))
    assert torch.equal(model(ids), before)  # CPU: the ops fall back to the same calls
    use_skinny(model, False)
    assert not model.skinny_head and torch.equal(model(ids), before)


def test_tile_choice():
    dev = torch.device("cpu")
    assert choose_tile(129, 4096, 4096, False, dev) is None  # past MAX_ROWS: not weight streaming
    assert choose_tile(32, 100, 4096, False, dev) is None    # no tile divides N
    tile = default_tile(4096, 4096, dev)
    assert tile.fits(4096, 4096) and 4096 // tile.bn * tile.splits >= 264
    assert default_tile(126464, 4096, dev).splits == 1  # enough programs without splitting
    skinny.TUNED[(4096, 4096, 32, False)] = None  # measured: cuBLAS wins
    try:
        assert choose_tile(32, 4096, 4096, False, dev) is None
        assert choose_tile(16, 4096, 4096, False, dev) is not None  # another row bucket
    finally:
        del skinny.TUNED[(4096, 4096, 32, False)]


def test_every_tuned_tile_is_the_one_its_shape_gets():
    """A tile the table keeps must pass the eligibility checks, or the shape silently runs on cuBLAS."""
    dev = torch.device("cpu")
    for (n, k, rows, swiglu), tile in skinny.TUNED.items():
        assert choose_tile(rows, n, k, swiglu, dev) == tile, (n, k, rows, swiglu)


CASES = [(32, 128, 256, Tile(64, 64, 1, 4, 2)), (33, 128, 512, Tile(64, 128, 2)), (5, 256, 512, Tile(128, 64, 4)),
         (1, 64, 1024, Tile(64, 128, 8)), (128, 64, 128, Tile(64, 64, 2))]


@kernel
@pytest.mark.parametrize("m,n,k,tile", CASES)
def test_kernel_matches_float64(m, n, k, tile):
    gen = torch.Generator().manual_seed(m * 7 + k)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(HALF).to(DEVICE)

    x, w, u, b = draw(m, k), draw(n, k, scale=k ** -0.5), draw(n, k, scale=k ** -0.5), draw(n)
    ref = x.double() @ w.double().T
    # fp16/bf16 output rounding (2^-11 / 2^-8 relative) dominates the float32 accumulation
    tol = 2e-3 if HALF == torch.float16 else 1e-2
    y = skinny.launch(x, w, None, None, tile)
    assert y.shape == (m, n) and torch.isfinite(y).all()
    assert _rel(y, ref) < tol
    assert _rel(skinny.launch(x, w, b, None, tile), ref + b.double()) < tol
    swi = skinny.launch(x, w, None, u, tile)
    assert _rel(swi, F.silu(ref) * (x.double() @ u.double().T)) < tol
    # deterministic: the same bits again; the split counters are back at zero for the next launch
    assert torch.equal(skinny.launch(x, w, None, None, tile), y)
    assert torch.equal(skinny.launch(x, w, None, u, tile), swi)
    assert int(skinny._SCRATCH.counters[x.device].abs().sum()) == 0


@kernel
def test_kernel_reads_strided_rows_and_leading_dims():
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(2, 40, 256, generator=gen).to(HALF).to(DEVICE)
    x = big[:, 3:19]  # [2, 16, 256] view: rows not contiguous across the batch dim
    w = (torch.randn(128, 256, generator=gen) * 0.06).to(HALF).to(DEVICE)
    y = skinny.launch(x, w, None, None, Tile(64, 64, 2))
    assert y.shape == (2, 16, 128) and _rel(y, x.double() @ w.double().T) < 1e-2


@kernel
def test_skinny_model_stays_close_to_the_plain_one():
    model = _tiny(HALF, DEVICE)
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref = model(ids).double()
    use_skinny(model, True)
    got = model(ids)
    use_skinny(model, False)
    assert _rel(got, ref) < 2e-2


@cuda
def test_graph_replay_of_the_kernel_equals_eager():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(32, 4096, generator=gen, device="cuda").bfloat16()
    w = (torch.randn(12288, 4096, generator=gen, device="cuda") * 0.02).bfloat16()
    u = (torch.randn(12288, 4096, generator=gen, device="cuda") * 0.02).bfloat16()
    eager = skinny_swiglu(x, w, u), skinny_linear(x, w)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        out = skinny_swiglu(x, w, u), skinny_linear(x, w)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])
    ref = x.double() @ w.double().T
    assert _rel(eager[1], ref) < 1e-2


@kernel
@pytest.mark.parametrize("ns,tile,bias", [((128, 128, 128), Tile(64, 64, 1), False), ((256, 64, 64), Tile(64, 64, 2), True),
                                          ((64, 128, 192), Tile(64, 128, 4), True)])
def test_grouped_qkv_matches_three_products(ns, tile, bias):
    gen = torch.Generator().manual_seed(sum(ns))
    k = 512

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(HALF).to(DEVICE)

    x = draw(2, 16, k)
    ws = [draw(n, k, scale=k ** -0.5) for n in ns]
    bs = [draw(n) for n in ns] if bias else [None] * 3
    outs = skinny.launch_grouped(x, ws, bs, tile)
    tol = 2e-3 if HALF == torch.float16 else 1e-2
    for y, w, b in zip(outs, ws, bs, strict=True):
        ref = x.double() @ w.double().T + (0 if b is None else b.double())
        assert y.shape == (2, 16, w.shape[0]) and _rel(y, ref) < tol
    again = skinny.launch_grouped(x, ws, bs, tile)
    assert all(torch.equal(a, b) for a, b in zip(outs, again, strict=True))
    assert int(skinny._SCRATCH.counters[x.device].abs().sum()) == 0


def test_qkv_off_the_kernel_is_three_linears():
    gen = torch.Generator().manual_seed(0)
    lin = [torch.nn.Linear(64, n, bias=True) for n in (64, 32, 32)]
    h = torch.randn(3, 64, generator=gen)
    for m in lin:
        m.__class__ = skinny.SkinnyLinear
        m.skinny = True
    got = skinny.qkv(h, *lin)
    assert all(torch.equal(g, F.linear(h, m.weight, m.bias)) for g, m in zip(got, lin, strict=True))
