"""End-to-end benchmark of the stock ``lm_eval`` CLI with ``--model learn2pd``: how much of a run is decoding.

Users run ``lm_eval``; around the decoder sit task loading, few-shot/request building, tokenising,
collation, detokenising and stop-string cuts, the timing sidecar, the progress display, metrics and the
results files. This bench runs lm-eval's own CLI entry (``lm_eval.__main__.cli_evaluate``, the code
``python -m lm_eval`` runs; under ``--nproc N`` one copy per rank through torchrun) on a GSM8K-shaped
workload and compares the wall time of the evaluation with the sum of the per-sample decode seconds the
adapter records in its sidecar. Inside the CLI process (``bench_lm_eval_probe.py``), lm-eval and the
adapter are only wrapped by timers: nothing is replaced.

Workload: ``random:llada-8b`` (random weights: prompt LENGTHS matter, not content) on prompts whose token
counts are real GSM8K 5-shot prompt lengths (``gsm8k_5shot_prompt_tokens.json``, derived by
``derive-lengths`` from ../shared/data; provenance inside the file). A word-level tokenizer with one word per
token id and LLaDA's special ids makes an N-word prompt exactly N tokens. The commit profile is fixed:
``low_confidence`` with ``steps = gen_length / 4`` commits 4 tokens per step, about what Learn2PD reaches on
LLaDA-8B GSM8K at gen 256 (4.13x fewer forwards than one token per step, results/published).

    python bench/bench_lm_eval.py run --batch-size 1 --limit 64 --compile --jsonl docs/bench/X.jsonl
    python bench/bench_lm_eval.py run --nproc 2 --batch-size 16 --limit 64 --compile ...   # data parallel
    python bench/bench_lm_eval.py run --smoke          # CPU, random:tiny, a few seconds of decoding
    python bench/bench_lm_eval.py compare RUN_A RUN_B  # identical samples? (two run folders)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LENGTHS_FILE = HERE / "gsm8k_5shot_prompt_tokens.json"
TASK = "l2pd_bench_gsm8k_shape"
# LLaDA-8B-Instruct's special token ids (config.json / tokenizer of GSAI-ML/LLaDA-8B-Instruct).
LLADA_SPECIALS = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                  "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}
CHARS_PER_TOKEN = 3.40  # Llama-3 proxy for LLaDA's tokenizer on these prompts (docs/tasks.md)
CHAT_TOKENS = 10        # bos, two headers with role names, eot, two "\n\n" (docs/tasks.md)
COMMITS_PER_STEP = 4


# --------------------------------------------------------------------------------------------------
# Workload


def derive_lengths(data_dir: Path, count: int, out: Path) -> list[int]:
    """Token counts of the first ``count`` prompts lm-eval builds for ``gsm8k_l2pd_256`` (5-shot, seed 1234).

    LLaDA's tokenizer cannot be fetched here, so characters are converted with the Llama-3 ratio measured
    in docs/tasks.md, plus the chat template's tokens."""
    os.environ["L2PD_DATA_DIR"] = str(data_dir)
    from l2pd_eval.harness._hook import install

    install(force=True)
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["gsm8k_l2pd_256"], TaskManager())["gsm8k_l2pd_256"]
    task.build_all_requests(limit=count, rank=0, world_size=1)
    chars = [len(inst.args[0]) for inst in sorted(task.instances, key=lambda inst: inst.doc_id)]
    tokens = [round(c / CHARS_PER_TOKEN) + CHAT_TOKENS for c in chars]
    out.write_text(json.dumps({
        "what": f"GSM8K test prompts 0..{count - 1} as lm-eval 0.4.13 builds them for gsm8k_l2pd_256 "
                "(5-shot, few-shot seed 1234), in LLaDA tokens estimated as round(chars / "
                f"{CHARS_PER_TOKEN}) + {CHAT_TOKENS} (Llama-3 ratio and chat template, docs/tasks.md)",
        "chars": chars, "tokens": tokens}, indent=None) + "\n")
    return tokens


def load_lengths(path: Path = LENGTHS_FILE) -> list[int]:
    try:
        return list(json.loads(path.read_text())["tokens"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read prompt lengths ({exc}); rebuild it with "
                         "`python bench/bench_lm_eval.py derive-lengths --data ../shared/data`") from None


def special_ids(vocab_size: int) -> dict[str, int]:
    """LLaDA's ids for the 8B vocabulary; a small vocabulary (random:tiny) keeps them in its last slots."""
    if vocab_size > max(LLADA_SPECIALS.values()):
        return dict(LLADA_SPECIALS)
    return {tok: vocab_size - len(LLADA_SPECIALS) + i for i, tok in enumerate(LLADA_SPECIALS)}


def build_tokenizer(vocab_size: int, directory: Path) -> dict[str, int]:
    """Word-level tokenizer over the model's whole vocabulary: id i <-> word ``w<i>``, specials at their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = special_ids(vocab_size)
    by_id = {i: t for t, i in specials.items()}
    vocab = {by_id.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", mask_token="<|mdm_mask|>",
                                   additional_special_tokens=["<|eot_id|>", "<|start_header_id|>",
                                                              "<|end_header_id|>"])
    fast.save_pretrained(str(directory))
    return specials


def write_task(workdir: Path, lengths: list[int], vocab_size: int, gen_length: int, seed: int = 0) -> Path:
    """Docs (an N-word prompt per length, words drawn from the non-special ids) and the task YAML."""
    import random

    rng = random.Random(seed)
    reserved = set(special_ids(vocab_size).values())
    pool = [i for i in range(min(vocab_size, 50_000)) if i not in reserved]
    tasks = workdir / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    docs = tasks / "docs.jsonl"
    with docs.open("w") as fh:
        for n in lengths:
            fh.write(json.dumps({"prompt": " ".join(f"w{rng.choice(pool)}" for _ in range(n)), "answer": "0"}) + "\n")
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: \"{{prompt}}\"\n"
        "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"Question:\"]\n"
        f"  do_sample: false\n  max_gen_toks: {gen_length}\nmetric_list:\n  - metric: exact_match\n"
        "metadata:\n  version: 1\n")
    return tasks


# --------------------------------------------------------------------------------------------------
# The driver: build the workload, launch lm_eval, read the probe and the sidecar


@dataclass
class RunConfig:
    preset: str = "llada-8b"
    limit: int = 64
    batch_size: str = "1"
    gen_length: int = 256
    cache: str = "dual"
    compile: bool = False
    compile_autotune: bool = False
    warmup: bool = True
    nproc: int = 1
    device: str | None = None
    label: str = ""
    workdir: Path = Path("runs/bench_lm_eval")
    max_batch_size: int | None = None


def model_args(cfg: RunConfig, tokenizer: Path, sidecar: Path) -> str:
    args = {"pretrained": f"random:{cfg.preset}", "tokenizer": tokenizer, "policy": "low_confidence",
            "cache": cfg.cache, "gen_length": cfg.gen_length, "steps": cfg.gen_length // COMMITS_PER_STEP,
            "compile": str(cfg.compile).lower(), "sidecar": sidecar,
            "chat": "false"}
    if cfg.compile_autotune:
        args["compile_autotune"] = "true"
    return ",".join(f"{k}={v}" for k, v in args.items())


def launch(cfg: RunConfig, lengths: list[int]) -> tuple[Path, float]:
    """Build the workload in a fresh run folder and run lm_eval there; returns (run folder, process wall)."""
    from l2pd_eval.model import PRESETS, LLaDAConfig

    vocab = LLaDAConfig.from_dict(PRESETS[cfg.preset]).vocab_size
    run_dir = cfg.workdir / (cfg.label or f"{cfg.preset}_b{cfg.batch_size}_np{cfg.nproc}_{int(time.time())}")
    run_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(vocab, run_dir / "tokenizer")
    tasks = write_task(run_dir, lengths[:cfg.limit], vocab, cfg.gen_length)
    argv = ["--model", "learn2pd", "--model_args", model_args(cfg, run_dir / "tokenizer", run_dir / "sidecar.json"),
            "--tasks", TASK, "--include_path", str(tasks), "--output_path", str(run_dir / "out"),
            "--log_samples", "--batch_size", cfg.batch_size]
    if cfg.device:
        argv += ["--device", cfg.device]
    if cfg.max_batch_size:
        argv += ["--max_batch_size", str(cfg.max_batch_size)]
    inner = [str(HERE / "bench_lm_eval_probe.py"), "--timings", str(run_dir / "timings.json")]
    if cfg.warmup:
        inner += ["--warmup-lengths", ",".join(map(str, lengths[:cfg.limit]))]
    launcher = [sys.executable]
    if cfg.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg.nproc)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([*launcher, *inner, "--", *argv], check=True, env=env)
    return run_dir, time.perf_counter() - start


def samples_digest(run_dir: Path) -> tuple[str, dict[int, str]]:
    """sha256 over (doc_id, response) of lm-eval's samples file: equal digests = identical generations."""
    files = sorted((run_dir / "out").rglob(f"samples_{TASK}_*.jsonl"))
    if not files:
        raise SystemExit(f"{run_dir}: no samples_{TASK}_*.jsonl (was --log_samples dropped?)")
    rows = {}
    for line in files[-1].read_text().splitlines():
        row = json.loads(line)
        rows[int(row["doc_id"])] = json.dumps(row["resps"])
    digest = hashlib.sha256(json.dumps(sorted(rows.items())).encode()).hexdigest()[:16]
    return digest, rows


def rank_summary(probe: dict[str, Any]) -> dict[str, Any]:
    """One rank's phases. The window runs from the model being ready (after warm-up) to the CLI's return:
    task loading, request building, generate_until, metrics and the results files all lie inside it."""
    m, s = probe["marks"], probe["seconds"]
    window = m["end"] - m["model_ready"]
    inside = s.get("generate_until", 0.0)
    outside = window - probe["decode_seconds"]
    return {
        "rank": probe["rank"], "import_s": m["imported"] - m["start"], "model_build_s": m["model_built"] - m["imported"],
        "warmup_s": m["model_ready"] - m["model_built"], "window_s": window,
        "before_generate_s": m["gen_start"] - m["model_ready"], "generate_until_s": inside,
        "after_generate_s": m["end"] - m["gen_end"], "decode_s": probe["decode_seconds"], "tokens": probe["tokens"],
        "outside_decoder_s": outside, "outside_share": outside / window if window > 0 else None,
        "in_generate_until_outside_share": (inside - probe["decode_seconds"]) / inside if inside > 0 else None,
        "engine_host_s": s.get("engine_generate", 0.0) - probe["decode_seconds"],
        "components_s": {k: v for k, v in s.items() if k not in ("model_init", "generate_until")},
        "calls": probe["calls"], "missing_probes": probe["missing"], "memory": probe.get("memory", {}),
    }


def summarise(cfg: RunConfig, run_dir: Path, process_wall: float) -> dict[str, Any]:
    ranks = [rank_summary(json.loads(p.read_text())) for p in sorted(run_dir.glob("timings_rank*.json"))]
    sidecar = json.loads((run_dir / "sidecar.json").read_text())
    samples = sidecar["samples"]
    tokens, decode = sum(r["tokens"] for r in samples), sum(r["seconds"] for r in samples)
    window = max(r["window_s"] for r in ranks)
    digest, _ = samples_digest(run_dir)
    return {
        "bench": "lm_eval_e2e", "label": cfg.label, "preset": cfg.preset, "limit": cfg.limit, "nproc": cfg.nproc,
        "batch_size": cfg.batch_size, "batch_size_used": sidecar["manifest"].get("batch_sizes"),
        "gen_length": cfg.gen_length, "steps": cfg.gen_length // COMMITS_PER_STEP, "cache": cfg.cache,
        "compile": cfg.compile, "compile_autotune": cfg.compile_autotune, "cuda_graph": sidecar["manifest"].get("cuda_graph"),
        "gpu": sidecar["manifest"].get("environment", {}).get("gpu"), "process_wall_s": process_wall,
        "sidecar_samples": len(samples), "tokens": tokens, "decode_s_sum": decode,
        "nfe_mean": sum(r["nfe"] for r in samples) / max(len(samples), 1),
        "window_s": window, "outside_share": max(r["outside_share"] for r in ranks),
        # Ranks start decoding together (lm-eval synchronises them first), so data-parallel speed is read
        # over generate_until; the window of rank 0 also holds its wait for the slowest rank's start-up.
        "generate_until_s": max(r["generate_until_s"] for r in ranks),
        "throughput_tok_s": tokens / window,
        "generate_throughput_tok_s": tokens / max(r["generate_until_s"] for r in ranks), "decode_throughput_tok_s": tokens / max(r["decode_s"] for r in ranks),
        "samples_digest": digest, "ranks": ranks,
    }


def print_table(record: dict[str, Any]) -> None:
    r0 = record["ranks"][0]
    print(f"\n{record['label'] or 'run'}: {record['preset']} x{record['nproc']} batch {record['batch_size']} "
          f"(used {record['batch_size_used']}) gen {record['gen_length']} cache {record['cache']} "
          f"compile {record['compile']} gpu {record['gpu']}")
    print(f"  process wall {record['process_wall_s']:.2f} s  (import {r0['import_s']:.2f}, model build "
          f"{r0['model_build_s']:.2f}, warm-up {r0['warmup_s']:.2f})")
    print(f"  evaluation window {record['window_s']:.3f} s  decode sum {record['decode_s_sum']:.3f} s  "
          f"outside the decoder {100 * record['outside_share']:.2f}% (worst rank)")
    print(f"  memory (rank 0): {r0['memory']}")
    print(f"  {record['sidecar_samples']} samples, {record['tokens']} tokens, {record['throughput_tok_s']:.1f} tok/s "
          f"over the window, NFE {record['nfe_mean']:.1f}, samples digest {record['samples_digest']}")
    for r in record["ranks"]:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in sorted(r["components_s"].items()))
        print(f"  rank {r['rank']}: before generate {r['before_generate_s']:.3f} s, generate_until "
              f"{r['generate_until_s']:.3f} s, after {r['after_generate_s']:.3f} s, engine host "
              f"{r['engine_host_s']:.4f} s; {parts}")
        if r["missing_probes"]:
            print(f"    not probed (renamed in the adapter?): {', '.join(r['missing_probes'])}")


def compare(run_a: Path, run_b: Path) -> bool:
    digest_a, rows_a = samples_digest(run_a)
    digest_b, rows_b = samples_digest(run_b)
    differ = sorted(d for d in rows_a.keys() | rows_b.keys() if rows_a.get(d) != rows_b.get(d))
    print(f"{run_a}: {len(rows_a)} samples, digest {digest_a}\n{run_b}: {len(rows_b)} samples, digest {digest_b}")
    print("identical" if not differ else f"{len(differ)} samples differ, first doc_ids {differ[:10]}")
    return not differ


SMOKE = dict(preset="tiny", limit=6, batch_size="2", gen_length=32, cache="dual", device="cpu")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="build the workload, run lm_eval, report")
    run.add_argument("--preset", default="llada-8b")
    run.add_argument("--limit", type=int, default=64, help="number of prompts (from the lengths file)")
    run.add_argument("--batch-size", default="1", help="an integer or auto")
    run.add_argument("--max-batch-size", type=int, default=None, help="cap for --batch-size auto")
    run.add_argument("--gen-length", type=int, default=256)
    from l2pd_eval.caches import available as cache_names

    run.add_argument("--cache", default="dual", choices=cache_names())
    run.add_argument("--compile", action="store_true")
    run.add_argument("--compile-autotune", action="store_true",
                     help="compile_autotune=true: inductor times reduction configs (the pre-fix behaviour)")
    run.add_argument("--no-warmup", action="store_true")
    run.add_argument("--nproc", type=int, default=1, help="data-parallel ranks (torchrun, one GPU each)")
    run.add_argument("--device", default=None)
    run.add_argument("--label", default="")
    run.add_argument("--workdir", type=Path, default=Path("runs/bench_lm_eval"))
    run.add_argument("--jsonl", type=Path, default=None, help="append the record here")
    run.add_argument("--smoke", action="store_true", help="CPU, random:tiny, short prompts and answers")
    lens = sub.add_parser("derive-lengths", help="rebuild the prompt lengths file from the GSM8K data")
    lens.add_argument("--data", type=Path, required=True)
    lens.add_argument("--count", type=int, default=1319)
    cmp_ = sub.add_parser("compare", help="are two runs' generations identical?")
    cmp_.add_argument("run_a", type=Path)
    cmp_.add_argument("run_b", type=Path)
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig(preset=args.preset, limit=args.limit, batch_size=args.batch_size, gen_length=args.gen_length,
                    cache=args.cache, compile=args.compile, compile_autotune=args.compile_autotune, warmup=not args.no_warmup, nproc=args.nproc,
                    device=args.device, label=args.label, workdir=args.workdir, max_batch_size=args.max_batch_size)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(cfg, key, value)
    return cfg


def smoke_lengths(lengths: list[int]) -> list[int]:
    """random:tiny has a 1024-token context: the same ragged shape, scaled down 16x."""
    return [max(8, n // 16) for n in lengths]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    if args.cmd == "derive-lengths":
        tokens = derive_lengths(args.data, args.count, LENGTHS_FILE)
        print(f"{LENGTHS_FILE}: {len(tokens)} prompts, {min(tokens)}..{max(tokens)} tokens")
        return None
    if args.cmd == "compare":
        raise SystemExit(0 if compare(args.run_a, args.run_b) else 1)
    cfg = run_config(args)
    lengths = load_lengths()
    if args.smoke:
        lengths = smoke_lengths(lengths)
    if cfg.limit > len(lengths):
        raise SystemExit(f"--limit {cfg.limit}: the lengths file has {len(lengths)} prompts")
    run_dir, wall = launch(cfg, lengths)
    record = summarise(cfg, run_dir, wall)
    print_table(record)
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with args.jsonl.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
