"""GPU benchmark of one LLaDA-MoE layer's mixture of experts at the released shape (random weights, bf16):
the grouped-GEMM layer the model runs (``model/moe.py``) against the same layer computed densely (every
expert on every token, the unselected ones weighted zero) and against the bandwidth floor of the experts
actually read (the distinct experts the batch's tokens route to, plus the router, at this machine's
measured copy bandwidth).

    python bench/bench_moe.py --out docs/bench/bench_h200_moe.jsonl           # H200: batch 1 and 16
    python bench/bench_moe.py --smoke                                          # CPU, tiny shape, seconds

``--tokens``: query positions per row, e.g. 32 (a dual-cache step computes the block) and 288 (a full
forward of a 32-token prompt + 256 answer). Random router weights spread tokens near-uniformly over the
experts; a trained router's skew changes how many distinct experts a batch reads (the floor says which).
Prints a table and writes JSON lines to ``--out``; docs/benchmarks.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from l2pd_eval.model.llada_moe import PRESETS, LLaDAMoEConfig, SparseMoE
from l2pd_eval.model.moe import grouped_mm_runs


def timed(fn, device: str, warmup: int, iters: int) -> float:
    """Median seconds of ``fn``: CUDA events on a GPU, the host clock on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, dtype: torch.dtype, warmup: int, iters: int) -> float:
    """Bytes per second of a device copy far larger than the cache (read + written)."""
    n = (1 << 30) if device == "cuda" else (1 << 22)
    a = torch.empty(n, dtype=dtype, device=device).normal_()
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), device, warmup, iters)
    return 2 * a.numel() * a.element_size() / t


def build_layer(preset: str, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[LLaDAMoEConfig, SparseMoE]:
    cfg = LLaDAMoEConfig.from_dict(PRESETS[preset])
    torch.manual_seed(seed)
    layer = SparseMoE(cfg).to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, cfg.init_std)
    return cfg, layer.eval().requires_grad_(False)


def read_bytes(cfg: LLaDAMoEConfig, experts_hit: int, tokens: int, elt: int) -> int:
    """What the layer must move at least: the experts it routes to, the router, the tokens in and out."""
    expert = 3 * cfg.hidden_size * cfg.expert_intermediate_size
    return (experts_hit * expert + cfg.num_experts * cfg.hidden_size + 2 * tokens * cfg.hidden_size) * elt


def measure(cfg: LLaDAMoEConfig, layer: SparseMoE, batch: int, tokens: int, bandwidth: float, device: str,
            warmup: int, iters: int) -> dict:
    t = batch * tokens
    x = torch.randn(t, cfg.hidden_size, dtype=layer.gate.weight.dtype, device=device)
    weights, experts = layer.route(x)
    hit = int(torch.unique(experts).numel())
    with torch.no_grad():
        grouped = timed(lambda: layer.experts(x, *layer.route(x)), device, warmup, iters)
        dense = timed(lambda: layer.experts.dense(x, *layer.route(x)), device, warmup, iters)
        err = (layer.experts(x, weights, experts).float() - layer.experts.dense(x, weights, experts).float()).abs().max()
    floor = read_bytes(cfg, hit, t, x.element_size()) / bandwidth
    return {"batch": batch, "tokens_per_row": tokens, "tokens": t, "experts_hit": hit,
            "grouped_s": grouped, "dense_s": dense, "floor_s": floor, "dense_over_grouped": dense / grouped,
            "floor_over_grouped": floor / grouped, "grouped_kernel": grouped_mm_runs(x, layer.experts.gate_up),
            "max_abs_diff_vs_dense": float(err)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llada-moe-7b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 288], help="query positions per row")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default="bench_moe.jsonl")
    ap.add_argument("--smoke", action="store_true", help="CPU, the tiny preset, float32, 2 iterations")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.preset, args.dtype, args.warmup, args.iters = "llada-moe-tiny", "float32", 1, 2
    dtype = getattr(torch, args.dtype)
    cfg, layer = build_layer(args.preset, dtype, device)
    bandwidth = copy_bandwidth(device, dtype, args.warmup, min(args.iters, 10))
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "preset": args.preset, "dtype": args.dtype, "copy_bandwidth_Bps": bandwidth,
           "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok, "hidden": cfg.hidden_size,
           "expert_width": cfg.expert_intermediate_size}
    rows = [{**env, **measure(cfg, layer, b, n, bandwidth, device, args.warmup, args.iters)}
            for n in args.tokens for b in args.batch]
    with open(args.out, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"{env['device']}  {args.preset} {args.dtype}  copy {bandwidth / 1e9:.0f} GB/s  -> {args.out}")
    print(f"{'batch':>5} {'tok/row':>7} {'experts':>7} {'grouped ms':>10} {'dense ms':>9} {'floor ms':>9} "
          f"{'dense/grp':>9} {'floor/grp':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['tokens_per_row']:>7} {r['experts_hit']:>7} {r['grouped_s'] * 1e3:>10.3f} "
              f"{r['dense_s'] * 1e3:>9.3f} {r['floor_s'] * 1e3:>9.3f} {r['dense_over_grouped']:>9.2f} "
              f"{r['floor_over_grouped']:>9.2f}")
    return rows


if __name__ == "__main__":
    main()
