"""Skinny GEMMs: ``y = x @ w.T`` for few rows (a batch-1 cached step: 32 or 33 rows) as a Triton kernel that
streams the weight at close to the memory bandwidth, optionally with SwiGLU fused into its epilogue or three
weights of one input (q, k, v) in one launch.

At batch 1 a cached step reads every weight once for a 32-token block: the GEMMs are weight streaming, and
cuBLAS reaches ~80% of the copy bandwidth there (docs/benchmarks.md). The kernel here tiles the weight's
output dim (``BN`` rows of ``w`` per program, the tensor cores' M side, so the 32 tokens are the narrow
side) and splits the reduction dim over ``splits`` programs so that enough of them stream at once. A split
writes its float32 partial tile to a workspace; the last split to arrive for a tile (an atomic counter)
adds the partials **in split order** and writes the output, so the result does not depend on which program
finishes first: the same inputs give the same bits in every run, eagerly or replayed in a CUDA graph. It is
not bit-identical to cuBLAS (another summation order): tests/test_skinny.py states and checks the tolerance.

Which tile a shape gets is a fixed table (``TUNED``, measured on an H200 by ``bench/tune_skinny.py``), never
a timed choice at run time: a timed choice could differ between processes and so change decoded tokens
(docs/benchmarks.md, item 17). ``None`` in the table keeps cuBLAS for a shape where it measured faster.

Off CUDA, without Triton, for more than ``MAX_ROWS`` rows or any shape the kernel does not tile, the ops
compute exactly what the model computed before (``F.linear``, ``silu(gate) * up``). ``TRITON_INTERPRET=1``
runs the kernel on CPU tensors (tests). Chosen by ``SpeedConfig.skinny_gemm`` (``use_skinny``); the families
call ``qkv``, ``swiglu`` and ``MaskPredictor.project``, which are today's ops while it is off."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # GPU builds of torch bring Triton; the CPU build does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_ROWS = 64  # more rows than this: the model's own path (cuBLAS, inductor's fusions). Measured: at 128 rows
#               (LLaDA's gen-256 prefix chunk) cuBLAS beat every tile (docs/benchmarks.md)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Tile:
    """One launch configuration: ``bn`` weight rows x ``bk`` reduction columns per iteration, the reduction
    split over ``splits`` programs, ``warps`` warps and ``stages`` pipelined loads per program."""

    bn: int = 64
    bk: int = 128
    splits: int = 1
    warps: int = 4
    stages: int = 4

    def fits(self, n: int, k: int) -> bool:
        return n % self.bn == 0 and k % (self.bk * self.splits) == 0


#: (N, K, row bucket, swiglu) -> Tile, or None for cuBLAS. Measured on an H200 (bench/tune_skinny.py,
#: docs/bench/bench_h200_2026-12-03_i28a_tune.jsonl: the fastest tile, kept where it beat cuBLAS); shapes
#: not listed get ``default_tile``. A grouped q/k/v launch is looked up by its total N.
TUNED: dict[tuple[int, int, int, bool], Tile | None] = {
    # LLaDA-8B, batch-1 dual step (32 rows)
    (4096, 4096, 32, False): Tile(64, 128, 1, 4, 6),     # 13.0 -> 12.0 us
    (12288, 4096, 32, True): Tile(128, 128, 1, 4, 3),    # SwiGLU: 61.8 -> 50.3 us
    (4096, 12288, 32, False): Tile(64, 128, 2, 4, 6),    # 30.2 -> 28.8 us
    (126464, 4096, 32, False): Tile(64, 128, 1, 4, 3),   # head: 251.7 -> 242.0 us
    # LLaDA-8B, the gen-256 prefix chunk (128 rows): cuBLAS is faster
    (4096, 4096, 128, False): None, (12288, 4096, 128, True): None, (4096, 12288, 128, False): None,
    # Dream-7B, batch-1 dual step (33 rows: bucket 64)
    (3584, 3584, 64, False): Tile(64, 128, 2, 4, 6),     # 13.5 -> 12.2 us
    (18944, 3584, 64, True): Tile(64, 128, 1, 4, 4),     # SwiGLU: 81.4 -> 76.5 us
    (3584, 18944, 64, False): Tile(64, 128, 2, 4, 6),    # 40.2 -> 39.3 us
    (512, 3584, 64, False): None,                        # k/v alone: cuBLAS 8.3 vs 9.3 us
    (152064, 3584, 64, False): Tile(128, 128, 1, 8, 4),  # head: 267.9 -> 256.8 us
    # grouped q/k/v (one launch; docs/bench/bench_h200_2026-12-03_i28b_tune_qkv.jsonl)
    (12288, 4096, 32, False): Tile(64, 128, 1, 4, 4),    # LLaDA: 3 x cuBLAS 39.2 -> 27.0 us
    (4608, 3584, 64, False): Tile(64, 128, 1, 4, 6),     # Dream: 3 x cuBLAS 29.0 -> 14.3 us
}


def row_bucket(m: int) -> int:
    """The kernel's row tile for ``m`` rows: a power of two, at least 16 (the tensor cores' narrowest)."""
    return max(16, 1 << (m - 1).bit_length())


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


# Shared memory a tile may use: what one block may opt into on Hopper (227 KB, the device's own figure where
# it reports one). A lower cap once refused the tuned LLaDA SwiGLU tile (216 KB), which the tuning had timed
# by launching it directly, so that GEMM silently ran on cuBLAS in every step.
SMEM_BYTES = 227 * 1024


def smem_bytes(tile: Tile, rows: int, swiglu: bool) -> int:
    """Shared memory of ``tile``'s pipeline: ``stages`` copies of the weight tile(s) and the row tile."""
    return tile.stages * ((2 if swiglu else 1) * tile.bn * tile.bk + row_bucket(rows) * tile.bk) * 2


def default_tile(n: int, k: int, device: torch.device, rows: int = 32, swiglu: bool = False) -> Tile | None:
    """A tile for a shape nobody measured: one weight tile of 64 rows (SwiGLU, grouped q/k/v: 128 rows for
    wide N), 128 columns, three stages, the fewest splits that give two programs per multiprocessor; it
    fits in shared memory (None: no tile divides the shape)."""
    bn = next((b for b in ((128, 64) if n >= 8192 else (64,)) + (32, 16) if n % b == 0), None)
    bk = next((b for b in (128, 64, 32, 16) if k % b == 0), None)
    if bn is None or bk is None:
        return None
    best = Tile(bn=bn, bk=bk, stages=3)
    while smem_bytes(best, rows, swiglu) > SMEM_BYTES and best.stages > 2:
        best = Tile(bn=bn, bk=bk, stages=best.stages - 1)
    for splits in (2, 4, 8):
        nxt = Tile(bn=bn, bk=bk, splits=splits, stages=best.stages)
        if n // bn * best.splits >= 2 * _sm_count(device) or not nxt.fits(n, k):
            break
        best = nxt
    return best if smem_bytes(best, rows, swiglu) <= SMEM_BYTES else None


def choose_tile(m: int, n: int, k: int, swiglu: bool, device: torch.device) -> Tile | None:
    """The table's tile for this shape (None: cuBLAS), or ``default_tile``; None where the kernel cannot run."""
    if m > MAX_ROWS:
        return None
    key = (n, k, row_bucket(m), swiglu)
    tile = TUNED[key] if key in TUNED else default_tile(n, k, device, m, swiglu)
    if tile is None or not tile.fits(n, k) or smem_bytes(tile, m, swiglu) > SMEM_BYTES:
        return None
    return tile


if triton is not None:

    @triton.jit
    def skinny_gemm_kernel(x_ptr, w_ptr, u_ptr, b_ptr, y_ptr, w2_ptr, b2_ptr, y2_ptr, w3_ptr, b3_ptr, y3_ptr,
                           ws_ptr, cnt_ptr, M, K, k_split, splits, t1, t2, n2, n3,
                           stride_xm, stride_wn, stride_ym, ws_half,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SWIGLU: tl.constexpr,
                           HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr):
        """Program (n, s): output rows ``[n*BN, (n+1)*BN)`` of ``w`` over reduction split ``s``.
        Accumulates ``w_tile @ x_tile.T`` ([BN, BM], float32); see the module docstring for the splits.
        ``GROUPS == 3``: three weights of the same K in one launch (q, k and v), the first ``t1`` tiles
        from ``w``, the next ``t2`` from ``w2``, the rest from ``w3``, each into its own output."""
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        n_tiles = tl.num_programs(0)
        w_ptr, b_ptr, y_ptr, loc, stride_ym = _group(pid_n, w_ptr, b_ptr, y_ptr, w2_ptr, b2_ptr, y2_ptr, w3_ptr,
                                                     b3_ptr, y3_ptr, t1, t2, stride_ym, n2, n3, GROUPS)
        rn = loc * BN + tl.arange(0, BN)
        rm = tl.arange(0, BM)
        rk = tl.arange(0, BK)
        m_ok = rm[:, None] < M
        k_lo = pid_s * k_split
        w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + (k_lo + rk)[None, :]
        x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_lo + rk)[None, :]
        acc = tl.zeros((BN, BM), dtype=tl.float32)
        acc_u = tl.zeros((BN, BM), dtype=tl.float32)
        if SWIGLU:
            u_ptrs = u_ptr + rn[:, None].to(tl.int64) * stride_wn + (k_lo + rk)[None, :]
        for k in range(0, k_split, BK):
            x = tl.load(x_ptrs + k, mask=m_ok, other=0.0)
            acc = tl.dot(tl.load(w_ptrs + k), tl.trans(x), acc)
            if SWIGLU:
                acc_u = tl.dot(tl.load(u_ptrs + k), tl.trans(x), acc_u)
        y_ptrs = y_ptr + rm[None, :] * stride_ym + rn[:, None]
        y_ok = rm[None, :] < M
        if splits == 1:
            _epilogue(acc, acc_u, b_ptr, rn, y_ptrs, y_ok, SWIGLU, HAS_BIAS)
        else:
            tile = (pid_s * n_tiles + pid_n) * BN * BM
            r_tile = tl.arange(0, BN)[:, None] * BM + rm[None, :]
            tl.store(ws_ptr + tile + r_tile, acc)
            if SWIGLU:
                tl.store(ws_ptr + ws_half + tile + r_tile, acc_u)
            tl.debug_barrier()  # every thread's partial is written before the counter says so
            arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
            if arrived == splits - 1:  # the last split of this tile: sum all, in split order
                acc = tl.zeros((BN, BM), dtype=tl.float32)
                acc_u = tl.zeros((BN, BM), dtype=tl.float32)
                for s in range(0, splits):
                    part = ws_ptr + (s * n_tiles + pid_n) * BN * BM + r_tile
                    acc += tl.load(part, cache_modifier=".cg")
                    if SWIGLU:
                        acc_u += tl.load(part + ws_half, cache_modifier=".cg")
                _epilogue(acc, acc_u, b_ptr, rn, y_ptrs, y_ok, SWIGLU, HAS_BIAS)
                tl.atomic_xchg(cnt_ptr + pid_n, 0)  # ready for the next launch (and graph replay)

    @triton.jit
    def _group(pid, w, b, y, w2, b2, y2, w3, b3, y3, t1, t2, n1, n2, n3, GROUPS: tl.constexpr):
        """(weight, bias, output, tile within that weight, output row stride) of global tile ``pid``."""
        loc = pid
        ny = n1
        if GROUPS == 3:
            if pid >= t1 + t2:
                w, b, y, loc, ny = w3, b3, y3, pid - t1 - t2, n3
            elif pid >= t1:
                w, b, y, loc, ny = w2, b2, y2, pid - t1, n2
        return w, b, y, loc, ny

    @triton.jit
    def _epilogue(acc, acc_u, b_ptr, rn, y_ptrs, y_ok, SWIGLU: tl.constexpr, HAS_BIAS: tl.constexpr):
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn).to(tl.float32)[:, None]
        if SWIGLU:
            acc = acc / (1.0 + tl.exp(-acc)) * acc_u
        tl.store(y_ptrs, acc.to(y_ptrs.dtype.element_ty), mask=y_ok)


class _Scratch:
    """Per-device workspace and counters, only ever grown; every buffer stays alive, because a CUDA graph
    recorded with one keeps its address (kernels of one stream run one after another, so one set serves
    every GEMM; each launch leaves its counters at zero)."""

    def __init__(self) -> None:
        self.ws: dict[torch.device, Tensor] = {}
        self.counters: dict[torch.device, Tensor] = {}
        self.kept: list[Tensor] = []

    def get(self, device: torch.device, ws_floats: int, tiles: int) -> tuple[Tensor, Tensor]:
        ws, cnt = self.ws.get(device), self.counters.get(device)
        if ws is None or ws.numel() < ws_floats:
            ws = self.ws[device] = torch.empty(max(ws_floats, 1 << 22), dtype=torch.float32, device=device)
            self.kept.append(ws)
        if cnt is None or cnt.numel() < tiles:
            cnt = self.counters[device] = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
            self.kept.append(cnt)
        return ws, cnt


_SCRATCH = _Scratch()


def runs_kernel(x: Tensor) -> bool:
    """Whether ``x``'s device and dtype take the Triton kernel at all (16-bit floats on CUDA, or any
    device under the interpreter)."""
    if triton is None or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    return x.is_cuda or INTERPRET


def launch(x: Tensor, w: Tensor, bias: Tensor | None, up: Tensor | None, tile: Tile) -> Tensor:
    """Run the kernel with ``tile`` (no eligibility check: ``choose_tile`` made it or the caller did)."""
    return _launch(x, [w], [bias], up, tile)[0]


def launch_grouped(x: Tensor, weights: list[Tensor], biases: list[Tensor | None], tile: Tile) -> list[Tensor]:
    """Three products of one input (q, k and v) in one launch; weights of the same K, biases all or none."""
    return _launch(x, weights, biases, None, tile)


def _launch(x: Tensor, ws: list[Tensor], bs: list[Tensor | None], up: Tensor | None, tile: Tile) -> list[Tensor]:
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    ns = [w.shape[0] for w in ws]
    ys = [torch.empty(m, n, dtype=x.dtype, device=x.device) for n in ns]
    counts = [n // tile.bn for n in ns]
    tiles, bm = sum(counts), row_bucket(m)
    half = tile.splits * tiles * tile.bn * bm if tile.splits > 1 else 0
    scratch, cnt = _SCRATCH.get(x.device, 2 * half if up is not None else half, tiles)
    pad = (ws + [ws[0]] * 2)[:3], (bs + [None] * 2)[:3], (ys + [ys[0]] * 2)[:3]
    (w1, w2, w3), (b1, b2, b3), (y1, y2, y3) = pad
    has_bias = b1 is not None
    b1, b2, b3 = (b if b is not None else w1 for b in (b1, b2, b3))
    skinny_gemm_kernel[(tiles, tile.splits)](
        x2, w1, up if up is not None else w1, b1, y1, w2, b2, y2, w3, b3, y3, scratch, cnt, m, k,
        k // tile.splits, tile.splits, counts[0], counts[1] if len(counts) > 1 else 0, ns[1] if len(ns) > 1 else 0,
        ns[2] if len(ns) > 2 else 0, x2.stride(0), w1.stride(0), y1.stride(0), half,
        BM=bm, BN=tile.bn, BK=tile.bk, SWIGLU=up is not None, HAS_BIAS=has_bias, GROUPS=len(ws),
        num_warps=tile.warps, num_stages=tile.stages)
    return [y.view(*x.shape[:-1], n) for y, n in zip(ys, ns, strict=True)]


def _kernel_tile(x: Tensor, w: Tensor, up: Tensor | None) -> Tile | None:
    if not runs_kernel(x) or w.dtype != x.dtype or w.stride(-1) != 1 or (up is not None and up.stride() != w.stride()):
        return None
    m = x.numel() // x.shape[-1]
    return choose_tile(m, w.shape[0], w.shape[1], up is not None, x.device)


@torch.library.custom_op("l2pd::skinny_linear", mutates_args=())
def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through the kernel where ``choose_tile`` gives a tile."""
    tile = _kernel_tile(x, weight, None)
    if tile is None:
        return F.linear(x, weight, bias)
    return launch(x, weight, bias, None, tile)


@skinny_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("l2pd::skinny_swiglu", mutates_args=())
def skinny_swiglu(x: Tensor, gate: Tensor, up: Tensor) -> Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` in one kernel (both products in float32 before the product)."""
    tile = _kernel_tile(x, gate, up)
    if tile is None:
        return F.silu(F.linear(x, gate)) * F.linear(x, up)
    return launch(x, gate, None, up, tile)


@skinny_swiglu.register_fake
def _(x: Tensor, gate: Tensor, up: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], gate.shape[0])


@torch.library.custom_op("l2pd::skinny_qkv", mutates_args=())
def skinny_qkv(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, bq: Tensor | None = None, bk: Tensor | None = None,
               bv: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``F.linear`` of ``x`` with three weights (q, k, v projections) in one kernel launch."""
    ws, bs = [wq, wk, wv], [bq, bk, bv]
    n = sum(w.shape[0] for w in ws)
    tile = None
    if (all(w.shape[1] == x.shape[-1] and w.dtype == x.dtype and w.is_contiguous() for w in ws)
            and (all(b is None for b in bs) or all(b is not None for b in bs))):
        tile = choose_tile(x.numel() // x.shape[-1], n, x.shape[-1], False, x.device) if runs_kernel(x) else None
    if tile is None or any(w.shape[0] % tile.bn for w in ws):
        return F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)
    q, k, v = launch_grouped(x, ws, bs, tile)
    return q, k, v


@skinny_qkv.register_fake
def _(x, wq, wk, wv, bq=None, bk=None, bv=None):
    return tuple(x.new_empty(*x.shape[:-1], w.shape[0]) for w in (wq, wk, wv))


def qkv(h: Tensor, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
    """The families' q/k/v projections of ``h``; one kernel launch for the three when they are skinny."""
    if all(getattr(m, "skinny", False) for m in (q, k, v)) and few_rows(h):
        return skinny_qkv(h, q.weight, k.weight, v.weight, q.bias, k.bias, v.bias)
    return q(h), k(h), v(h)


class SkinnyLinear(nn.Linear):
    """``nn.Linear`` whose forward goes through :func:`skinny_linear` while ``skinny`` is set (``use_skinny``
    turns a model's linears into this class in place: same parameters, same state-dict keys)."""

    skinny: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.skinny and few_rows(x):
            return skinny_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def few_rows(x: Tensor) -> bool:
    """At most ``MAX_ROWS`` rows: decided while ``torch.compile`` traces (a guard on the row count), so
    wider chunks keep the model's own path, inductor's fusions included."""
    return x.numel() // x.shape[-1] <= MAX_ROWS


def swiglu(h: Tensor, gate: nn.Linear, up: nn.Linear) -> Tensor:
    """The families' MLP input: ``silu(gate(h)) * up(h)``; one fused kernel when both are skinny."""
    if (getattr(gate, "skinny", False) and getattr(up, "skinny", False) and gate.bias is None and up.bias is None
            and few_rows(h)):
        return skinny_swiglu(h, gate.weight, up.weight)
    return F.silu(gate(h)) * up(h)


def use_skinny(model: nn.Module, on: bool) -> None:
    """Route every ``nn.Linear`` of the model's layers and its output head (``MaskPredictor.project``)
    through the skinny ops (``on``) or back to ``F.linear``. Idempotent; changes no parameter."""
    for layer in model.blocks:
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                if type(module) is nn.Linear:
                    module.__class__ = SkinnyLinear
                if isinstance(module, SkinnyLinear):
                    module.skinny = on
    model.skinny_head = on
