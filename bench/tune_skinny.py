"""Measure the skinny-GEMM kernel (``l2pd_eval/model/skinny.py``) against cuBLAS at a model's batch-1
cached-step shapes, check every variant against a float64 reference, and write the winning tile per shape.

Each variant runs 24 times in one CUDA graph over rotating weight copies (so L2 never holds a weight),
as the step's graph runs it; cuBLAS is timed the same way (for SwiGLU: two GEMMs and the silu-product).
A shape keeps cuBLAS (``null`` in the table) unless the kernel is faster. The table (``--table``) is what
``bench_step.py --skinny-table`` loads and what ``skinny.TUNED`` commits.

    PYTHONPATH=. python3 bench/tune_skinny.py --models llada-8b dream-7b --out tune.jsonl --table table.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from l2pd_eval.model import skinny
from l2pd_eval.model.family import family_of_preset

CONFIGS = [(64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 6), (64, 256, 4, 3), (64, 256, 8, 4),
           (128, 128, 4, 3), (128, 128, 8, 4), (128, 64, 4, 6)]  # (bn, bk, warps, stages)
SPLITS = (1, 2, 4, 8)


def shapes(preset: str) -> list[tuple[str, int, int, bool, bool, int]]:
    """(name, N, K, swiglu, bias, rows) of the GEMMs of a batch-1 dual step (block 32 + the logit shift)
    and of the gen-256 prefix step's chunk (128 positions + the shift), for one model shape."""
    fam = family_of_preset(preset)
    c = fam.config_class.from_dict(fam.presets[preset])
    shift = fam.model_class.logit_shift
    d, hq, hkv, ff = c.d_model, c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.mlp_width
    bias = fam.name == "dream"  # Qwen2's q/k/v biases
    out = []
    out.append(("qkv", hq + 2 * hkv, d, False, bias, 32 + shift))  # grouped: one launch for q, k and v
    for rows in (32 + shift, 128 + shift):
        out += [("q", hq, d, False, bias, rows), ("o", d, hq, False, False, rows),
                ("swiglu", ff, d, True, False, rows), ("down", d, ff, False, False, rows)]
        if hkv != hq:
            out.append(("kv", hkv, d, False, bias, rows))
    out.append(("head", c.vocab_size, d, False, False, 32 + shift))
    seen, unique = set(), []
    for s in out:  # one measurement per table key (e.g. LLaDA's q and o are both 4096 x 4096)
        key = (s[1], s[2], skinny.row_bucket(s[5]), s[3])
        if s[5] <= skinny.MAX_ROWS and key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def qkv_widths(preset: str) -> tuple[int, int, int]:
    fam = family_of_preset(preset)
    c = fam.config_class.from_dict(fam.presets[preset])
    return c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim


def variants(n: int, k: int, parts: tuple[int, ...] = ()) -> list[skinny.Tile]:
    out = []
    for bn, bk, warps, stages in CONFIGS:
        for s in SPLITS:
            t = skinny.Tile(bn, bk, s, warps, stages)
            if t.fits(n, k) and 16 <= n // bn * s <= 4096 and all(p % bn == 0 for p in parts):
                out.append(t)
    return out


def _precompile(jobs: list[tuple]) -> int:
    """Compile kernels into Triton's on-disk cache (run in a worker process; the timing process then loads
    them instead of compiling one by one)."""
    done = 0
    for m, n, k, swiglu, bias, t, parts in jobs:
        try:
            x = torch.empty(m, k, dtype=torch.bfloat16, device="cuda")
            if parts:
                ws = [torch.empty(p, k, dtype=torch.bfloat16, device="cuda") for p in parts]
                bs = [torch.empty(p, dtype=torch.bfloat16, device="cuda") if bias else None for p in parts]
                skinny.launch_grouped(x, ws, bs, skinny.Tile(*t))
                done += 1
                continue
            w = torch.empty(n, k, dtype=torch.bfloat16, device="cuda")
            skinny.launch(x, w, torch.empty(n, dtype=torch.bfloat16, device="cuda") if bias else None,
                          w if swiglu else None, skinny.Tile(*t))
            done += 1
        except Exception:  # noqa: BLE001 - a tile that does not fit the chip is skipped at timing too
            pass
    torch.cuda.synchronize()
    return done


def precompile(all_jobs: list[tuple], workers: int) -> None:
    if workers <= 1:
        return
    chunks = [all_jobs[i::workers] for i in range(workers)]
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        print(f"precompiled {sum(pool.map(_precompile, chunks))} kernels in {workers} processes", flush=True)


def graph_time(fn, reps: int = 24) -> float:
    """Seconds per call of ``fn(i)`` (i = 0..reps-1) replayed in one CUDA graph (median of 7 replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(reps):
                fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    times = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / reps)
    return sorted(times)[3]


def tune_shape(out, preset: str, name: str, n: int, k: int, swiglu: bool, bias: bool, m: int, bw: float) -> dict:
    if name == "qkv":
        return tune_qkv(out, preset, k, bias, m, bw)
    copies = max(2, -(-(160 << 20) // (n * k * 2 * (2 if swiglu else 1))))
    gen = torch.Generator(device="cuda").manual_seed(n + k + m)
    ws = [torch.randn(n, k, generator=gen, device="cuda").mul_(k ** -0.5).bfloat16() for _ in range(copies)]
    us = [torch.randn(n, k, generator=gen, device="cuda").mul_(k ** -0.5).bfloat16() for _ in range(copies)] if swiglu else ws
    b = torch.randn(n, generator=gen, device="cuda").bfloat16() if bias else None
    x = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
    ref = x.double() @ ws[0].double().T + (0 if b is None else b.double())
    if swiglu:
        ref = F.silu(ref) * (x.double() @ us[0].double().T)
    nbytes = n * k * 2 * (2 if swiglu else 1)

    def cublas(i):
        w, u = ws[i % copies], us[i % copies]
        return F.silu(F.linear(x, w)) * F.linear(x, u) if swiglu else F.linear(x, w, b)

    rows = []
    base = graph_time(cublas)
    rows.append(dict(impl="cublas", us=base * 1e6, rel_err=((cublas(0).double() - ref).norm() / ref.norm()).item()))
    for t in variants(n, k):
        def kern(i, t=t):
            return skinny.launch(x, ws[i % copies], b, us[i % copies] if swiglu else None, t)
        try:
            y = kern(0)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - out of shared memory / registers on this chip
            rows.append(dict(impl="triton", tile=t.__dict__, error=str(e)[:120]))
            continue
        err = ((y.double() - ref).norm() / ref.norm()).item()
        same = bool(torch.equal(kern(0), y))  # deterministic: the same bits again
        rows.append(dict(impl="triton", tile=t.__dict__, us=graph_time(kern) * 1e6, rel_err=err, deterministic=same))
    for r in rows:
        r.update(part="skinny_tune", model=preset, name=name, m=m, n=n, k=k, swiglu=swiglu, bias=bias)
        if "us" in r:
            r["bw_frac"] = nbytes / (r["us"] / 1e6) / bw
        print(json.dumps(r), file=out, flush=True)
    ok = [r for r in rows if r["impl"] == "triton" and "us" in r and r["rel_err"] < 1e-2 and r["deterministic"]]
    best = min(ok, key=lambda r: r["us"]) if ok else None
    win = best is not None and best["us"] < rows[0]["us"]
    summary = dict(part="skinny_choice", model=preset, name=name, m=m, n=n, k=k, swiglu=swiglu,
                   cublas_us=rows[0]["us"], best_us=best["us"] if best else None,
                   tile=best["tile"] if win else None, key=[n, k, skinny.row_bucket(m), swiglu],
                   cublas_bw=rows[0].get("bw_frac"), best_bw=best.get("bw_frac") if best else None,
                   worst_rel_err=max((r["rel_err"] for r in ok), default=None))
    print(json.dumps(summary), file=out, flush=True)
    print(f"{preset:>9} {name:>7} M={m:<4} N={n:<6} K={k:<6} cuBLAS {rows[0]['us']:8.1f} us "
          f"({100 * rows[0]['bw_frac']:3.0f}% BW)  best triton "
          + (f"{best['us']:8.1f} us ({100 * best['bw_frac']:3.0f}%) {best['tile']}" if best else "none"), flush=True)
    return summary


def tune_qkv(out, preset: str, k: int, bias: bool, m: int, bw: float) -> dict:
    """q, k and v in one grouped launch against three cuBLAS GEMMs."""
    ns = qkv_widths(preset)
    n = sum(ns)
    copies = max(2, -(-(160 << 20) // (n * k * 2)))
    gen = torch.Generator(device="cuda").manual_seed(n + k)
    sets = [[torch.randn(w, k, generator=gen, device="cuda").mul_(k ** -0.5).bfloat16() for w in ns]
            for _ in range(copies)]
    bs = [torch.randn(w, generator=gen, device="cuda").bfloat16() for w in ns] if bias else [None] * 3
    x = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
    refs = [x.double() @ w.double().T + (0 if b is None else b.double()) for w, b in zip(sets[0], bs, strict=True)]

    def cublas(i):
        return [F.linear(x, w, b) for w, b in zip(sets[i % copies], bs, strict=True)]

    rows = [dict(impl="cublas", us=graph_time(cublas) * 1e6)]
    for t in variants(n, k, ns):
        def kern(i, t=t):
            return skinny.launch_grouped(x, sets[i % copies], bs, t)
        try:
            ys = kern(0)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001
            rows.append(dict(impl="triton", tile=t.__dict__, error=str(e)[:120]))
            continue
        err = max(((y.double() - r).norm() / r.norm()).item() for y, r in zip(ys, refs, strict=True))
        same = all(torch.equal(a, b) for a, b in zip(kern(0), ys, strict=True))
        rows.append(dict(impl="triton", tile=t.__dict__, us=graph_time(kern) * 1e6, rel_err=err, deterministic=same))
    for r in rows:
        r.update(part="skinny_tune", model=preset, name="qkv", m=m, n=n, k=k, swiglu=False, bias=bias)
        if "us" in r:
            r["bw_frac"] = n * k * 2 / (r["us"] / 1e6) / bw
        print(json.dumps(r), file=out, flush=True)
    ok = [r for r in rows if r["impl"] == "triton" and "us" in r and r["rel_err"] < 1e-2 and r["deterministic"]]
    best = min(ok, key=lambda r: r["us"]) if ok else None
    win = best is not None and best["us"] < rows[0]["us"]
    summary = dict(part="skinny_choice", model=preset, name="qkv", m=m, n=n, k=k, swiglu=False,
                   cublas_us=rows[0]["us"], best_us=best["us"] if best else None, tile=best["tile"] if win else None,
                   key=[n, k, skinny.row_bucket(m), False], cublas_bw=rows[0]["bw_frac"],
                   best_bw=best["bw_frac"] if best else None)
    print(json.dumps(summary), file=out, flush=True)
    print(f"{preset:>9}     qkv M={m:<4} N={n:<6} K={k:<6} cuBLAS x3 {rows[0]['us']:8.1f} us  best grouped "
          + (f"{best['us']:8.1f} us ({100 * best['bw_frac']:3.0f}%) {best['tile']}" if best else "none"), flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["llada-8b", "dream-7b"])
    ap.add_argument("--out", default="tune.jsonl")
    ap.add_argument("--table", default="skinny_table.json")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    ap.add_argument("--only", nargs="*", default=None, help="shape names (q, qkv, swiglu, down, head, ...)")
    args = ap.parse_args()
    from bench.bench_step import measure_ceilings

    with torch.inference_mode():
        bw = measure_ceilings()["bandwidth_Bps"]
    todo = [(p, *s) for p in args.models for s in shapes(p) if args.only is None or s[0] in args.only]
    jobs = [(m, n, k, sw, bias, (t.bn, t.bk, t.splits, t.warps, t.stages), parts)
            for p, name, n, k, sw, bias, m in todo
            for parts in [qkv_widths(p) if name == "qkv" else ()] for t in variants(n, k, parts)]
    precompile(jobs, args.workers)
    table = {}
    with open(args.out, "w") as out, torch.inference_mode():
        print(json.dumps(dict(part="env", gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                              triton=skinny.triton.__version__, bandwidth_Bps=bw)), file=out, flush=True)
        for preset, name, n, k, sw, bias, m in todo:
            s = tune_shape(out, preset, name, n, k, sw, bias, m, bw)
            table[",".join(map(str, s["key"]))] = s["tile"]
    with open(args.table, "w") as f:
        json.dump(table, f, indent=1)


def load_table(path: str) -> None:
    """Put a ``--table`` file into ``skinny.TUNED`` (bench_step.py --skinny-table)."""
    with open(path) as f:
        for key, tile in json.load(f).items():
            n, k, bm, sw = key.split(",")
            skinny.TUNED[(int(n), int(k), int(bm), sw == "True")] = None if tile is None else skinny.Tile(**tile)


if __name__ == "__main__":
    main()
