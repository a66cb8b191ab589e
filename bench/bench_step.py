"""GPU benchmark of the decoding step on a model shape with random weights (bf16): ``--model random:llada-8b``
(default) or ``random:dream-7b``, any other ``pretrained`` value too.

Measures, in one run (see docs/benchmarks.md for the command and the recorded numbers):
  (a) time per forward step for cache none / prefix / dual, gen_length 256 and 1024, batch 1/8/16/32;
  (b) the same against a roofline built from this machine's measured copy bandwidth and bf16 matmul rate;
  (c) policy overhead per step (confidence + selection) as a share of the step;
  (d) end-to-end generations per second for a fixed schedule, batch 1 vs batched;
  (e) peak GPU memory per configuration.
Prints a table last and writes JSON lines to --out. ``--rules`` instead times the field's rules (prophet,
wino, slowfast) per forward beside threshold's, at batch 1 and 16, with and without CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from l2pd_eval.caches import StepInput, available, cache_class
from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate
from l2pd_eval.model import SpecialIds, load_model
from l2pd_eval.policies import Policy, StepState, get_policy, topk_mask

DEVICE = "cuda"


def speed(args, cache: str = "", graph_width_bucket: int = 0) -> SpeedConfig:
    """The run's speed switches from the A/B flags; ``cache`` ending in ``+graph`` turns CUDA graphs on.
    Width buckets default to exact widths: the step tables time each block's own chunk."""
    return SpeedConfig(cuda_graph=cache.endswith("+graph"), compile=args.compile,
                       compile_autotune=args.compile_autotune, split_keys=not args.no_split_kv,
                       graph_row_buckets=not args.no_row_buckets, graph_width_bucket=graph_width_bucket)


def strategy(args, cache: str, model, batch: int, total: int):
    """``cache`` (a registered name, ``+graph`` for graph replay) as the engine builds it."""
    return speed(args, cache).strategy(cache.split("+")[0], model, batch, total)


def width_buckets_apply(cache: str, batch: int) -> bool:
    """Where ``graph_width_bucket`` changes anything: graphed strategies with ``width_buckets``, at batch 1."""
    return cache.endswith("+graph") and cache_class(cache.split("+")[0]).width_buckets and batch == 1


def cache_choices() -> list[str]:
    """Every registered cache, and ``<name>+graph`` for those that replay CUDA graphs."""
    return [*available(), *(f"{c}+graph" for c in available() if cache_class(c).cuda_graphs)]


def cuda_time(fn, warmup: int = 2, iters: int = 5) -> float:
    """Median seconds of ``fn`` timed with CUDA events (host clock on CPU, for smoke runs)."""
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE == "cpu":
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_ceilings() -> dict[str, float]:
    n = 1 << 30 if DEVICE == "cuda" else 1 << 22  # 2 GiB bf16 buffers: far beyond L2
    a = torch.empty(n, dtype=torch.bfloat16, device=DEVICE).normal_()
    b = torch.empty_like(a)
    t = cuda_time(lambda: b.copy_(a), iters=10)
    bw = 2 * a.numel() * 2 / t  # bytes read + written
    a = b = None  # free before the matmul buffers
    m = 8192 if DEVICE == "cuda" else 512
    x = torch.randn(m, m, dtype=torch.bfloat16, device=DEVICE)
    y = torch.randn(m, m, dtype=torch.bfloat16, device=DEVICE)
    t = cuda_time(lambda: x @ y, iters=10)
    return {"bandwidth_Bps": bw, "matmul_flops": 2 * m ** 3 / t}


def step_cost(model, cache: str, batch: int, prompt: int, gen: int, block: int = 32,
              block_start: int | None = None) -> dict[str, float]:
    """What a step must move/do at least, for the block at ``block_start`` (default: the mid block of the
    answer): totals (bytes, flops) and the GEMM / attention parts, so a per-op floor can be formed (the parts
    run one after the other). ``cache="none"`` is a full forward, as every block's refresh is."""
    c = model.config
    elt = 2
    total = prompt + gen
    bs = prompt + gen // 2 if block_start is None else block_start
    strat = cache_class(cache)  # its cost model: queries per cached step (a full forward without a cache)
    queries = strat.step_queries((bs, bs + block), total, model.logit_shift)
    layer_params = c.n_layers * (2 * c.d_model * c.n_heads * c.head_dim + 2 * c.d_model * c.kv_heads * c.head_dim
                                 + 3 * c.d_model * c.mlp_width)
    head = c.d_model * c.vocab_size
    weights = (layer_params + head) * elt  # embedding rows gathered are negligible
    kv_read = 2 * c.n_layers * c.kv_heads * c.head_dim * strat.kv_positions(total) * elt * batch
    gemm_flops = 2 * layer_params * queries * batch + 2 * head * block * batch
    attn_flops = 4 * c.n_layers * c.d_model * queries * total * batch
    return dict(bytes=weights + kv_read, flops=gemm_flops + attn_flops, gemm_bytes=weights, gemm_flops=gemm_flops,
                attn_bytes=kv_read, attn_flops=attn_flops)


def floors(cost: dict[str, float], ceil: dict[str, float]) -> tuple[float, float, str]:
    """(floor, per-op floor, bound). floor = max(bytes/BW, FLOPs/rate) of the whole step, as the issue
    defines it; per-op floor = the same max taken for the GEMMs and for attention separately, then summed
    (at batch 16 the GEMMs are compute-bound while attention streams the KV cache: they cannot overlap)."""
    bw, rate = ceil["bandwidth_Bps"], ceil["matmul_flops"]
    floor = max(cost["bytes"] / bw, cost["flops"] / rate)
    per_op = max(cost["gemm_bytes"] / bw, cost["gemm_flops"] / rate) + max(cost["attn_bytes"] / bw,
                                                                            cost["attn_flops"] / rate)
    return floor, per_op, "memory" if cost["bytes"] / bw > cost["flops"] / rate else "compute"


def schedule_floor(model, cache: str, batch: int, prompt: int, gen: int, steps_per_block: int,
                   ceil: dict[str, float], block: int = 32) -> dict[str, float]:
    """Floors of a whole decode on this machine: per block, its refresh (a full forward: compute-bound from
    batch ~8 on) plus ``steps_per_block - 1`` cached steps (weight and KV streaming at small batch), each at
    its floor, summed over the blocks (the prefix cache's chunk shrinks block by block). ``floor_s`` takes
    each forward's whole-step floor max(bytes/BW, FLOPs/rate); ``per_op_floor_s`` its per-op floor."""
    out = dict(floor_s=0.0, per_op_floor_s=0.0, refresh_floor_s=0.0, cached_floor_s=0.0)
    for b in range(gen // block):
        bs = prompt + b * block
        full, per_op_full, _ = floors(step_cost(model, "none", batch, prompt, gen, block, bs), ceil)
        n_cached = steps_per_block - 1
        step, per_op_step, _ = floors(step_cost(model, cache, batch, prompt, gen, block, bs), ceil)
        out["floor_s"] += full + n_cached * step
        out["per_op_floor_s"] += per_op_full + n_cached * per_op_step
        out["refresh_floor_s"] += per_op_full
        out["cached_floor_s"] += n_cached * per_op_step
    return out


def step_fn(strat, x, pos, block, total, step: int = 1):
    """One forward of ``strat`` at ``step`` of the block (0: the block's refreshing step)."""
    return lambda: strat.logits(StepInput(x, pos, None, block, total, step=step))


def time_strategy(strat, x, pos, block, total):
    """(refresh seconds, block-step seconds) for one strategy on a filled cache."""
    step_fn(strat, x, pos, block, total, step=0)()
    refresh = cuda_time(step_fn(strat, x, pos, block, total, step=0), iters=3)
    step_fn(strat, x, pos, block, total, step=0)()
    step = cuda_time(step_fn(strat, x, pos, block, total))
    return refresh, step


def time_policy(policy, step, predict, reps: int = 8) -> tuple[float, float]:
    """Seconds per step of the vocabulary statistics (x0, confidence) + selection: (isolated, in pipeline).

    Isolated times the policy on its own, so at small batch it is mostly kernel-launch time. In pipeline
    is (forward + policy) - forward over ``reps`` steps enqueued back to back, as the engine runs them: the
    host launches the policy while the GPU still runs the forward, so only its device time remains."""
    logits = step()
    batch, width = logits.shape[:2]
    masked = torch.rand(batch, width, device=logits.device) < 0.5
    masked[:, 0] = True
    seeds = torch.zeros(batch, dtype=torch.long, device=logits.device)
    ones = torch.ones(batch, dtype=torch.long, device=logits.device)
    rows = torch.arange(batch, device=logits.device)

    def select(lg):
        x0, conf = predict(lg, 0.0, seeds, (0, 0, 0))
        st = StepState(conf=conf, x0=x0, masked=masked, k=ones, step=0, block=0, block_start=0, rows=rows)
        return policy.select(st) & masked

    isolated = cuda_time(lambda: select(logits))
    if DEVICE == "cuda" and cuda_time(step, warmup=0, iters=1) > 0.05:
        return isolated, isolated  # long full-forward steps: the isolated time already is a small share
    diffs = []
    for _ in range(9):  # interleaved, so clock drift hits both sides of each difference alike
        with_policy = cuda_time(lambda: [select(step()) for _ in range(reps)], warmup=1, iters=1)
        forward_only = cuda_time(lambda: [step() for _ in range(reps)], warmup=1, iters=1)
        diffs.append((with_policy - forward_only) / reps)
    return isolated, max(statistics.median(diffs), 0.0)


def bench_steps(model, special, args, ceilings, out):
    rows = []
    for gen in args.gen_lengths:
        for batch in args.batches:
            for cache in args.caches:
                total = args.prompt + gen
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                x = torch.randint(0, model.config.vocab_size, (batch, total), device=DEVICE)
                pos = torch.arange(total, device=DEVICE).expand(batch, total)
                bs = args.prompt + gen // 2
                try:
                    strat = strategy(args, cache, model, batch, total)
                    refresh, step = time_strategy(strat, x, pos, (bs, bs + 32), total)
                    iso, piped = time_policy(get_policy(args.policy_for_overhead),
                                             step_fn(strat, x, pos, (bs, bs + 32), total), speed(args).predictor())
                except torch.OutOfMemoryError:
                    rows.append(dict(gen=gen, batch=batch, cache=cache, oom=True))
                    print(json.dumps(rows[-1]), file=out, flush=True)
                    continue
                cost = step_cost(model, cache.split("+")[0], batch, args.prompt, gen)
                floor, per_op, bound = floors(cost, ceilings)
                row = dict(gen=gen, batch=batch, cache=cache, step_ms=step * 1e3, refresh_ms=refresh * 1e3,
                           floor_ms=floor * 1e3, ratio=step / floor, per_op_floor_ms=per_op * 1e3,
                           per_op_ratio=step / per_op, bound=bound,
                           policy_ms=iso * 1e3, policy_share=iso / (step + iso),
                           policy_pipelined_ms=piped * 1e3, policy_pipelined_share=piped / (step + piped),
                           peak_gib=torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0)
                rows.append(row)
                print(json.dumps(row), file=out, flush=True)
                strat = x = None  # free the cache before the next configuration
    return rows


def check_graph(model, args, out) -> float:
    """Max |graph - eager| of prefix and dual cached-step logits (also with a padding mask), and equal
    greedy tokens, before trusting graph timings. tests/test_cuda_graphs.py checks whole decodes."""
    x = torch.randint(0, model.config.vocab_size, (2, 320), device=DEVICE)
    pos = torch.arange(320, device=DEVICE).expand(2, 320)
    mask = torch.ones(2, 320, dtype=torch.bool, device=DEVICE)
    mask[1, :40] = False
    worst, same = 0.0, True
    for cache in [c for c in available() if cache_class(c).cuda_graphs]:
        for key_mask in (None, mask):
            res = []
            for graph in ("", "+graph"):
                strat = strategy(args, cache + graph, model, 2, 320)
                for block in ((64, 96), (96, 128)):  # second block: graphs captured, now replayed
                    strat.logits(StepInput(x, pos, key_mask, block, 320, step=0))
                    strat.logits(StepInput(x, pos, key_mask, block, 320, step=1))
                res.append(strat.logits(StepInput(x, pos, key_mask, (96, 128), 320, step=1)).float())
            worst = max(worst, (res[0] - res[1]).abs().max().item())
            same &= bool(torch.equal(res[0].argmax(-1), res[1].argmax(-1)))
    print(json.dumps(dict(graph_check=True, max_abs_diff=worst, same_argmax=same)), file=out, flush=True)
    print(f"graph vs eager prefix/dual logits (with and without padding mask): max |diff| {worst:.3g}, "
          f"same argmax {same}")
    return worst


class Staggered(Policy):
    """Bench-only workload: row r commits (r mod 4) + 1 tokens per step, so rows finish a block at different
    steps (8 to 32), as threshold and Learn2PD rows do on real weights, which random weights cannot show."""

    name = "_staggered"
    scheduled = False

    def select(self, state):
        return topk_mask(state.masked_conf, state.rows % 4 + 1)


def host_time(fn) -> float:
    """Seconds of one call with the device drained before and after (what the engine's loop waits)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_prefix_blocks(model, args, out) -> list[dict]:
    """What each block's new chunk width costs the prefix cache with graphs (batch 1, one answer of
    ``--e2e-gen``): the block's first cached step runs eagerly, its second records the graph and replays it,
    later steps replay. A graph reused across blocks would pay replays only, at its (padded) width."""
    gen, total = args.e2e_gen, args.prompt + args.e2e_gen
    x = torch.randint(0, model.config.vocab_size, (1, total), device=DEVICE)
    pos = torch.arange(total, device=DEVICE).expand(1, total)
    strat = strategy(args, "prefix+graph", model, 1, total)  # exact widths
    rows = []
    for b in range(gen // 32):
        block = (args.prompt + 32 * b, args.prompt + 32 * b + 32)
        step_fn(strat, x, pos, block, total, step=0)()
        step = step_fn(strat, x, pos, block, total)
        eager, record = host_time(step), host_time(step)
        replay = cuda_time(step, warmup=1, iters=5)
        rows.append(dict(part="prefix_block", block=b, width=total - block[0], eager_ms=eager * 1e3,
                         record_and_replay_ms=record * 1e3, replay_ms=replay * 1e3,
                         new_shape_overhead_ms=(eager + record - 2 * replay) * 1e3))
        print(json.dumps(rows[-1]), file=out, flush=True)
    return rows


def bench_e2e(model, special, args, out, steps: dict, ceilings: dict[str, float]):
    rows = []
    for spb in args.e2e_steps_per_block:
        for cache in args.e2e_caches:
            for batch in args.e2e_batches:
                buckets = args.graph_width_bucket if width_buckets_apply(cache, batch) else args.graph_width_bucket[:1]
                for wb in buckets:
                    rows.append(e2e_cell(model, special, args, cache, batch, spb, steps, ceilings, wb))
                    print(json.dumps(rows[-1]), file=out, flush=True)
    return rows


def e2e_cell(model, special, args, cache: str, batch: int, spb: int, steps: dict, ceilings: dict[str, float],
             width_bucket: int) -> dict:
    """Median wall of whole generate() calls for one (cache, batch, steps per block), with the schedule's floor
    and, where the step table has the cell, the forwards it predicts (the rest is engine + policy)."""
    def e2e_policy():
        return Staggered() if args.e2e_policy == "staggered" else get_policy(args.e2e_policy)

    mode = cache.split("+")[0]
    cfg = GenerationConfig(gen_length=args.e2e_gen, block_length=32, steps=args.e2e_gen // 32 * spb, cache=mode)
    fast = speed(args, cache, width_bucket)
    lengths = torch.randint(args.prompt // 2, args.prompt + 1, (batch,)) if args.e2e_ragged else [args.prompt] * batch
    prompts = [torch.randint(0, model.config.vocab_size - 8, (int(n),)).tolist() for n in lengths]
    # warm-up on the same shapes: compilation is a once-per-process cost; graph captures are not (each
    # generate() call records its own, as each lm-eval batch would), so the timed run still pays them
    generate(model, prompts, cfg, e2e_policy(), special, speed=fast)
    walls = []
    for _ in range(args.e2e_reps):  # median: host-side jitter moves single batch-1 runs by ~10%
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = generate(model, prompts, cfg, e2e_policy(), special, speed=fast)
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    row = dict(e2e=True, cache=cache, batch=batch, gen=args.e2e_gen, steps=cfg.total_steps, seconds=wall,
               gens_per_s=batch / wall, reps=args.e2e_reps, steps_per_block=spb,
               nfe=max(s.nfe for s in res.stats), ragged=args.e2e_ragged, policy=args.e2e_policy,
               row_buckets=not args.no_row_buckets, graph_width_bucket=width_bucket)
    plain = not args.e2e_ragged and args.e2e_policy == "low_confidence"
    if plain:  # fixed schedule, equal prompts: the whole decode's floor (refresh + cached steps)
        floor = schedule_floor(model, mode, batch, args.prompt, args.e2e_gen, spb, ceilings)
        row.update(floor, floor_ratio=wall / floor["floor_s"], per_op_floor_ratio=wall / floor["per_op_floor_s"])
    timed = steps.get((args.e2e_gen, batch, cache)) if plain else None
    if timed is not None:  # forward time the step benchmark predicts (its mid-block step for every block)
        refresh_s = cfg.num_blocks * timed["refresh_ms"] / 1e3
        cached_s = (row["nfe"] - cfg.num_blocks) * timed["step_ms"] / 1e3
        row.update(forward_s=refresh_s + cached_s, engine_share=1 - (refresh_s + cached_s) / wall,
                   refresh_s=refresh_s, cached_s=cached_s)
    return row


RULES = ("threshold", "prophet", "wino", "slowfast")  # threshold: the reference the field's rules are held to


def rules_cell(model, special, args, cache: str, batch: int, rule: str) -> dict:
    """Milliseconds per forward of whole decodes with ``rule`` (defaults) at ``cache`` and ``batch``. On random
    weights every rule commits one token a step (no confidence reaches a threshold, no gap an exit, no draft
    is verified), so every rule makes the same forwards and the difference is each rule's own cost per step:
    prophet's view of the answer (with a cache: query slots), wino's verification copy, slowfast's state.
    Prophet gets fixed tokens (as its authors' 200:The|201:answer|202:is) so that its gap window is live."""
    G = args.rules_gen
    fixed = tuple((G - 56 + i, 10 + i) for i in range(3)) if rule == "prophet" else ()
    cfg = GenerationConfig(gen_length=G, block_length=32, cache=cache.split("+")[0], constraints=fixed)
    fast = speed(args, cache)
    prompts = [torch.randint(0, model.config.vocab_size - 8, (args.prompt,)).tolist() for _ in range(batch)]
    generate(model, prompts, cfg, get_policy(rule), special, speed=fast)  # warm-up: compilation, first captures
    walls = []
    for _ in range(args.rules_reps):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = generate(model, prompts, cfg, get_policy(rule), special, speed=fast)
        walls.append(time.perf_counter() - t0)
    wall, nfe = statistics.median(walls), max(st.nfe for st in res.stats)
    return dict(rules=True, rule=rule, cache=cache, batch=batch, gen=G, prompt=args.prompt, nfe=nfe,
                seconds=wall, ms_per_forward=wall / nfe * 1e3, reps=args.rules_reps,
                queries_per_row=max(st.positions for st in res.stats) / nfe)


def bench_rules(model, special, args, out) -> list[dict]:
    """Each rule's per-forward time beside threshold's (``ratio``: rule / threshold) per cache and batch."""
    rows = []
    for cache in args.rules_caches:
        for batch in args.rules_batches:
            ref = None
            for rule in RULES:
                row = rules_cell(model, special, args, cache, batch, rule)
                ref = row["ms_per_forward"] if rule == "threshold" else ref
                row["ratio_to_threshold"] = row["ms_per_forward"] / ref
                rows.append(row)
                print(json.dumps(row), file=out, flush=True)
    return rows


def _print_rules(rows: list[dict]) -> None:
    print(f"{'cache':>12} {'B':>3} {'rule':>10} {'NFE':>5} {'ms/forward':>10} {'x threshold':>11} {'queries/row':>11}")
    for r in rows:
        print(f"{r['cache']:>12} {r['batch']:>3} {r['rule']:>10} {r['nfe']:>5} {r['ms_per_forward']:10.2f} "
              f"{r['ratio_to_threshold']:11.3f} {r['queries_per_row']:11.1f}")


def _parser() -> argparse.ArgumentParser:
    """Defaults: the LLaDA-8B shape at the papers' GSM8K sizes; each A/B flag turns off one speed switch."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=900, help="prompt tokens (~5-shot GSM8K in LLaDA tokens)")
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--caches", nargs="*", default=cache_choices())
    ap.add_argument("--e2e-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--e2e-caches", nargs="*", default=cache_choices())
    ap.add_argument("--e2e-gen", type=int, default=256)
    ap.add_argument("--e2e-reps", type=int, default=3, help="timed generations per e2e cell (median)")
    ap.add_argument("--e2e-steps-per-block", type=int, nargs="+", default=[8],
                    help="fixed schedule(s); 2 or 3 is what threshold or Learn2PD take on real weights")
    ap.add_argument("--e2e-policy", default="low_confidence",
                    help="low_confidence (fixed schedule), staggered (rows finish blocks at different steps) or any policy")
    ap.add_argument("--no-row-buckets", action="store_true",
                    help="A/B only: capture a graph per row count instead of per row bucket")
    ap.add_argument("--no-split-kv", action="store_true",
                    help="A/B only: SDPA's dispatch instead of the key-splitting flash kernel at batch 1 (model/attention.py)")
    ap.add_argument("--e2e-ragged", action="store_true",
                    help="e2e prompts of random lengths in [prompt/2, prompt]: padded batches, as lm-eval sends them")
    ap.add_argument("--policy-for-overhead", default="threshold")
    ap.add_argument("--out", default="bench.jsonl")
    ap.add_argument("--model", default="random:llada-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true", help="compile=true: torch.compile the blocks and statistics")
    ap.add_argument("--graph-width-bucket", type=int, nargs="+", default=[128],
                    help="SpeedConfig.graph_width_bucket; several values: one batch-1 e2e cell each where it applies")
    ap.add_argument("--prefix-blocks", action="store_true",
                    help="also time each block's new-width cost for prefix+graph at batch 1 (gen --e2e-gen)")
    ap.add_argument("--compile-autotune", action="store_true",
                    help="with --compile: inductor times reduction configs (compile_autotune=true)")
    ap.add_argument("--rules", action="store_true",
                    help="only the field's rules' per-forward time beside threshold's (prophet, wino, slowfast)")
    ap.add_argument("--rules-caches", nargs="+", default=["none", "dual", "dual+graph", "prefix+graph"])
    ap.add_argument("--rules-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rules-gen", type=int, default=64, help="answer length of the --rules decodes (2 blocks)")
    ap.add_argument("--rules-reps", type=int, default=2, help="timed decodes per --rules cell (median)")
    return ap


def _print_summary(env: dict, steps: list[dict], e2e: list[dict]) -> None:
    """The table for a reader, from the rows already written to ``--out`` (the JSON lines are the record)."""
    print(f"{env['gpu']}  copy {env['bandwidth_Bps'] / 1e12:.2f} TB/s  bf16 matmul {env['matmul_flops'] / 1e12:.0f} TFLOP/s")
    print(f"{'gen':>5} {'B':>3} {'cache':>12} {'step ms':>8} {'floor':>7} {'ratio':>6} {'per-op':>7} {'ratio':>6} "
          f"{'bound':>7} {'refresh':>8} {'pol iso':>7} {'pol pipe':>8} {'peakGiB':>7}")
    for r in steps:
        if r.get("oom"):
            print(f"{r['gen']:>5} {r['batch']:>3} {r['cache']:>12}  OOM")
            continue
        print(f"{r['gen']:>5} {r['batch']:>3} {r['cache']:>12} {r['step_ms']:8.2f} {r['floor_ms']:7.2f} {r['ratio']:6.2f} "
              f"{r['per_op_floor_ms']:7.2f} {r['per_op_ratio']:6.2f} {r['bound']:>7} {r['refresh_ms']:8.1f} "
              f"{100 * r['policy_share']:6.2f}% {100 * r['policy_pipelined_share']:7.2f}% {r['peak_gib']:7.1f}")
    for r in e2e:
        extra = f"  engine+policy {100 * r['engine_share']:.1f}% of wall" if "engine_share" in r else ""
        if "floor_s" in r:
            extra += f"  {r['floor_ratio']:.2f}x its floor ({r['per_op_floor_ratio']:.2f}x per-op)"
        extra += f"  policy={r['policy']}" + ("" if r["row_buckets"] else " (graph per row count)")
        if width_buckets_apply(r["cache"], r["batch"]):
            extra += f"  width bucket {r['graph_width_bucket']}"
        print(f"e2e cache={r['cache']:>12} B={r['batch']:>2} gen={r['gen']} steps={r['steps']:>3}"
              f"{' ragged' if r['ragged'] else ''}: "
              f"{r['seconds']:.2f}s  {r['gens_per_s']:.2f} gen/s{extra}")


def main() -> None:
    args = _parser().parse_args()
    global DEVICE
    DEVICE = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    with open(args.out, "w") as out, torch.inference_mode():
        ceilings = measure_ceilings()
        gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
        env = dict(gpu=gpu, torch=torch.__version__, model=args.model, prompt=args.prompt, compiled=args.compile,
                   compile_autotune=args.compile_autotune,
                   split_kv=not args.no_split_kv,
                   **ceilings)
        print(json.dumps(env), file=out, flush=True)
        model = load_model(args.model, dtype="bfloat16", device=DEVICE)
        speed(args).prepare(model)
        c = model.config  # the family's ids; tiny presets carry none: the last ids of their vocabulary
        special = SpecialIds.resolve(None, c, mask_id=None if c.mask_token_id is not None else c.vocab_size - 1,
                                     eos_id=None if c.eos_token_id is not None else c.vocab_size - 2)
        if args.rules:
            rules = bench_rules(model, special, args, out)
            _print_rules(rules)
            return
        check_graph(model, args, out)
        steps = bench_steps(model, special, args, ceilings, out)
        timed = {(r['gen'], r['batch'], r['cache']): r for r in steps if not r.get('oom')}
        e2e = bench_e2e(model, special, args, out, timed, ceilings)
        blocks = bench_prefix_blocks(model, args, out) if args.prefix_blocks else []
    _print_summary(env, steps, e2e)
    for r in blocks:
        print(f"prefix+graph block {r['block']:>2} width {r['width']:>4}: eager {r['eager_ms']:6.2f} ms, record+replay "
              f"{r['record_and_replay_ms']:6.2f} ms, replay {r['replay_ms']:5.2f} ms; new width costs "
              f"{r['new_shape_overhead_ms']:6.2f} ms over two replays")


if __name__ == "__main__":
    main()
