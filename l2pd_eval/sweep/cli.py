"""``l2pd-eval sweep``: one method over a parameter grid through the stock lm-eval CLI, resumably; then the
report with its accuracy-vs-TPF curve and AUP.

    l2pd-eval sweep --policy threshold --grid threshold=0.5:0.95:0.05 --tasks gsm8k_l2pd_256 --output_path runs/sw
    l2pd-eval sweep --policy learn2pd --filter F --grid accept_thres=0.9,0.95,0.99 --model_args cache=dual,eotp=true ...
    l2pd-eval sweep --model testbed --policy threshold --grid threshold=0.5,0.7,0.9 --output_path runs/tb --limit 20

Each point is one cell of ``reproduce`` (l2pd_eval/reproduce/cells.py): DIR/<task>/<point>/ holds its
lm-eval results and sidecar, a finished cell is skipped on a rerun, a finished cell with other settings
stops the sweep, unfinished leftovers are set aside. A ``baseline`` cell (low_confidence with the same
setup) anchors the AUP curve at TPF 1.0, as d3LLM does, and gives the speedups. DIR/sweep.json records the
grid and, after the report, each curve's AUP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from l2pd_eval.reproduce.cells import TESTBED, TESTBED_TASK, Cell, RunOptions
from l2pd_eval.reproduce.papers import PaperMethod
from l2pd_eval.sweep.grid import FIXED, point_key, points

DEFAULT_MODEL = "GSAI-ML/LLaDA-8B-Instruct"
SCHEMA = "l2pd-eval/sweep"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The baseline cell keeps the setup (lengths, prompt, dtype, ...) but not what defines the method.
METHOD_KEYS = ("cache", "eotp")


def sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="NAME", help="the method swept (threshold, factor, learn2pd, ...)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=VALUES",
                   help="a model_arg and its values: START:STOP:STEP (both ends included) or A,B,C; repeatable "
                        "(every combination runs)")
    p.add_argument("--output_path", "--output-path", required=True, metavar="DIR",
                   help="one folder per point, DIR/<task>/<point>/; points already finished there are skipped")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PRETRAINED",
                   help=f"checkpoint directory or hub id (default {DEFAULT_MODEL}); '{TESTBED}': the embedded testbed "
                        f"dLLM on its task {TESTBED_TASK} (CPU)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help=f"lm-eval tasks (e.g. gsm8k_l2pd_256); default on the {TESTBED}: {TESTBED_TASK}")
    p.add_argument("--model_args", "--model-args", default="", metavar="K=V,...",
                   help="fixed model_args of every point (cache=dual,eotp=true,gen_length=256,...)")
    p.add_argument("--filter", default=None, metavar="PATH", help="Learn2PD filter (policy learn2pd; the testbed's "
                   "own by default)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the low_confidence cell (then AUP has no TPF-1.0 anchor and speedups are n/a)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (lm-eval --limit)")
    p.add_argument("--batch_size", "--batch-size", default="1", help="lm-eval --batch_size (default 1)")
    p.add_argument("--device", default=None, help="lm-eval --device")
    p.add_argument("--lm_eval_args", default="", metavar="'ARGS'", help="further lm-eval options, one quoted string")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="print the lm-eval commands and exit")


def _pairs(text: str, option: str) -> list[tuple[str, str]]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
        out.append((key.strip(), value.strip()))
    return out


def _setup(args: argparse.Namespace) -> tuple[str, list[str], list[tuple[str, str]]]:
    """(pretrained, tasks, fixed model_args) with the testbed's defaults filled in."""
    fixed = _pairs(args.model_args, "--model_args")
    keys = [k for k, _ in fixed]
    for key in keys:
        if key in FIXED:
            raise ValueError(f"--model_args sets {key}=, which the sweep sets itself (--model / --policy)")
    model, tasks = args.model, args.tasks
    if args.model == TESTBED:
        from l2pd_eval.testbed import GEN_LENGTH, checkpoint_path, filter_path

        model = str(checkpoint_path())
        if tasks not in (None, [TESTBED_TASK]):
            raise ValueError(f"--model {TESTBED} runs only --tasks {TESTBED_TASK} (the task it was trained for)")
        tasks = [TESTBED_TASK]
        defaults = [("gen_length", str(GEN_LENGTH)), ("chat", "false")]
        fixed = fixed + [(k, v) for k, v in defaults if k not in keys]
        if args.policy == "learn2pd" and args.filter is None:
            args.filter = str(filter_path())
    if not tasks:
        raise ValueError("--tasks TASK [TASK ...] is required (e.g. gsm8k_l2pd_256) unless --model testbed")
    if args.filter is not None:
        if args.policy != "learn2pd":
            raise ValueError(f"--filter is for --policy learn2pd, not {args.policy}")
        fixed.append(("filter", args.filter))
    for option, value in (("--model", model), ("--filter", args.filter)):
        if value and "," in value:
            raise ValueError(f"{option} {value!r}: lm-eval's model_args cannot hold a comma; rename or link the path")
    return model, tasks, fixed


def _check(model_args: str) -> None:
    """The adapter's own parse of a point's model_args (types, the policy's parameter names), before any
    cell runs: a typo in the grid is one error, not a failure after the first cells."""
    from l2pd_eval.harness.model_args import parse_model_args
    from l2pd_eval.results.runs import model_args_as_text

    parse_model_args(model_args_as_text(model_args))


def plan(args: argparse.Namespace) -> list[Cell]:
    """The baseline cell (unless --no-baseline) and one cell per grid point, for each task."""
    model, tasks, fixed = _setup(args)
    grid = points(args.grid)
    given = {k for k, _ in fixed}
    clash = sorted(given & {k for k, _ in grid[0]})
    if clash:
        raise ValueError(f"--grid {clash[0]} is also fixed in --model_args; give it in one place")
    from l2pd_eval.harness.model_args import ModelArgs
    from l2pd_eval.results.columns import split_task
    from l2pd_eval.typed_args import parameters

    own = set(parameters(ModelArgs))
    methods = []
    if not args.no_baseline:
        setup = [(k, v) for k, v in fixed if k in own and k not in METHOD_KEYS]
        methods.append(PaperMethod("baseline", "baseline (low_confidence)",
                                   ",".join(["policy=low_confidence", *(f"{k}={v}" for k, v in setup)])))
    for point in grid:
        args_text = ",".join([f"policy={args.policy}", *(f"{k}={v}" for k, v in fixed),
                              *(f"{k}={v}" for k, v in point)])
        label = f"{args.policy} " + ", ".join(f"{k}={v}" for k, v in point)
        methods.append(PaperMethod(point_key(point), label, args_text))
    for method in methods:
        _check(f"pretrained={model},{method.args}")
    cells = []
    for task in tasks:
        base, length = split_task(task)
        for method in methods:
            cells.append(Cell(task, base, length or 0, method, f"pretrained={model},{method.args}"))
    return cells


def _record(out: Path, args: argparse.Namespace, cells: list[Cell], aup: dict | None = None) -> Path:
    """DIR/sweep.json: what was swept and, once reported, each curve's AUP. A later sweep into the same
    folder adds its cells and its command line; nothing earlier is dropped."""
    path = out / "sweep.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError
    except (OSError, ValueError):
        data = {"schema": SCHEMA, "version": 1, "invocations": [], "cells": {}}
    argv = ["l2pd-eval", "sweep", *sys.argv[2:]] if sys.argv[1:2] == ["sweep"] else None
    entry = {"model": args.model, "policy": args.policy, "grid": args.grid, "model_args": args.model_args,
             "limit": args.limit, "argv": argv}
    if entry not in data["invocations"]:
        data["invocations"].append(entry)
    for cell in cells:
        data["cells"][cell.folder] = {"task": cell.task, "label": cell.method.label, "model_args": cell.model_args}
    if aup is not None:
        data["aup"] = aup
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _report(out: Path, cells: list[Cell]) -> dict:
    """The report over the sweep's cells (console), report.md, tradeoff.png and curves.png beside them;
    returns each curve's AUP for sweep.json."""
    from l2pd_eval.results.plot import plot_curves, plot_tradeoff
    from l2pd_eval.results.runs import discover
    from l2pd_eval.results.table import build_report, column_label
    from l2pd_eval.results.text import render_console, render_markdown

    folders = list(dict.fromkeys(str(out / c.folder) for c in cells))
    report = build_report(discover(folders))
    sys.stdout.write(render_console(report))
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    for name, draw in (("tradeoff.png", lambda p: plot_tradeoff(report, p)),
                       ("curves.png", lambda p: plot_curves(report, p))):
        try:
            draw(out / name)
            print(f"wrote {out / name}")
        except ValueError as exc:
            print(f"({name} not drawn: {exc})")
    return {column_label(cv.column): {"curve": cv.label, "aup": cv.aup, "y_max": cv.y_max, "error": cv.error,
                                      "points": cv.points} for cv in report.curves if len(cv.cells) > 1}


def sweep_main(args: argparse.Namespace) -> int:
    from l2pd_eval.reproduce.cli import dry_run, finished_cells, run_cells

    try:
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit {args.limit}: must be a positive number of documents")
        cells = plan(args)
        opts = RunOptions.from_args(args)
        done = finished_cells(cells, opts)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tasks = len({c.task for c in cells})
    points_n = len(cells) // tasks - (0 if args.no_baseline else 1)
    print(f"sweep of {args.policy} on {args.model}: {points_n} point(s){'' if args.no_baseline else ' + the baseline'} "
          f"x {tasks} task(s) = {len(cells)} cell(s), {len(done)} already finished in {opts.output_path}", flush=True)
    if args.dry_run:
        return dry_run(cells, opts, done)
    _record(opts.output_path, args, cells)
    t0 = time.perf_counter()
    code = run_cells(cells, opts, done)
    if code != EXIT_OK:
        return code
    print(f"\nall {len(cells)} cell(s) finished ({time.perf_counter() - t0:.1f} s this time)\n")
    aup = _report(opts.output_path, cells)
    path = _record(opts.output_path, args, cells, aup)
    print(f"wrote {opts.output_path / 'report.md'} and {path}; the page: l2pd-eval leaderboard {opts.output_path} "
          f"-o {opts.output_path / 'site'}")
    return EXIT_OK
