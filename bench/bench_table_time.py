"""The wall time of a reproduced table, measured: Learn2PD's GSM8K column (every method at 256 and 1024)
through the stock lm-eval CLI on one GPU, beside what ``l2pd_eval.reproduce.estimate`` predicts for the
same documents.

    PYTHONPATH=. python3 bench/bench_table_time.py run --jsonl table_time.jsonl          # one H200, minutes
    PYTHONPATH=. python3 bench/bench_table_time.py run --smoke                          # CPU, random:tiny
    PYTHONPATH=. python3 bench/bench_table_time.py costs --compiled A.jsonl --eager B.jsonl --out COSTS.json

Workload (as ``bench_lm_eval.py``): ``random:llada-8b``, GSM8K-shaped prompts (the recorded 5-shot token
counts), a word-level tokenizer, ``compile=true``, ``--batch_size auto``; ``--limit`` documents per cell
(a full column does not fit a session's device time: the estimate is compared on the same subset).
Commit profile: the baseline is the real ``low_confidence`` rule with ``steps = gen_length``; the Learn2PD
columns use the bench-only ``_profile`` policy (``bench/profile_policy.py``) with the estimator's GSM8K
profile, plus ``eotp=true`` and the cache where the column has them. Two bench-only changes to the random
model: it is built once for all cells (one process runs lm-eval's CLI entry cell after cell), and the
output-head rows of the end-of-text ids are zeroed, so random logits never predict an end (a zero logit is
never the largest of 126k random ones) and EoTP cuts only where the profile puts one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.bench_lm_eval import TASK, build_tokenizer, load_lengths, smoke_lengths, write_task  # noqa: E402
from l2pd_eval.reproduce.estimate import GSM8K_PROFILE, Profile, StepCosts, cell_seconds  # noqa: E402


@dataclass(frozen=True)
class Cell:
    key: str
    gen: int
    args: str
    cache: str
    limit: int

    def profile(self) -> Profile:
        if self.key == "baseline":
            return Profile.uniform(self.gen, self.gen)
        return Profile.scripted(self.gen, eotp="eotp" in self.key, **GSM8K_PROFILE)


def cells(limits: dict[str, int], eos: int) -> list[Cell]:
    prof = f"policy=_profile,answer_blocks={GSM8K_PROFILE['answer_blocks']},answer_steps={GSM8K_PROFILE['answer_steps']}"
    out = []
    for gen in (256, 1024):
        out += [Cell("learn2pd", gen, f"{prof},cache=none", "none", limits["learn2pd"]),
                Cell("learn2pd_eotp", gen, f"{prof},end_id={eos},cache=none,eotp=true", "none", limits["learn2pd"])]
    out += [Cell("learn2pd_eotp_prefix", 1024, f"{prof},end_id={eos},cache=prefix,eotp=true", "prefix", limits["cached"]),
            Cell("learn2pd_eotp_dual", 1024, f"{prof},end_id={eos},cache=dual,eotp=true", "dual", limits["cached"])]
    # the baselines last, the longest (1024 full forwards per answer) at the very end
    return out + [Cell("baseline", gen, f"policy=low_confidence,cache=none,steps={gen}", "none", limits["baseline"])
                  for gen in (256, 1024)]


def install_bench_model(end_ids: tuple[int, ...]) -> None:
    """Build the random model once for every cell, with its end-of-text head rows zeroed (module docstring)."""
    import torch

    import l2pd_eval.harness.lm_eval_model as adapter

    built: dict[tuple, object] = {}
    load = adapter.load_model

    def once(pretrained, dtype="auto", device="cpu", revision=None, seed=0, adapter=None):
        key = (pretrained, str(dtype), str(device), seed, adapter)
        if key not in built:
            model = load(pretrained, dtype=dtype, device=device, revision=revision, seed=seed, adapter=adapter)
            head = model.model.transformer.ff_out.weight
            with torch.no_grad():
                for i in end_ids:
                    if i < head.shape[0]:
                        head[i].zero_()
            built[key] = model
        return built[key]

    adapter.load_model = once


def warm_up(cell: Cell, lengths: list[int], model_args: dict) -> None:
    """Compile the guard sets the cell meets (batch rows, key mask, EoTP's cut) on its own prompts, one
    short decode with the cut in the first block, outside the timed region."""
    import l2pd_eval.harness.lm_eval_model as adapter
    from bench.profile_policy import ScriptedProfile
    from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate
    from l2pd_eval.model import SpecialIds

    model = adapter.load_model(model_args["pretrained"], dtype="auto", device="cuda" if _cuda() else "cpu")
    special = SpecialIds.resolve(None, model.config, mask_id=None if model.config.mask_token_id is not None
                                 else model.config.vocab_size - 1,
                                 eos_id=None if model.config.eos_token_id is not None else model.config.vocab_size - 2)
    rows = sorted(lengths, reverse=True)[:cell.limit]
    cfg = GenerationConfig(gen_length=cell.gen, block_length=32, steps=cell.gen, cache=cell.cache, eotp="true")
    speed = SpeedConfig(cuda_graph=_cuda(), compile=model_args.get("compile") == "true")
    generate(model, [[special.eos] * n for n in rows], cfg, ScriptedProfile(answer_blocks=1, answer_steps=3,
             end_id=special.eos), special, speed=speed)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_cell(cell: Cell, workdir: Path, tokenizer: Path, lengths: list[int], preset: str, compile_: bool,
             costs: StepCosts | None, out) -> dict:
    import lm_eval.__main__ as lm_eval_main

    run_dir = workdir / f"{cell.key}_{cell.gen}"
    tasks = write_task(run_dir, lengths[:cell.limit], vocab_size(preset), cell.gen)
    sidecar = run_dir / "sidecar.json"
    model_args = dict(pretrained=f"random:{preset}", tokenizer=str(tokenizer), gen_length=str(cell.gen),
                      compile=str(compile_).lower(), sidecar=str(sidecar), chat="false")
    args = ",".join(f"{k}={v}" for k, v in model_args.items()) + "," + cell.args
    warm = time.perf_counter()
    warm_up(cell, lengths[:cell.limit], model_args)
    warm = time.perf_counter() - warm
    sys.argv = ["lm_eval", "--model", "learn2pd", "--model_args", args, "--tasks", TASK, "--include_path",
                str(tasks), "--output_path", str(run_dir / "out"), "--batch_size", "auto", "--limit", str(cell.limit)]
    t0 = time.perf_counter()
    error = None
    try:
        lm_eval_main.cli_evaluate()
    except Exception as exc:  # noqa: BLE001 - e.g. lm-eval's table printer after decoding: keep the timings
        error = f"{type(exc).__name__}: {exc}"[:300]
        if not sidecar.is_file():
            raise
    window = time.perf_counter() - t0
    side = json.loads(sidecar.read_text())
    samples = side["samples"]
    decode = sum(r["seconds"] for r in samples)
    rows = [b["batch_size"] for b in side["manifest"].get("batch_sizes", [])]
    record = dict(bench="table_time", key=cell.key, gen=cell.gen, cache=cell.cache, limit=cell.limit,
                  batch_sizes=rows, samples=len(samples), decode_s=decode, window_s=window, warmup_s=warm,
                  nfe_mean=statistics.mean(r["nfe"] for r in samples), nfe_profile=cell.profile().nfe,
                  model_args=args, error=error)
    if costs is not None:
        est = cell_seconds(costs, cell.profile(), cell.cache, lengths[:cell.limit], rows[0] if rows else 1)
        record.update(estimate_s=est, estimate_over_measured=est / decode)
    print(json.dumps(record), file=out, flush=True)
    return record


def vocab_size(preset: str) -> int:
    from l2pd_eval.model import PRESETS, LLaDAConfig

    return LLaDAConfig.from_dict(PRESETS[preset]).vocab_size


def run(args: argparse.Namespace) -> None:
    from bench.bench_lm_eval import special_ids
    from l2pd_eval.harness._hook import install

    install(force=True)
    import bench.profile_policy  # noqa: F401  (registers policy=_profile)

    preset = "tiny" if args.smoke else "llada-8b"
    lengths = load_lengths()
    gens = {"baseline": args.limit_baseline, "learn2pd": args.limit, "cached": args.limit_cached}
    if args.smoke:
        lengths = smoke_lengths(lengths)
    specials = special_ids(vocab_size(preset))
    eos = specials["<|endoftext|>"]
    install_bench_model((eos, specials["<|eot_id|>"]))
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(vocab_size(preset), workdir / "tokenizer")
    costs = StepCosts.load(args.costs) if args.costs and args.costs.is_file() and not args.smoke else None
    plan = cells(gens, eos)
    if args.smoke:
        plan = [Cell(c.key, c.gen // 8, c.args.replace(f"steps={c.gen}", f"steps={c.gen // 8}"), c.cache, 2)
                for c in plan]
    if args.only:
        plan = [c for c in plan if f"{c.key}_{c.gen}" in args.only]
    records = []
    with open(args.jsonl, "a") as out:
        for cell in plan:
            records.append(run_cell(cell, workdir, workdir / "tokenizer", lengths, preset, not args.smoke, costs, out))
    print(f"\n{'cell':>26} {'docs':>4} {'rows':>4} {'NFE':>6} {'decode s':>9} {'window s':>9} {'estimate s':>10} {'est/meas':>8}")
    for r in records:
        est = f"{r['estimate_s']:10.2f} {r['estimate_over_measured']:8.3f}" if "estimate_s" in r else ""
        print(f"{r['key'] + '_' + str(r['gen']):>26} {r['samples']:>4} {r['batch_sizes'][0] if r['batch_sizes'] else '':>4} "
              f"{r['nfe_mean']:6.1f} {r['decode_s']:9.2f} {r['window_s']:9.2f} {est}")
    if records and all("estimate_s" in r for r in records):
        est, meas = sum(r["estimate_s"] for r in records), sum(r["decode_s"] for r in records)
        print(f"{'all cells':>26} {'':>4} {'':>4} {'':>6} {meas:9.2f} {sum(r['window_s'] for r in records):9.2f} "
              f"{est:10.2f} {est / meas:8.3f}")


def build_costs(args: argparse.Namespace) -> None:
    """``step_costs_h200.json`` from bench_step JSONL: the compiled steps (graphs) and the uncompiled batch-1
    ones (``eager``: the authors' scripts have neither compile nor graphs)."""

    def read(paths: list[Path], graphs: bool) -> dict:
        steps, sources = [], []
        for path in paths:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            env = rows[0]
            steps += [dict(r, prompt=env["prompt"]) for r in rows if "step_ms" in r and r.get("gemm", "cublas") == "cublas"]
            sources.append(f"docs/bench/{path.name}")
        full = [[r["batch"], r["prompt"] + r["gen"], r["refresh_ms"]] for r in steps]
        want = (lambda c: c.endswith("+graph")) if graphs else (lambda c: "+" not in c)
        dual = [[r["batch"], r["prompt"] + r["gen"], r["step_ms"]] for r in steps
                if r["cache"].split("+")[0] == "dual" and want(r["cache"])]
        prefix = [[r["batch"], r["gen"] // 2, r["step_ms"]] for r in steps
                  if r["cache"].split("+")[0] == "prefix" and want(r["cache"])]
        pol = [r["policy_pipelined_ms"] for r in steps if r["cache"] != "none" and r["policy_pipelined_ms"] == r["policy_pipelined_ms"]]
        return dict(full=full, dual=dual, prefix=prefix, step_overhead_ms=statistics.median(pol) if pol else 0.0,
                    graph_shape_ms=40.0 if graphs else 0.0, gpu=env["gpu"], torch=env["torch"],
                    source=", ".join(sources))

    data = {"compiled": read(args.compiled, True), "eager": read(args.eager, False),
            "what": "ms per forward step on one GPU, random:llada-8b bf16, prompt 900, from bench/bench_step.py "
                    "(full: each cell's refresh, a full forward of batch x length; dual: a dual-cache step by "
                    "batch and length; prefix: a prefix-cache step by batch and chunk width). graph_shape_ms: a "
                    "new graph shape's eager step + recording, docs/benchmarks.md (prefix cache across blocks)"}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--limit-baseline", type=int, default=1, help="documents per baseline cell")
    r.add_argument("--limit", type=int, default=2, help="documents per Learn2PD cell without a cache")
    r.add_argument("--limit-cached", type=int, default=2, help="documents per Learn2PD cell with a cache")
    r.add_argument("--only", nargs="*", default=None, help="cells by KEY_GEN, e.g. learn2pd_256")
    r.add_argument("--costs", type=Path, default=HERE.parent / "l2pd_eval/reproduce/step_costs_h200.json")
    r.add_argument("--workdir", type=Path, default=Path("runs/bench_table_time"))
    r.add_argument("--jsonl", type=Path, default=Path("table_time.jsonl"))
    r.add_argument("--smoke", action="store_true", help="CPU, random:tiny, gen lengths / 8, 2 documents a cell")
    c = sub.add_parser("costs")
    c.add_argument("--compiled", type=Path, nargs="+", required=True)
    c.add_argument("--eager", type=Path, nargs="+", required=True)
    c.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    run(args) if args.cmd == "run" else build_costs(args)


if __name__ == "__main__":
    main()
