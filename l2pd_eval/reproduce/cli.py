"""``l2pd-eval reproduce {learn2pd,fastdllm,fastdllm_dream}``: run a paper's table cell by cell, resumably, then
report.

    l2pd-eval reproduce learn2pd --filter FILTER --output_path runs/l2pd [--tasks gsm8k] [--lengths 256]
    l2pd-eval reproduce fastdllm --output_path runs/fast --dry-run
    l2pd-eval reproduce learn2pd --model testbed --output_path runs/tb --limit 20     (CPU, minutes)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from l2pd_eval.reproduce.cells import (
    TESTBED,
    TESTBED_TASK,
    Cell,
    RunOptions,
    Selection,
    command,
    environment,
    finished_results,
    plan,
    set_aside,
    settings_mismatch,
    shell_line,
)
from l2pd_eval.reproduce.papers import PAPERS, get_paper

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paper", choices=sorted(PAPERS), help="whose table to rerun (docs/reproduce.md)")
    p.add_argument("--output_path", "--output-path", required=True, metavar="DIR",
                   help="one folder per cell, DIR/<task>/<method>/; cells already finished there are skipped")
    p.add_argument("--model", default=None, metavar="PRETRAINED",
                   help=f"checkpoint directory or hub id (default: the paper's, GSAI-ML/LLaDA-8B-Instruct or "
                        f"Dream-org/Dream-v0-Base-7B); '{TESTBED}': the embedded testbed dLLM, its filter and its "
                        f"task {TESTBED_TASK} (CPU)")
    p.add_argument("--filter", default=None, metavar="PATH", help="Learn2PD filter (required by learn2pd's "
                   "Learn2PD columns unless --model testbed)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="BENCH",
                   help="subset of gsm8k minerva_math humaneval mbpp (default: the paper's four)")
    p.add_argument("--lengths", nargs="+", type=int, default=None, metavar="N",
                   help="subset of the paper's generation lengths (learn2pd: 256 1024; fastdllm: 256 512 1024; "
                        "fastdllm_dream: 256 512)")
    p.add_argument("--methods", nargs="+", default=None, metavar="KEY",
                   help="subset of the paper's columns by folder name (--dry-run lists them)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (lm-eval --limit)")
    p.add_argument("--batch_size", "--batch-size", default="1",
                   help="lm-eval --batch_size (default 1: both papers decode one request at a time)")
    p.add_argument("--device", default=None, help="lm-eval --device (default: cuda if available)")
    p.add_argument("--instruct", choices=("auto", "yes", "no"), default="auto",
                   help="is the model an Instruct model (the prompt rule needs it)? auto: the authors' test, "
                        "'instruct' in the model name")
    p.add_argument("--extra_model_args", default="", metavar="K=V,...",
                   help="added to every cell's model_args (e.g. compile=true,dtype=bfloat16); keys the paper "
                        "fixes are refused")
    p.add_argument("--lm_eval_args", default="", metavar="'ARGS'",
                   help="further lm-eval options for every cell, one shell-quoted string")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="print the lm-eval commands and exit")


def _selection(args: argparse.Namespace, model: str) -> Selection:
    def tup(v):
        return None if v is None else tuple(v)

    return Selection(model=model, benchmarks=tup(args.tasks), lengths=tup(args.lengths),
                     methods=tup(args.methods), filter=args.filter,
                     instruct={"auto": None, "yes": True, "no": False}[args.instruct],
                     extra_model_args=args.extra_model_args.strip(","))


def _finished(cells: list[Cell], opts: RunOptions) -> dict[str, Path]:
    """Finished cells' results; a finished run with other settings stops everything (never mixed in)."""
    done = {}
    for cell in cells:
        results = finished_results(opts.output_path / cell.folder)
        if results is None:
            continue
        why = settings_mismatch(results, cell, opts)
        if why:
            raise ValueError(f"{results.parent}: a finished run with other settings ({why}); remove that folder "
                             "or choose another --output_path")
        done[cell.folder] = results
    return done


def _run_cell(cell: Cell, opts: RunOptions) -> tuple[int, Path]:
    folder = opts.output_path / cell.folder
    moved = set_aside(folder)
    if moved is not None:
        print(f"    unfinished leftovers moved to {moved}")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "lm_eval.log"
    with log.open("w", encoding="utf-8") as out:
        out.write(shell_line(cell, opts) + "\n\n")
        out.flush()
        proc = subprocess.run(command(cell, opts), env={**os.environ, **environment(cell)}, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    return proc.returncode, log


def _report(paper_published: str | None, folders: list[Path]) -> int:
    """The reproduced table beside the published one (l2pd_eval.results via `l2pd-eval report`)."""
    from l2pd_eval.cli import main as cli_main

    argv = ["report", *map(str, folders)]
    if paper_published:
        from l2pd_eval.results.published import available

        if paper_published in available():
            argv += ["--published", paper_published]
        else:
            print(f"(published table {paper_published!r} is not in this installation: reproduced cells only)")
    return cli_main(argv)


def reproduce_main(args: argparse.Namespace) -> int:
    try:
        paper = get_paper(args.paper)
        model = args.model or paper.model
        cells = plan(paper, _selection(args, model))
        opts = RunOptions(output_path=Path(args.output_path), batch_size=str(args.batch_size), limit=args.limit,
                          device=args.device, lm_eval_args=tuple(shlex.split(args.lm_eval_args)))
        done = _finished(cells, opts)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    on = f"the {TESTBED} ({TESTBED_TASK})" if model == TESTBED else model
    print(f"{paper.title}: conventions on {on}; {len(cells)} cell(s), {len(done)} already finished in "
          f"{opts.output_path}")
    if args.dry_run:
        for cell in cells:
            state = "finished, skipped" if cell.folder in done else "to run"
            print(f"\n# {cell.folder}  [{cell.method.label}; {state}]\n{shell_line(cell, opts)}")
        return EXIT_OK
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.folder} ({cell.method.label})"
        if cell.folder in done:
            print(f"{head}: finished, skipped")
            continue
        t0 = time.perf_counter()
        code, log = _run_cell(cell, opts)
        results = finished_results(opts.output_path / cell.folder)
        if code != 0 or results is None:
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
            why = f"lm-eval exited {code}" if code else "no results_*.json with a complete l2pd_*.json sidecar"
            print(f"{head}: FAILED ({why}); log {log}:\n{tail}", file=sys.stderr)
            return EXIT_FAILED
        done[cell.folder] = results
        print(f"{head}: done in {time.perf_counter() - t0:.1f} s")
    print()
    folders = [opts.output_path / cell.folder for cell in cells]
    return _report(None if model == TESTBED else paper.published, folders)
