"""Where a decoding step's time goes, on a CUDA machine (``--model``, default the LLaDA-8B shape with random
weights, bf16; every part takes its shapes from that model's config).

Complements ``bench_step.py`` (which times whole steps against a roofline) with the pieces:
  1. GEMMs at the row counts a block step feeds them (32 x batch rows) against the copy bandwidth and the
     matmul rate, cuBLAS and (``--autotune``) inductor's max-autotune templates;
  2. attention of a 32-query block over the KV cache per SDPA backend, against the bytes of K and V, and
     in CUDA graphs SDPA's dispatch against the key-splitting flash kernel ``cache_attention`` picks;
  3. the vocabulary statistics (x0, confidence) eager and compiled;
  4. a kernel-by-kernel profile of one step per configuration, grouped by kind.
Prints short tables and writes JSON lines to --out; docs/benchmarks.md records what the numbers led to.

    PYTHONPATH=. python3 bench/profile_step.py --compile --out profile.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.bench_step import cuda_time, measure_ceilings
from l2pd_eval.caches import StepInput
from l2pd_eval.engine import Predictor, SpeedConfig
from l2pd_eval.model import load_model
from l2pd_eval.model.attention import cache_attention


def emit(out, **row) -> dict:
    print(json.dumps(row), file=out, flush=True)
    return row


def bench_gemms(out, ceil, cfg, autotune: bool) -> None:
    """F.linear at the model's shapes; weights rotate over copies so L2 (50 MB) never holds them."""
    d, hq, ff = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.mlp_width
    shapes = {"qkvo": (d, hq), "ff_in": (d, ff), "ff_out": (ff, d), "lm_head": (d, cfg.vocab_size)}
    print(f"{'gemm':>8} {'M':>5} {'impl':>9} {'us':>8} {'BW%':>6} {'MMA%':>6}")
    for name, (k, n) in shapes.items():
        copies = max(2, (256 << 20) // (k * n * 2))
        ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
        for m in (32, 512):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            impls = {"cublas": F.linear}
            if autotune and name != "lm_head":
                impls["autotune"] = torch.compile(lambda a, w: F.linear(a, w), mode="max-autotune-no-cudagraphs",
                                                  dynamic=False)
            for impl, fn in impls.items():
                it = iter(range(1 << 30))
                t = cuda_time(lambda fn=fn, x=x, ws=ws, it=it, c=copies: fn(x, ws[next(it) % c]), warmup=3, iters=30)
                nbytes, flops = (n * k + m * k + m * n) * 2, 2 * m * n * k
                r = emit(out, part="gemm", name=name, m=m, k=k, n=n, impl=impl, us=t * 1e6,
                         bw_frac=nbytes / t / ceil["bandwidth_Bps"], mma_frac=flops / t / ceil["matmul_flops"])
                print(f"{name:>8} {m:>5} {impl:>9} {r['us']:8.1f} {100 * r['bw_frac']:5.0f}% {100 * r['mma_frac']:5.0f}%")
        ws = None


def bench_attention(out, ceil, cfg, prompt: int) -> None:
    """32 queries x H heads over a [B, H, T, D] cache slice (T: the prompt plus gen 256 or 1024), as in a
    dual-cache step."""
    h, hd = cfg.n_heads, cfg.head_dim
    print(f"{'attn':>8} {'B':>3} {'kv':>5} {'backend':>10} {'us':>8} {'BW%':>6}")
    for batch in (1, 16):
        for kv in (prompt + 256, prompt + 1024):
            buf_k = torch.randn(batch, h, kv + 64, hd, dtype=torch.bfloat16, device="cuda")
            buf_v = torch.randn_like(buf_k)
            q = torch.randn(batch, h, 32, hd, dtype=torch.bfloat16, device="cuda")
            k, v = buf_k[:, :, :kv], buf_v[:, :, :kv]
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel(backend):
                        t = cuda_time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), iters=30)
                except RuntimeError as e:  # backend not available for these inputs
                    emit(out, part="attn", batch=batch, kv=kv, backend=backend.name, error=str(e)[:200])
                    continue
                nbytes = 2 * batch * h * kv * hd * 2
                r = emit(out, part="attn", batch=batch, kv=kv, backend=backend.name, us=t * 1e6,
                         bw_frac=nbytes / t / ceil["bandwidth_Bps"])
                print(f"{'':>8} {batch:>3} {kv:>5} {backend.name[:10]:>10} {r['us']:8.1f} {100 * r['bw_frac']:5.0f}%")


def bench_attention_choice(out, ceil, cfg, prompt: int) -> None:
    """SDPA's dispatch (cuDNN on Hopper) vs the flash kernel, as 32 layers replayed in one CUDA graph.

    Each layer has its own K/V (L2 never holds them) and the graph removes launch gaps, as in a decode.
    ``chosen`` is ``cache_attention``, what the model runs."""
    print(f"{'choice':>8} {'B':>3} {'n':>4} {'kv':>5} {'impl':>8} {'us/layer':>9} {'BW%':>6} {'rel err':>8}")
    layers, h, hd = cfg.n_layers, cfg.n_heads, cfg.head_dim
    impls = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
             "flash": lambda q, k, v: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0],
             "chosen": lambda q, k, v: cache_attention(q, k, v, None)}
    short, long = prompt + 256, prompt + 1024
    for batch, n, kv in ((1, 32, short), (1, 32, long), (1, 128, short), (2, 32, short), (4, 32, short), (8, 32, short)):
        ks = [torch.randn(batch, h, kv, hd, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
        vs = [torch.randn_like(t) for t in ks]
        q = torch.randn(batch, h, n, hd, dtype=torch.bfloat16, device="cuda")
        ref = F.scaled_dot_product_attention(q.double(), ks[0].double(), vs[0].double())
        for name, fn in impls.items():
            err = ((fn(q, ks[0], vs[0]).double() - ref).norm() / ref.norm()).item()

            def all_layers(fn=fn, q=q, ks=ks, vs=vs):
                for k, v in zip(ks, vs, strict=True):
                    fn(q, k, v)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    all_layers()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    all_layers()
            torch.cuda.current_stream().wait_stream(stream)
            t = cuda_time(graph.replay, warmup=3, iters=20) / layers
            nbytes = 2 * batch * h * kv * hd * 2
            r = emit(out, part="attn_choice", batch=batch, n=n, kv=kv, impl=name, us=t * 1e6,
                     bw_frac=nbytes / t / ceil["bandwidth_Bps"], rel_err=err)
            print(f"{'':>8} {batch:>3} {n:>4} {kv:>5} {name:>8} {r['us']:9.1f} {100 * r['bw_frac']:5.0f}% {err:8.1e}")
            graph = None
        ks = vs = None


def bench_predict(out, cfg) -> None:
    """Confidence statistics over the vocabulary for a block of 32, eager vs compiled."""
    eager, compiled = Predictor("float32"), SpeedConfig(compile=True).predictor("float32")  # compile=true's path
    print(f"{'predict':>8} {'B':>3} {'eager us':>9} {'compiled us':>12}")
    for batch in (1, 16, 32):
        logits = (torch.randn(batch, 32, cfg.vocab_size, device="cuda") * 3).bfloat16()
        seeds = torch.zeros(batch, dtype=torch.long, device="cuda")
        ref = eager(logits, 0.0, seeds, (0, 0, 0))
        got = compiled(logits, 0.0, seeds, (0, 0, 0))
        same = bool(torch.equal(ref[0], got[0]))
        err = ((ref[1] - got[1]).abs() / ref[1]).max().item()
        te = cuda_time(lambda a=logits, s=seeds: eager(a, 0.0, s, (0, 0, 0)), iters=20)
        tc = cuda_time(lambda a=logits, s=seeds: compiled(a, 0.0, s, (0, 0, 0)), iters=20)
        emit(out, part="predict", batch=batch, eager_us=te * 1e6, compiled_us=tc * 1e6, same_x0=same, conf_rel_err=err)
        print(f"{'':>8} {batch:>3} {te * 1e6:9.1f} {tc * 1e6:12.1f}  same x0 {same}, conf rel err {err:.2g}")


def kind(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitk", "matmul")):
        return "gemm"
    if any(s in n for s in ("flash", "fmha", "attention", "cudnn")):
        return "attention"
    if n.startswith("triton"):
        return "fused (inductor)"
    if any(s in n for s in ("index", "copy", "memcpy", "cat", "gather", "scatter")):
        return "copy/index"
    return "elementwise/other"


def profile_steps(model, out, args) -> None:
    """One step per configuration under torch.profiler: device time per kernel kind and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    for cache, batch, gen in [(c, b, g) for g in args.gen_lengths for b in args.batches for c in args.caches]:
        total, bs = args.prompt + gen, args.prompt + gen // 2
        x = torch.randint(0, model.config.vocab_size, (batch, total), device="cuda")
        pos = torch.arange(total, device="cuda").expand(batch, total)
        fast = SpeedConfig(cuda_graph=cache.endswith("+graph"), graph_width_bucket=0,  # exact widths
                           skinny_gemm=args.skinny, triton_attention=args.triton_attention)
        fast.prepare(model)
        strat = fast.strategy(cache.split("+")[0], model, batch, total)

        def step(strat=strat, x=x, pos=pos, bs=bs, total=total):  # step 0 refreshes, step 1 is a cached step
            return strat.logits(StepInput(x, pos, None, (bs, bs + 32), total, step=0 if args.refresh else 1))

        strat.logits(StepInput(x, pos, None, (bs, bs + 32), total, step=0))
        wall = cuda_time(step, iters=10)
        reps = 3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = json.load(f)["traceEvents"]
        per_kind: dict[str, float] = collections.Counter()
        per_kernel: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        for e in events:
            if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
                continue
            per_kind[kind(e["name"])] += e["dur"] / reps
            per_kernel[e["name"]][0] += e["dur"] / reps
            per_kernel[e["name"]][1] += 1 / reps
        busy = sum(per_kind.values())
        top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]
        emit(out, part="profile", cache=cache, batch=batch, gen=gen, refresh=args.refresh, skinny=args.skinny,
             triton_attention=args.triton_attention,
             wall_us=wall * 1e6, kernel_us=busy, launches=sum(v[1] for v in per_kernel.values()),
             kinds=dict(per_kind), top=[(n[:90], round(v[0], 1), round(v[1], 1)) for n, v in top])
        print(f"\nprofile {cache}{' refresh' if args.refresh else ''}{' skinny' if args.skinny else ''} B={batch} gen={gen}: step {wall * 1e6:.0f} us, kernels {busy:.0f} us "
              f"({sum(v[1] for v in per_kernel.values()):.0f} launches)")
        for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<18} {v:9.1f} us  {100 * v / busy:5.1f}%")
        for n, (us, cnt) in top[:8]:
            print(f"    {us:8.1f} us {cnt:5.0f}x  {n[:100]}")
        strat = x = None
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llada-8b", help="any pretrained= value; random:<preset> shapes")
    ap.add_argument("--prompt", type=int, default=900)
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--caches", nargs="+", default=["prefix", "dual", "dual+graph"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--autotune", action="store_true", help="also time max-autotune GEMMs (minutes of tuning)")
    ap.add_argument("--parts", nargs="+", default=["gemm", "attn", "attn_choice", "predict", "profile"])
    ap.add_argument("--refresh", action="store_true", help="profile: each block's first step (a full forward)")
    ap.add_argument("--skinny", action="store_true", help="profile: the skinny-GEMM kernel (SpeedConfig.skinny_gemm)")
    ap.add_argument("--triton-attention", action="store_true", help="profile: SpeedConfig.triton_attention")
    ap.add_argument("--skinny-table", default=None, help="tiles from bench/tune_skinny.py --table")
    ap.add_argument("--out", default="profile.jsonl")
    args = ap.parse_args()
    if args.skinny_table:
        from bench.tune_skinny import load_table

        load_table(args.skinny_table)
    torch._dynamo.config.cache_size_limit = 64  # one compiled GEMM per shape when autotuning
    with open(args.out, "w") as out, torch.inference_mode():
        ceil = measure_ceilings()
        emit(out, part="env", gpu=torch.cuda.get_device_name(), torch=torch.__version__, **ceil)
        print(f"copy {ceil['bandwidth_Bps'] / 1e12:.2f} TB/s, bf16 matmul {ceil['matmul_flops'] / 1e12:.0f} TFLOP/s")
        model = load_model(args.model, dtype="bfloat16", device="cuda")
        cfg = model.config
        if "gemm" in args.parts:
            bench_gemms(out, ceil, cfg, args.autotune)
        attention = [p for p in ("attn", "attn_choice") if p in args.parts]
        if attention and cfg.kv_heads != cfg.n_heads:  # the kernel choice was only measured for equal heads
            print(f"{args.model}: grouped heads ({cfg.n_heads} query, {cfg.kv_heads} key/value); parts "
                  f"{', '.join(attention)} time equal head counts only and are skipped")
            attention = []
        if "attn" in attention:
            bench_attention(out, ceil, cfg, args.prompt)
        if "attn_choice" in attention:
            bench_attention_choice(out, ceil, cfg, args.prompt)
        if "predict" in args.parts:
            bench_predict(out, cfg)
        if "profile" in args.parts:
            SpeedConfig(compile=args.compile).prepare(model)
            profile_steps(model, out, args)


if __name__ == "__main__":
    main()
