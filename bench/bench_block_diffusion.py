"""GPU benchmark of the block-diffusion families at their released shapes (random weights, bf16): whole decodes
of LLaDA2.0-mini (``random:llada2-mini``, 16 B MoE) and SDAR-8B (``random:sdar-8b``, dense) at batch 1 and 16,
through the caches a block-causal network decodes with (``none``: every step a full forward; ``block``: the
exact cache of finished blocks, the block alone recomputed; ``dual``: Fast-dLLM's dual cache, exact here too).

    python bench/bench_block_diffusion.py --out docs/bench/bench_h200_block_diffusion.jsonl   # H200
    python bench/bench_block_diffusion.py --smoke                                               # CPU, tiny

Each decode has a fixed schedule (``low_confidence``, ``steps = gen_length``: one token per row and step, so
the caches are compared on the same forwards) on prompts of equal length (one block grid: batched rows share
every step). ``--ragged`` gives the rows prompts of different lengths mod the block instead, which the engine
decodes as one batch per grid (``engine.generate``): the cost of that split. Reported per configuration: the
median wall time of ``--reps`` decodes after one warm-up, the time per forward step, answer tokens per
second over the batch, and peak memory. Prints a table and writes JSON lines to ``--out``; docs/benchmarks.md
records the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate
from l2pd_eval.model import SpecialIds, load_model
from l2pd_eval.policies import get_policy


def prompts_for(model, batch: int, length: int, ragged: bool, seed: int = 0) -> list[list[int]]:
    """``batch`` random prompts of ``length`` tokens (``ragged``: lengths ``length - i mod block``)."""
    gen = torch.Generator().manual_seed(seed)
    vocab, block = model.config.vocab_size, model.block_size
    lengths = [length - (i % block if ragged else 0) for i in range(batch)]
    return [torch.randint(16, vocab - 16, (n,), generator=gen).tolist() for n in lengths]


def run_one(model, special, cache: str, batch: int, args) -> dict:
    block = model.block_size
    cfg = GenerationConfig(gen_length=args.gen, block_length=block, cache=cache)
    warm = GenerationConfig(gen_length=2 * block, block_length=block, cache=cache)
    prompts = prompts_for(model, batch, args.prompt, args.ragged)
    policy = get_policy("low_confidence")
    speed = SpeedConfig(cuda_graph=False)
    cuda = model.device.type == "cuda"
    generate(model, prompts, warm, policy, special, speed=speed)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, nfe = [], 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        out = generate(model, prompts, cfg, policy, special, speed=speed)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        nfe = max(s.nfe for s in out.stats)
    wall = statistics.median(times)
    return {"model": args.current, "cache": cache, "batch": batch, "prompt": args.prompt, "gen_length": args.gen,
            "block_length": block, "ragged": args.ragged, "grids": len({len(p) % block for p in prompts}),
            "wall_s": wall, "forwards": nfe, "step_ms": 1e3 * wall / max(nfe, 1),
            "tokens_per_s": batch * args.gen / wall,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(model.dtype),
            **({"profile": profile_decode(model, prompts, cfg, policy, special, speed, args.profile)}
               if args.profile else {})}


def profile_decode(model, prompts, cfg, policy, special, speed, top: int) -> list[dict]:
    """One more decode under ``torch.profiler``: the ``top`` ops by device time (CPU time off CUDA), so a step
    that costs more than its arithmetic shows whether kernels or the host take the time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = model.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        generate(model, prompts, cfg, policy, special, speed=speed)
        if cuda:
            torch.cuda.synchronize()
    dev = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, dev), reverse=True)[:top]
    return [{"op": e.key, "calls": e.count, "self_device_ms": getattr(e, dev) / 1e3,
             "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in ops]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help="default random:llada2-mini random:sdar-8b (--smoke: their tiny shapes)")
    ap.add_argument("--caches", nargs="+", default=["none", "dual", "block"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=900, help="prompt tokens (~5-shot GSM8K)")
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--reps", type=int, default=1, help="timed decodes per configuration (median)")
    ap.add_argument("--ragged", action="store_true", help="prompt lengths that differ mod the block")
    ap.add_argument("--out", default="bench_block_diffusion.jsonl")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few seconds")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile one decode per configuration and record its N costliest ops")
    args = ap.parse_args(argv)
    device, dtype = ("cpu", "float32") if args.smoke or not torch.cuda.is_available() else ("cuda", "bfloat16")
    if args.smoke:
        args.prompt, args.gen = 20, 16
    args.models = args.models or (["random:llada2-tiny", "random:sdar-tiny"] if args.smoke
                                  else ["random:llada2-mini", "random:sdar-8b"])
    rows = []
    with open(args.out, "w") as fh:
        for name in args.models:
            model = load_model(name, dtype=dtype, device=device)
            special = SpecialIds(mask=model.config.vocab_size - 1, eos=model.config.vocab_size - 2)
            args.current = name
            for cache in args.caches:
                for batch in args.batches:
                    row = run_one(model, special, cache, batch, args)
                    rows.append(row)
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(f"{name:22s} {cache:6s} batch {batch:3d}  {row['step_ms']:8.2f} ms/step  "
                          f"{row['tokens_per_s']:9.1f} tok/s  grids {row['grids']}  peak {row['peak_gib']}")
                    for op in row.get("profile", []):
                        print(f"    {op['self_device_ms']:9.2f} ms  {op['calls']:6d} calls  {op['op'][:90]}")
            del model
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
