"""``l2pd-eval reproduce {learn2pd,fastdllm,fastdllm_dream}``: run a paper's table cell by cell, resumably, then
report.

    l2pd-eval reproduce learn2pd --filter FILTER --output_path runs/l2pd [--tasks gsm8k] [--lengths 256]
    l2pd-eval reproduce fastdllm --output_path runs/fast --dry-run
    l2pd-eval reproduce learn2pd --model testbed --output_path runs/tb --limit 20     (CPU, minutes)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from l2pd_eval.errors import ConfigError
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
    write_cell_record,
)
from l2pd_eval.reproduce.estimate import StepCosts, batch_rows, estimate_cell, hours
from l2pd_eval.reproduce.papers import BLOCK_LENGTH, PAPERS, PAPERS_FAMILY, get_paper, model_family

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paper", choices=sorted(PAPERS), help="whose table to rerun (docs/reproduce.md)")
    p.add_argument("--output_path", "--output-path", required=True, metavar="DIR",
                   help="one folder per cell, DIR/<task>/<method>/; cells already finished there are skipped")
    p.add_argument("--model", default=None, metavar="PRETRAINED",
                   help=f"checkpoint directory or hub id of any family (default: the paper's, GSAI-ML/LLaDA-8B-Instruct "
                        f"or Dream-org/Dream-v0-Base-7B); '{TESTBED}': the embedded testbed dLLM, its filter and its "
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


def finished_cells(cells: list[Cell], opts: RunOptions) -> dict[str, Path]:
    """Finished cells' results; a finished run with other settings stops everything (never mixed in)."""
    done = {}
    for cell in cells:
        results = finished_results(opts.output_path / cell.folder)
        if results is None:
            continue
        why = settings_mismatch(results, cell, opts)
        if why:
            raise ConfigError(f"{results.parent}: a finished run with other settings ({why}); remove that folder "
                              "or choose another --output_path")
        done[cell.folder] = results
    return done


#: Lines of a cell's lm-eval output shown while it runs (the rest goes to its log): the adapter's progress
#: lines (``learn2pd POLICY: done/total requests, ...``), lm-eval's cache summary, errors.
_RELAY = re.compile(r"^(learn2pd .*: \d+/\S+ requests|.*Cached requests: |lm_eval: error: |.*Error: )")


def _run_cell(cell: Cell, opts: RunOptions) -> tuple[int, Path]:
    """Run one cell's lm-eval command; its output goes to ``lm_eval.log`` in the cell's folder, and the
    progress lines are relayed as they come (indented)."""
    folder = opts.output_path / cell.folder
    moved = set_aside(folder)
    if moved is not None:
        print(f"    unfinished leftovers moved to {moved}")
    folder.mkdir(parents=True, exist_ok=True)
    write_cell_record(folder, opts)
    log = folder / "lm_eval.log"
    env = {**os.environ, **environment(cell), "PYTHONUNBUFFERED": "1"}
    with log.open("w", encoding="utf-8") as out:
        out.write(shell_line(cell, opts) + "\n\n")
        out.flush()
        with subprocess.Popen(command(cell, opts), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if _RELAY.match(line):
                    print(f"    {line.rstrip()}", flush=True)
    return proc.returncode, log


def dry_run(cells: list[Cell], opts: RunOptions, done: dict[str, Path],
            seconds: dict[str, float] | None = None) -> int:
    """Print each cell's lm-eval command, whether it would run and (``seconds``: folder -> estimate) its
    estimated GPU time."""
    for cell in cells:
        state = "finished, skipped" if cell.folder in done else "to run"
        when = f"; ~{hours(seconds[cell.folder])} of GPU" if seconds else ""
        print(f"\n# {cell.folder}  [{cell.method.label}; {state}{when}]\n{shell_line(cell, opts)}")
    return EXIT_OK


class OutputLock:
    """One ``reproduce`` at a time per ``--output_path``: an exclusive ``flock`` on ``DIR/.reproduce.lock``,
    held while the process lives. The kernel drops it when the process ends, however it ends, so a killed
    run never leaves a stale lock (the file stays; it is only the lock's handle)."""

    NAME = ".reproduce.lock"

    def __init__(self, folder: Path):
        self.path = folder / self.NAME
        self._fh = None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise ConfigError(f"--output_path {self.path.parent}: another `l2pd-eval reproduce` (pid {holder}) is "
                              "running into this folder; wait for it to finish, or choose another --output_path") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


def _check_filter(cells: list[Cell]) -> None:
    """The Learn2PD cells' filter loads and fits the paper's block length, before any cell runs."""
    paths = {dict(part.split("=", 1) for part in c.model_args.split(",") if "=" in part).get("filter")
             for c in cells if c.method.uses_filter} - {None}
    if not paths:
        return
    from l2pd_eval.policies.filter_net import load_filter

    for path in sorted(paths):
        load_filter(path, expected_block_length=BLOCK_LENGTH)


def run_cells(cells: list[Cell], opts: RunOptions, done: dict[str, Path]) -> int:
    """Run the cells not in ``done`` (folder -> finished results), one lm-eval process each, in order, saying
    which cell runs and where its log is, relaying its progress lines; the first failure stops with its
    log's tail. The caller holds the :class:`OutputLock`."""
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.folder} ({cell.method.label})"
        if cell.folder in done:
            print(f"{head}: finished, skipped")
            continue
        print(f"running cell {i}/{len(cells)}: {cell.folder} ({cell.method.label}) (log: "
              f"{opts.output_path / cell.folder / 'lm_eval.log'})", flush=True)
        t0 = time.perf_counter()
        code, log = _run_cell(cell, opts)
        results = finished_results(opts.output_path / cell.folder)
        if code != 0 or results is None:
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
            why = f"lm-eval exited {code}" if code else "no results_*.json with a complete l2pd_*.json sidecar"
            print(f"{head}: FAILED ({why}); log {log}:\n{tail}", file=sys.stderr)
            return EXIT_FAILED
        done[cell.folder] = results
        print(f"{head}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return EXIT_OK


def _report(paper_published: str | None, folders: list[Path]) -> int:
    """The reproduced table beside the published one of the model's family (l2pd_eval.results via
    `l2pd-eval report`)."""
    from l2pd_eval.cli import main as cli_main

    argv = ["report", *map(str, folders)]
    if paper_published:
        from l2pd_eval.results.published import available

        if paper_published in available():
            argv += ["--published", paper_published]
        else:
            print(f"(published table {paper_published!r} is not in this installation: reproduced cells only)")
    return cli_main(argv)


def _cache_of(cell: Cell) -> str:
    return next((p.split("=", 1)[1] for p in cell.model_args.split(",") if p.startswith("cache=")), "none")


def _estimates(published: str | None, cells: list[Cell], opts: RunOptions) -> tuple[dict[str, float], float, float] | None:
    """Estimated GPU seconds per cell at the run's batch size (compiled steps, CUDA graphs), and the whole
    selection's at ``batch_size=auto`` and as the authors' scripts run it (batch 1, no compile, no graphs),
    from the measured step costs (``reproduce/estimate.py``); None without a step-cost table."""
    try:
        ours, theirs = StepCosts.load(setting="compiled"), StepCosts.load(setting="eager")
    except (OSError, KeyError, ValueError):
        return None
    rows = batch_rows(opts.batch_size)

    def one(costs: StepCosts, cell: Cell, batch: int) -> float:
        return estimate_cell(costs, cell.benchmark, cell.length, cell.method.key, _cache_of(cell), batch,
                             opts.limit, published)

    per_cell = {cell.folder: one(ours, cell, rows) for cell in cells}
    return (per_cell, sum(one(ours, c, batch_rows("auto")) for c in cells),
            sum(one(theirs, c, 1) for c in cells))


def _print_totals(est: tuple[dict[str, float], float, float], opts: RunOptions, extra: str) -> None:
    per_cell, auto, authors = est
    total = sum(per_cell.values())
    costs = StepCosts.load(setting="compiled")
    print(f"\nEstimated GPU time of decoding (one {costs.gpu}, step costs {costs.source}; commit profiles and the "
          f"method: l2pd_eval/reproduce/estimate.py): {hours(total)} at --batch_size {opts.batch_size}, "
          f"{hours(auto)} at --batch_size auto ({batch_rows('auto')} rows); the authors' batch-1 scripts (no "
          f"compile, no CUDA graphs) by the same estimate: {hours(authors)} ({authors / auto:.1f}x auto's). "
          "Excludes start-up (model load, compile warm-up) and lm-eval's own work.")
    if "compile=true" not in extra:
        print("(the estimate assumes compile=true; add --extra_model_args compile=true for its step costs)")


def reproduce_main(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give a positive number of documents per task (or leave it out "
                          "for whole tasks)")
    paper = get_paper(args.paper)
    model = args.model or paper.model
    cells = plan(paper, _selection(args, model))
    opts = RunOptions.from_args(args)
    done = finished_cells(cells, opts)
    family = PAPERS_FAMILY if model == TESTBED else model_family(model)
    table = paper.table_for(family or PAPERS_FAMILY)
    on = f"the {TESTBED} ({TESTBED_TASK})" if model == TESTBED else model
    print(f"{paper.title}: conventions on {on} ({family or 'family unknown, taken as ' + PAPERS_FAMILY}); "
          f"{len(cells)} cell(s), {len(done)} already finished in {opts.output_path}")
    if table is None and model != TESTBED:
        print(f"(the {paper.name} paper has no published table of the {family} family: reproduced cells only)")
    if args.dry_run:
        # the measured step costs are LLaDA-8B's: no estimate for the testbed or another family's shapes
        est = None if model == TESTBED or (family or PAPERS_FAMILY) != "llada" else _estimates(table, cells, opts)
        code = dry_run(cells, opts, done, est[0] if est else None)
        if est:
            _print_totals(est, opts, args.extra_model_args)
        return code
    if len(done) == len(cells):  # nothing to run: nothing written, no lock needed
        code = run_cells(cells, opts, done)
    else:
        _check_filter([c for c in cells if c.folder not in done])
        with OutputLock(opts.output_path):
            done = finished_cells(cells, opts)  # again, under the lock: another run may have finished some meanwhile
            code = run_cells(cells, opts, done)
    if code != EXIT_OK:
        return code
    print()
    folders = [opts.output_path / cell.folder for cell in cells]
    return _report(None if model == TESTBED else table, folders)
