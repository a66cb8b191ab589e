"""GPU benchmark of the decoding step on a model shape with random weights (bf16): ``--model random:llada-8b``
(default) or ``random:dream-7b``, any other ``pretrained`` value too.

Measures, in one run (see docs/benchmarks.md for the command and the recorded numbers):
  (a) time per forward step for every registered cache (``--caches``), gen_length 256 and 1024, batch 1/8/16/32;
  (b) the same against a roofline built from this machine's measured copy bandwidth and bf16 matmul rate,
      for the work the step actually did (its query positions per row and the keys they attended, as the
      strategy reports them: DPad's drawn kept set, vicinity's window);
  (c) policy overhead per step (confidence + selection) as a share of the step;
  (d) end-to-end generations per second for a fixed schedule, batch 1 vs batched;
  (e) peak GPU memory per configuration;
  (f) with --confidence-rules, what each confidence rule (engine/predict.py) costs per step on the block's
      bf16 logits, greedy and sampled, and its peak memory (--confidence-only: this part alone).
Prints a table last and writes JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from l2pd_eval.caches import PrefixCache, StepInput, available, cache_class
from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate, rng
from l2pd_eval.engine.predict import CONFIDENCE_RULES
from l2pd_eval.model import SpecialIds, load_model, skinny
from l2pd_eval.policies import Policy, StepState, get_policy, topk_mask
from l2pd_eval.policies.scores import step_statistics

DEVICE = "cuda"
NEW_PADDED_WIDTH = PrefixCache.padded_width


def cache_params(args, cache: str) -> dict[str, str]:
    """The ``--cache-params`` that ``cache`` (a registered name, ``+graph`` allowed) takes."""
    taken = cache_class(cache.split("+")[0]).parameters()
    return {k: v for k, v in args.cache_params.items() if k in taken}


def speed(args, cache: str = "", graph_width_bucket: int = 0, gemm: str = "cublas") -> SpeedConfig:
    """The run's speed switches from the A/B flags; ``cache`` ending in ``+graph`` turns CUDA graphs on;
    ``gemm`` names the kernel variant: ``cublas`` (today's path), ``skinny`` (the skinny-GEMM kernel),
    ``attn`` (the Triton decode attention), ``skinny+attn`` (both). Width buckets default to exact widths:
    the step tables time each block's own chunk."""
    return SpeedConfig(cuda_graph=cache.endswith("+graph"), compile=args.compile,
                       compile_autotune=args.compile_autotune, split_keys=not args.no_split_kv,
                       graph_row_buckets=not args.no_row_buckets, graph_width_bucket=graph_width_bucket,
                       skinny_gemm="skinny" in gemm.split("+"), triton_attention="attn" in gemm.split("+"))


def strategy(args, cache: str, model, batch: int, total: int, gemm: str = "cublas"):
    """``cache`` (a registered name, ``+graph`` for graph replay) as the engine builds it (``gemm`` applied
    to the model first, as ``generate`` does)."""
    fast = speed(args, cache, gemm=gemm)
    fast.prepare(model)
    return fast.strategy(cache.split("+")[0], model, batch, total, cache_params(args, cache))


def skinny_applies(model, cache: str, batch: int, prompt: int, gen: int) -> bool:
    """Whether a batch-1 step takes the Triton kernels at all (few enough rows: model.skinny, and the
    decode attention's query limit, the same 128)."""
    bs = prompt + gen // 2
    rows = batch * cache_class(cache.split("+")[0]).step_queries((bs, bs + 32), prompt + gen, model.logit_shift)
    return batch == 1 and rows <= skinny.MAX_ROWS


def old_padded_width(self, width: int) -> int:
    """The width-bucket rule before issue 28 (bench A/B only): the shifted chunk rounded as it is."""
    return -(-width // self.width_bucket) * self.width_bucket if self.width_bucket else width


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
              block_start: int | None = None, work: tuple[float, int] | None = None) -> dict[str, float]:
    """What a step must move/do at least, for the block at ``block_start`` (default: the mid block of the
    answer): totals (bytes, flops) and the GEMM / attention parts, so a per-op floor can be formed (the parts
    run one after the other). ``cache="none"`` is a full forward, as every block's refresh is. ``work``:
    (query positions per row, keys per query) the step actually computed (``measured_work``); default the
    strategy's class cost model (``step_queries`` over the whole live length)."""
    c = model.config
    elt = 2
    total = prompt + gen
    bs = prompt + gen // 2 if block_start is None else block_start
    strat = cache_class(cache)  # its cost model: queries per cached step (a full forward without a cache)
    queries, keys = work or (strat.step_queries((bs, bs + block), total, model.logit_shift), total)
    layer_params = c.n_layers * (2 * c.d_model * c.n_heads * c.head_dim + 2 * c.d_model * c.kv_heads * c.head_dim
                                 + 3 * c.d_model * c.mlp_width)
    head = c.d_model * c.vocab_size
    weights = (layer_params + head) * elt  # embedding rows gathered are negligible
    read = keys if strat.kv_positions(total) else 0  # a cache's keys/values are read; none computes its own
    kv_read = 2 * c.n_layers * c.kv_heads * c.head_dim * read * elt * batch
    gemm_flops = 2 * layer_params * queries * batch + 2 * head * block * batch
    attn_flops = 4 * c.n_layers * c.d_model * queries * keys * batch
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


def step_input(x, pos, block, total, step: int = 1, key_mask=None) -> StepInput:
    """The engine's input for rows 0..n-1 of a batch, none of them cut (rows and seeds as ``generate``'s)."""
    n = x.shape[0]
    return StepInput(x, pos, key_mask, block, total, step=step, rows=tuple(range(n)), seeds=tuple(range(n)),
                     limits=(total,) * n)


def step_fn(strat, x, pos, block, total, step: int = 1):
    """One forward of ``strat`` at ``step`` of the block (0: the block's refreshing step)."""
    return lambda: strat.logits(step_input(x, pos, block, total, step))


def measured_work(strat, batch: int) -> tuple[float, int]:
    """(query positions per row, keys per query) of the strategy's last step, as it reported them."""
    cost = strat.positions
    per_row = sum(cost) / len(cost) if isinstance(cost, list) else cost / batch
    return per_row, strat.keys


def time_strategy(strat, x, pos, block, total):
    """(refresh seconds, block-step seconds) for one strategy on a filled cache."""
    step_fn(strat, x, pos, block, total, step=0)()
    refresh = cuda_time(step_fn(strat, x, pos, block, total, step=0), iters=3)
    step_fn(strat, x, pos, block, total, step=0)()
    step = cuda_time(step_fn(strat, x, pos, block, total))
    return refresh, step


def time_policy(policy, step, predict, reps: int = 8, mask_id: int = -1) -> tuple[float, float]:
    """Seconds per step of the vocabulary statistics (x0, confidence, the policy's ``needs``) + selection:
    (isolated, in pipeline). A policy with block state gets one ``begin_block`` memory, updated by every
    call as on a mid-block step.

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
    memory = policy.begin_block(0, rows)

    def select(lg):
        lg = lg[:, :width]
        x0, conf = predict(lg, 0.0, seeds, (0, 0, 0))
        stats = step_statistics(lg, policy.needs, 0.0, x0) if policy.needs else {}
        st = StepState(conf=conf, x0=x0, masked=masked, k=ones, step=1, block=0, block_start=0, rows=rows,
                       stats=stats, memory=memory, mask_id=mask_id,
                       uniform=lambda purpose, shape=(width,): rng.uniform(seeds, (0, 1, purpose), shape))
        sel = policy.select(st)
        return (sel if isinstance(sel, torch.Tensor) else sel.commit) & masked

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
        for batch, cache, gemm in [(b, c, g) for b in args.batches for c in args.caches for g in args.gemms]:
            total = args.prompt + gen
            if gemm != "cublas" and not skinny_applies(model, cache, batch, args.prompt, gen):
                continue  # the same cuBLAS step again
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            x = torch.randint(0, model.config.vocab_size, (batch, total), device=DEVICE)
            pos = torch.arange(total, device=DEVICE).expand(batch, total)
            bs = args.prompt + gen // 2
            try:
                strat = strategy(args, cache, model, batch, total, gemm)
                refresh, step = time_strategy(strat, x, pos, (bs, bs + 32), total)
                forward = step_fn(strat, x, pos, (bs, bs + 32), total)
                iso = piped = float("nan")
                beside = {}
                timed = not args.no_policy_overhead and (args.policy_batches is None or batch in args.policy_batches)
                if timed:
                    iso, piped = time_policy(get_policy(args.policy_for_overhead, confidence=args.confidence), forward,
                                             speed(args).predictor(args.confidence), mask_id=special.mask)
                    beside = {name: time_policy(get_policy(name), forward, speed(args).predictor(
                                                get_policy(name).confidence),
                                                mask_id=special.mask) for name in args.policy_overhead}
            except torch.OutOfMemoryError:
                rows.append(dict(gen=gen, batch=batch, cache=cache, gemm=gemm, oom=True))
                print(json.dumps(rows[-1]), file=out, flush=True)
                continue
            step_fn(strat, x, pos, (bs, bs + 32), total)()  # its work, as the strategy reports it
            queries, keys = measured_work(strat, batch)
            cost = step_cost(model, cache.split("+")[0], batch, args.prompt, gen, work=(queries, keys))
            floor, per_op, bound = floors(cost, ceilings)
            row = dict(gen=gen, batch=batch, cache=cache, gemm=gemm, params=cache_params(args, cache),
                       queries=queries, keys=keys, step_ms=step * 1e3, refresh_ms=refresh * 1e3,
                       floor_ms=floor * 1e3, ratio=step / floor, per_op_floor_ms=per_op * 1e3,
                       per_op_ratio=step / per_op, bound=bound,
                       policy_ms=iso * 1e3, policy_share=iso / (step + iso),
                       policy_pipelined_ms=piped * 1e3, policy_pipelined_share=piped / (step + piped),
                       peak_gib=torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0)
            if beside:  # each policy's step (forward + its statistics and selection) against the reference's
                row["policy_overhead"] = {
                    name: dict(policy_ms=p_iso * 1e3, policy_pipelined_ms=p_piped * 1e3,
                               vs_reference=(step + p_piped) / (step + piped) - 1)
                    for name, (p_iso, p_piped) in beside.items()}
            rows.append(row)
            print(json.dumps(row), file=out, flush=True)
            strat = x = None  # free the cache before the next configuration
    return rows


def check_graph(model, args, out, gemm: str = "cublas") -> float:
    """Max |graph - eager| of every graphed cache's cached-step logits (also with a padding mask), and equal
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
                strat = strategy(args, cache + graph, model, 2, 320, gemm)
                for block in ((64, 96), (96, 128)):  # second block: graphs captured, now replayed
                    strat.logits(step_input(x, pos, block, 320, 0, key_mask))
                    strat.logits(step_input(x, pos, block, 320, 1, key_mask))
                res.append(strat.logits(step_input(x, pos, (96, 128), 320, 1, key_mask)).float())
            worst = max(worst, (res[0] - res[1]).abs().max().item())
            same &= bool(torch.equal(res[0].argmax(-1), res[1].argmax(-1)))
    print(json.dumps(dict(graph_check=True, gemm=gemm, max_abs_diff=worst, same_argmax=same)), file=out, flush=True)
    print(f"graph vs eager cached-step logits (with and without padding mask), gemm={gemm}: max |diff| {worst:.3g}, "
          f"same argmax {same}")
    return worst


def check_skinny(model, args, out) -> None:
    """The skinny-GEMM step against the cuBLAS step (batch 1, the dual and prefix caches, gen 256's middle
    block): relative error of the logits and the share of positions with the same argmax (random weights
    give near-tied logits, so some argmax flips are expected from rounding alone)."""
    total, bs = args.prompt + 256, args.prompt + 128
    x = torch.randint(0, model.config.vocab_size, (1, total), device=DEVICE)
    pos = torch.arange(total, device=DEVICE).expand(1, total)
    for cache in ("dual", "prefix"):
        res = []
        for gemm in args.gemms:
            strat = strategy(args, cache, model, 1, total, gemm)
            strat.logits(StepInput(x, pos, None, (bs, bs + 32), total, step=0))
            res.append(strat.logits(StepInput(x, pos, None, (bs, bs + 32), total, step=1)).double())
        for gemm, r in zip(args.gemms[1:], res[1:], strict=True):
            rel = ((r - res[0]).norm() / res[0].norm()).item()
            same = (res[0].argmax(-1) == r.argmax(-1)).float().mean().item()
            print(json.dumps(dict(skinny_check=True, cache=cache, variant=gemm, rel_err=rel, same_argmax_share=same)),
                  file=out, flush=True)
            print(f"{gemm} vs {args.gemms[0]} {cache} step logits: rel err {rel:.2e}, same argmax {100 * same:.0f}% "
                  "of positions")


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
                for wb, rule, gemm in [(w, r, g) for w in buckets for r in args.width_rules for g in args.e2e_gemms]:
                    if rule == "old" and not (wb and width_buckets_apply(cache, batch)):
                        continue  # the rules differ only where a chunk is padded
                    rows.append(e2e_cell(model, special, args, cache, batch, spb, steps, ceilings, wb, rule, gemm))
                    print(json.dumps(rows[-1]), file=out, flush=True)
    return rows


def e2e_cell(model, special, args, cache: str, batch: int, spb: int, steps: dict, ceilings: dict[str, float],
             width_bucket: int, width_rule: str = "new", gemm: str = "cublas") -> dict:
    """Median wall of whole generate() calls for one (cache, batch, steps per block), with the schedule's floor
    and, where the step table has the cell, the forwards it predicts (the rest is engine + policy)."""
    def e2e_policy():
        if args.e2e_policy == "staggered":
            return Staggered(confidence=args.confidence)
        return get_policy(args.e2e_policy, **{"confidence": args.confidence, **args.e2e_params})

    mode = cache.split("+")[0]
    cfg = GenerationConfig(gen_length=args.e2e_gen, block_length=32, steps=args.e2e_gen // 32 * spb, cache=mode,
                           cache_params=cache_params(args, cache), eotp=args.e2e_eotp)
    fast = speed(args, cache, width_bucket, gemm)
    if width_rule == "old":  # bench-only A/B of the width rule (issue 28, item 2)
        PrefixCache.padded_width = old_padded_width
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
    PrefixCache.padded_width = NEW_PADDED_WIDTH
    wall = statistics.median(walls)
    row = dict(e2e=True, cache=cache, batch=batch, gen=args.e2e_gen, steps=cfg.total_steps, seconds=wall,
               gens_per_s=batch / wall, reps=args.e2e_reps, steps_per_block=spb,
               nfe=max(s.nfe for s in res.stats), ragged=args.e2e_ragged, policy=args.e2e_policy,
               row_buckets=not args.no_row_buckets, graph_width_bucket=width_bucket, width_rule=width_rule, gemm=gemm,
               eotp=cfg.eotp, params=cfg.cache_params, mean_nfe=sum(s.nfe for s in res.stats) / batch,
               positions_per_answer=sum(s.positions for s in res.stats) / batch)
    # the schedule's floor needs a class cost model that is the step's work: not for a drawn one (DPad)
    plain = (not args.e2e_ragged and args.e2e_policy == "low_confidence" and cfg.eotp == "false"
             and cache_class(mode).inner is None)
    if plain:  # fixed schedule, equal prompts: the whole decode's floor (refresh + cached steps)
        floor = schedule_floor(model, mode, batch, args.prompt, args.e2e_gen, spb, ceilings)
        row.update(floor, floor_ratio=wall / floor["floor_s"], per_op_floor_ratio=wall / floor["per_op_floor_s"])
    timed = steps.get((args.e2e_gen, batch, cache, gemm)) if plain else None
    if timed is not None:  # forward time the step benchmark predicts (its mid-block step for every block)
        refresh_s = cfg.num_blocks * timed["refresh_ms"] / 1e3
        cached_s = (row["nfe"] - cfg.num_blocks) * timed["step_ms"] / 1e3
        row.update(forward_s=refresh_s + cached_s, engine_share=1 - (refresh_s + cached_s) / wall,
                   refresh_s=refresh_s, cached_s=cached_s)
    return row


def bench_confidence(model, args, out) -> list[dict]:
    """Milliseconds per step of x0 + its probability by each rule of ``--confidence-rules`` on random bf16
    block logits [B, 32, V] (the model's vocabulary), greedy and sampled (T=0.7), alone on the device, and
    the peak memory above the logits: what choosing a rule adds to every step (the forward is in (a))."""
    rows = []
    for batch in args.batches:
        logits = (torch.randn(batch, 32, model.config.vocab_size, device=DEVICE) * 4).to(torch.bfloat16)
        seeds = torch.zeros(batch, dtype=torch.long, device=DEVICE)
        for rule in args.confidence_rules:
            predict = speed(args).predictor(rule)
            for temperature in (0.0, 0.7):
                def step(predict=predict, temperature=temperature, logits=logits, seeds=seeds):
                    return predict(logits, temperature, seeds, (0, 0, 0))

                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                ms = cuda_time(step, iters=10) * 1e3
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if DEVICE == "cuda" else 0.0
                rows.append(dict(part="confidence", rule=rule, batch=batch, temperature=temperature, ms=ms,
                                 extra_peak_mib=peak, fused=args.compile))
                print(json.dumps(rows[-1]), file=out, flush=True)
    return rows


def _print_confidence(rows: list[dict], steps: list[dict]) -> None:
    """Each rule's cost per step, and beside it the step's forward time from (a) where it was measured."""
    step_ms = {}
    for r in steps:
        if not r.get("oom"):
            step_ms.setdefault(r["batch"], r["step_ms"])
    print(f"{'rule':>8} {'B':>3} {'T':>4} {'ms':>8} {'+MiB':>8} {'vs float32':>10} {'of a step':>9}")
    base = {(r["batch"], r["temperature"]): r["ms"] for r in rows if r["rule"] == "float32"}
    for r in rows:
        ref = base.get((r["batch"], r["temperature"]))
        rel = f"{r['ms'] / ref:9.2f}x" if ref else " " * 10
        share = f"{100 * r['ms'] / (step_ms[r['batch']] + r['ms']):8.1f}%" if r["batch"] in step_ms else ""
        print(f"{r['rule']:>8} {r['batch']:>3} {r['temperature']:>4} {r['ms']:8.3f} {r['extra_peak_mib']:8.0f} "
              f"{rel} {share}")


def _pairs(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> dict (values stay text: the registries coerce them)."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: use key=value,key=value")
    return {k.strip(): v.strip() for k, v in pairs}


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
    ap.add_argument("--confidence", choices=CONFIDENCE_RULES, default="float64",
                    help="the confidence rule of the policies timed in (c) and (d) (engine/predict.py)")
    ap.add_argument("--confidence-rules", nargs="*", choices=CONFIDENCE_RULES, default=[],
                    help="(f): time each of these rules on the block's logits, per --batches")
    ap.add_argument("--confidence-only", action="store_true",
                    help="run (f) only (with --confidence-rules, default all three)")
    ap.add_argument("--policy-overhead", nargs="*", default=[],
                    help="also time these policies' per-step statistics + selection in every step cell, and their "
                         "step time against --policy-for-overhead's (e.g. dinfer_threshold dinfer_hierarchy dinfer_credit)")
    ap.add_argument("--no-policy-overhead", action="store_true", help="skip (c), the policy-overhead timing")
    ap.add_argument("--policy-batches", type=int, nargs="*", default=None,
                    help="time the policy overhead at these batches only (none: no policy timing; default: all)")
    ap.add_argument("--cache-params", type=_pairs, default={},
                    help="k=v,... cache parameters, each given to the caches that take it (e.g. dpad_window=128)")
    ap.add_argument("--e2e-params", type=_pairs, default={},
                    help="k=v,... the e2e policy's parameters (e.g. filter=l2pd_eval/testbed/filter for learn2pd)")
    ap.add_argument("--e2e-eotp", default="false", help="the e2e decodes' EoTP rule (false, true, committed, block_end)")
    ap.add_argument("--out", default="bench.jsonl")
    ap.add_argument("--model", default="random:llada-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true", help="compile=true: torch.compile the blocks and statistics")
    ap.add_argument("--graph-width-bucket", type=int, nargs="+", default=[128],
                    help="SpeedConfig.graph_width_bucket; several values: one batch-1 e2e cell each where it applies")
    ap.add_argument("--prefix-blocks", action="store_true",
                    help="also time each block's new-width cost for prefix+graph at batch 1 (gen --e2e-gen)")
    kernels = ["cublas", "skinny", "attn", "skinny+attn"]
    ap.add_argument("--gemms", nargs="+", default=["cublas"], choices=kernels,
                    help="A/B: step cells per kernel variant (the first is the reference): cublas (today), skinny "
                         "(SpeedConfig.skinny_gemm), attn (SpeedConfig.triton_attention), skinny+attn")
    ap.add_argument("--e2e-gemms", nargs="+", default=["cublas"], choices=kernels)
    ap.add_argument("--skinny-table", default=None, help="tiles from bench/tune_skinny.py --table (else skinny.TUNED)")
    ap.add_argument("--width-rules", nargs="+", default=["new"], choices=["new", "old"],
                    help="A/B of the width-bucket rule in e2e cells: new (after logit_shift) and/or old")
    ap.add_argument("--compile-autotune", action="store_true",
                    help="with --compile: inductor times reduction configs (compile_autotune=true)")
    return ap


def _print_summary(env: dict, steps: list[dict], e2e: list[dict]) -> None:
    """The table for a reader, from the rows already written to ``--out`` (the JSON lines are the record)."""
    print(f"{env['gpu']}  copy {env['bandwidth_Bps'] / 1e12:.2f} TB/s  bf16 matmul {env['matmul_flops'] / 1e12:.0f} TFLOP/s")
    print(f"{'gen':>5} {'B':>3} {'cache':>18} {'step ms':>8} {'floor':>7} {'ratio':>6} {'per-op':>7} {'ratio':>6} "
          f"{'bound':>7} {'queries':>7} {'keys':>5} {'refresh':>8} {'pol iso':>7} {'pol pipe':>8} {'peakGiB':>7}")
    for r in steps:
        if r.get("oom"):
            print(f"{r['gen']:>5} {r['batch']:>3} {r['cache']:>18}  OOM")
            continue
        mark = {"skinny": "*", "attn": "^", "skinny+attn": "*^"}.get(r.get("gemm"), "")
        print(f"{r['gen']:>5} {r['batch']:>3} {r['cache'] + mark:>18} {r['step_ms']:8.2f} {r['floor_ms']:7.2f} {r['ratio']:6.2f} "
              f"{r['per_op_floor_ms']:7.2f} {r['per_op_ratio']:6.2f} {r['bound']:>7} {r['queries']:7.1f} {r['keys']:5d} "
              f"{r['refresh_ms']:8.1f} {100 * r['policy_share']:6.2f}% {100 * r['policy_pipelined_share']:7.2f}% "
              f"{r['peak_gib']:7.1f}")
    for r in steps:
        for name, p in r.get("policy_overhead", {}).items():
            print(f"{r['gen']:>5} {r['batch']:>3} {r['cache']:>18}  {name:<18} policy {p['policy_pipelined_ms']:6.3f} ms "
                  f"in pipeline ({p['policy_ms']:6.3f} alone): step {100 * p['vs_reference']:+6.2f}% vs reference")
    for r in e2e:
        extra = f"  engine+policy {100 * r['engine_share']:.1f}% of wall" if "engine_share" in r else ""
        if "floor_s" in r:
            extra += f"  {r['floor_ratio']:.2f}x its floor ({r['per_op_floor_ratio']:.2f}x per-op)"
        extra += f"  policy={r['policy']}" + ("" if r["row_buckets"] else " (graph per row count)")
        if width_buckets_apply(r["cache"], r["batch"]):
            extra += f"  width bucket {r['graph_width_bucket']} ({r['width_rule']} rule)"
        if r.get("gemm", "cublas") != "cublas":
            extra += f"  kernels {r['gemm']}"
        extra += "" if r["eotp"] == "false" else f"  eotp={r['eotp']}"
        print(f"e2e cache={r['cache']:>18} B={r['batch']:>2} gen={r['gen']} steps={r['steps']:>3}"
              f"{' ragged' if r['ragged'] else ''}: "
              f"{r['seconds']:.2f}s  {r['gens_per_s']:.2f} gen/s  NFE {r['mean_nfe']:.1f}  positions/answer "
              f"{r['positions_per_answer']:.0f}{extra}")


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
        if args.skinny_table:
            from bench.tune_skinny import load_table

            load_table(args.skinny_table)
        if args.confidence_only:
            args.confidence_rules = args.confidence_rules or list(CONFIDENCE_RULES)
            rules, steps, e2e, blocks = bench_confidence(model, args, out), [], [], []
        else:
            for gemm in args.gemms:
                check_graph(model, args, out, gemm)
            if len(args.gemms) > 1 and DEVICE == "cuda":
                check_skinny(model, args, out)
            steps = bench_steps(model, special, args, ceilings, out)
            timed = {(r['gen'], r['batch'], r['cache'], r['gemm']): r for r in steps if not r.get('oom')}
            e2e = bench_e2e(model, special, args, out, timed, ceilings)
            blocks = bench_prefix_blocks(model, args, out) if args.prefix_blocks else []
            rules = bench_confidence(model, args, out) if args.confidence_rules else []
    if not args.confidence_only:
        print("(* skinny-GEMM kernel, ^ Triton decode attention)")
        _print_summary(env, steps, e2e)
    if rules:
        _print_confidence(rules, steps)
    for r in blocks:
        print(f"prefix+graph block {r['block']:>2} width {r['width']:>4}: eager {r['eager_ms']:6.2f} ms, record+replay "
              f"{r['record_and_replay_ms']:6.2f} ms, replay {r['replay_ms']:5.2f} ms; new width costs "
              f"{r['new_shape_overhead_ms']:6.2f} ms over two replays")


if __name__ == "__main__":
    main()
