"""A paper's table as cells (benchmark x length x method), each one lm-eval command, and which are finished.

A cell is finished when its folder holds an lm-eval ``results_<stamp>.json`` and, beside it, our timing
sidecar ``l2pd_<stamp>.json`` that is not marked ``"complete": false``: lm-eval writes the results only
after the last request, and the hook writes the sidecar right after them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from l2pd_eval.errors import ConfigError
from l2pd_eval.reproduce.papers import CODE_BENCHMARKS, Paper, PaperMethod, is_instruct
from l2pd_eval.typed_args import comparable

#: ``--model`` value that selects the embedded testbed dLLM, its filter and its task.
TESTBED = "testbed"
TESTBED_TASK = "l2pd_demo"


@dataclass(frozen=True)
class Selection:
    """What the user asked for; ``None`` = everything the paper has."""

    model: str
    benchmarks: tuple[str, ...] | None = None
    lengths: tuple[int, ...] | None = None
    methods: tuple[str, ...] | None = None
    filter: str | None = None
    instruct: bool | None = None          # None: the authors' test on the model name
    extra_model_args: str = ""


@dataclass(frozen=True)
class Cell:
    task: str          # lm-eval task name
    benchmark: str     # the paper's benchmark (l2pd_demo on the testbed)
    length: int
    method: PaperMethod
    model_args: str

    @property
    def folder(self) -> str:
        return f"{self.task}/{self.method.key}"

    @property
    def runs_code(self) -> bool:
        return self.benchmark in CODE_BENCHMARKS


def _check_choice(option: str, given: tuple, valid: tuple, paper: Paper) -> None:
    unknown = [v for v in given if v not in valid]
    if unknown:
        raise ConfigError(f"{option} {' '.join(map(str, unknown))}: not in {paper.name}'s table; valid choices: "
                          f"{', '.join(map(str, valid))}")


def _grid(paper: Paper, sel: Selection) -> list[tuple[str, str, int, PaperMethod]]:
    """(task, benchmark, length, method) of the selected cells, in table order."""
    if sel.model == TESTBED:
        from l2pd_eval.testbed import GEN_LENGTH

        if sel.benchmarks not in (None, (TESTBED_TASK,)) or sel.lengths not in (None, (GEN_LENGTH,)):
            raise ConfigError(f"--model {TESTBED} runs only --tasks {TESTBED_TASK} at --lengths {GEN_LENGTH} (the task "
                              "it was trained for); leave --tasks/--lengths out or pass a LLaDA checkpoint")
        _check_choice("--methods", sel.methods or (), tuple(m.key for m in paper.methods), paper)
        return [(TESTBED_TASK, TESTBED_TASK, GEN_LENGTH, m) for m in paper.methods
                if sel.methods is None or m.key in sel.methods]
    _check_choice("--tasks", sel.benchmarks or (), paper.benchmarks, paper)
    _check_choice("--lengths", sel.lengths or (), paper.lengths, paper)
    _check_choice("--methods", sel.methods or (), tuple(m.key for m in paper.methods), paper)
    out = []
    for length in sel.lengths or paper.lengths:
        for bench in sel.benchmarks or paper.benchmarks:
            for m in paper.methods_at(bench, length):
                if sel.methods is None or m.key in sel.methods:
                    out.append((f"{bench}_l2pd_{length}", bench, length, m))
    if not out:
        have = "; ".join(f"{b} at {'/'.join(str(n) for n in paper.lengths if paper.methods_at(b, n))}"
                         for b in paper.benchmarks)
        raise ConfigError(f"--tasks/--lengths/--methods select no cell of {paper.name}'s table (it has {have})")
    return out


def _merge_extra(args: str, extra: str) -> str:
    """Append user model_args (dtype, compile, ...); one that would change the paper's method is an error."""
    if not extra:
        return args
    fixed = {part.split("=", 1)[0] for part in args.split(",")}
    for part in extra.split(","):
        key = part.split("=", 1)[0].strip()
        if "=" not in part or not key:
            raise ConfigError(f"--extra_model_args {extra!r}: expected KEY=VALUE[,KEY=VALUE...]")
        if key in fixed:
            raise ConfigError(f"--extra_model_args sets {key}=, which the paper's convention fixes for this cell "
                              f"({args}); leave it out")
    return f"{args},{extra}"


def plan(paper: Paper, sel: Selection) -> list[Cell]:
    """The selected cells with each method's exact model_args (docs/reproduce.md lists the conventions)."""
    grid = _grid(paper, sel)
    model, filt = sel.model, sel.filter
    needs_filter = [m.label for m in dict.fromkeys(m for *_, m in grid) if m.uses_filter]
    if model == TESTBED:
        from l2pd_eval.testbed import checkpoint_path, filter_path

        model = str(checkpoint_path())
        filt = filt or (str(filter_path()) if needs_filter else None)
    if needs_filter and not filt:
        raise ConfigError(f"--filter PATH is required for {', '.join(needs_filter)}: a filter trained with "
                          "`l2pd-eval train-filter` or the Learn2PD authors' .pth (docs/filters.md)")
    if filt and not needs_filter:
        raise ConfigError(f"--filter is used only by Learn2PD methods; none of the selected {paper.name} cells has one")
    for option, value in (("--model", model), ("--filter", filt)):
        if value and "," in value:
            raise ConfigError(f"{option} {value!r}: lm-eval's model_args cannot hold a comma; rename or link the path")
    instruct = is_instruct(model) if sel.instruct is None else sel.instruct
    cells = []
    for task, bench, length, method in grid:
        args = [f"pretrained={model}", method.args]
        if method.uses_filter:
            args.append(f"filter={filt}")
        block, steps = method.shape(length)
        args += [f"gen_length={length}", f"steps={steps}", f"block_length={block}",
                 f"chat={'true' if paper.chat(bench, instruct) else 'false'}"]
        if paper.common_args:
            args.append(paper.common_args)
        if paper.seed is not None:
            args.append(f"seed={paper.seed}")
        cells.append(Cell(task, bench, length, method, _merge_extra(",".join(args), sel.extra_model_args)))
    return cells


# --------------------------------------------------------------------------------------------------
# commands


def _hook_installed() -> bool:
    if os.environ.get("L2PD_EVAL_NO_HOOK"):
        return False
    return any(Path(p, "l2pd_eval_hook.pth").is_file() for p in sys.path if p)


@dataclass(frozen=True)
class RunOptions:
    """lm-eval options shared by every cell."""

    output_path: Path
    batch_size: str = "1"
    limit: int | None = None
    device: str | None = None
    lm_eval_args: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args) -> RunOptions:
        """From the options ``reproduce`` and ``sweep`` share (--output_path, --batch_size, --limit, ...)."""
        extra, limit = split_limit(tuple(shlex.split(args.lm_eval_args)), args.limit)
        if limit is not None and limit < 1:
            raise ConfigError(f"--lm_eval_args --limit {limit}: give a positive number of documents per task")
        return cls(output_path=Path(args.output_path), batch_size=str(args.batch_size), limit=limit,
                   device=args.device, lm_eval_args=extra)


def command(cell: Cell, opts: RunOptions) -> list[str]:
    """The stock lm-eval CLI (``python -m lm_eval``; through our entry point when the .pth hook is off)."""
    entry = "lm_eval" if _hook_installed() else "l2pd_eval.harness.lm_eval_cli"
    cmd = [sys.executable, "-m", entry, "run", "--model", "learn2pd", "--model_args", cell.model_args,
           "--tasks", cell.task, "--batch_size", str(opts.batch_size),
           "--output_path", str(opts.output_path / cell.folder), "--log_samples"]
    if opts.limit is not None:
        cmd += ["--limit", str(opts.limit)]
    if opts.device:
        cmd += ["--device", opts.device]
    if cell.runs_code:
        cmd.append("--confirm_run_unsafe_code")
    return cmd + list(opts.lm_eval_args)


def environment(cell: Cell) -> dict[str, str]:
    """Extra environment of a cell: code tasks execute the model's programs only with this consent."""
    return {"HF_ALLOW_CODE_EVAL": "1"} if cell.runs_code else {}


def shell_line(cell: Cell, opts: RunOptions) -> str:
    env = " ".join(f"{k}={v}" for k, v in environment(cell).items())
    return (env + " " if env else "") + shlex.join(command(cell, opts))


# --------------------------------------------------------------------------------------------------
# finished cells


def finished_results(folder: Path) -> Path | None:
    """The newest ``results_*.json`` under ``folder`` whose sidecar is there and complete."""
    for results in sorted(folder.rglob("results_*.json"), reverse=True):
        sidecar = results.with_name("l2pd_" + results.name[len("results_"):])
        if not sidecar.is_file():
            continue
        try:
            complete = json.loads(sidecar.read_text(encoding="utf-8")).get("complete", True)
        except (OSError, ValueError, AttributeError):
            continue  # a sidecar cut short by a crash: the cell is not finished
        if complete is True:
            return results
    return None


def read_results(results: Path, folder: Path) -> dict:
    """A finished cell's lm-eval results; a corrupt file is one error naming it and the fix."""
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{results}: the lm-eval results of a finished cell are corrupt ({err}); move or delete "
                          f"the cell's folder {folder} and rerun to decode that cell again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{results}: not lm-eval results (a JSON {type(data).__name__}); move or delete the "
                          f"cell's folder {folder} and rerun to decode that cell again")
    return data


def settings_mismatch(results: Path, cell: Cell, opts: RunOptions) -> str | None:
    """Why a finished cell's run is not this cell's run (other model_args, --limit or lm-eval options), or None."""
    from l2pd_eval.results.runs import model_args_as_text

    folder = opts.output_path / cell.folder
    config = read_results(results, folder).get("config") or {}
    had, want = model_args_as_text(config.get("model_args")), model_args_as_text(cell.model_args)
    diff = [f"{k}: {had.get(k)!r} there, {want.get(k)!r} now" for k in sorted(set(had) | set(want))
            if comparable(had.get(k)) != comparable(want.get(k))]
    if comparable(config.get("limit")) != comparable(opts.limit):
        diff.append(f"limit: {config.get('limit')!r} there, {opts.limit!r} now")
    recorded = read_cell_record(folder)
    if recorded is not None and recorded.get("lm_eval_args") != list(opts.lm_eval_args):
        diff.append(f"--lm_eval_args: {shlex.join(recorded.get('lm_eval_args') or [])!r} there, "
                    f"{shlex.join(opts.lm_eval_args)!r} now")
    return "; ".join(diff) or None


#: Written into a cell's folder before it runs: the options that are not in lm-eval's results file.
CELL_RECORD = "reproduce_cell.json"


def write_cell_record(folder: Path, opts: RunOptions) -> None:
    (folder / CELL_RECORD).write_text(json.dumps({"lm_eval_args": list(opts.lm_eval_args)}) + "\n",
                                      encoding="utf-8")


def read_cell_record(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / CELL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def split_limit(lm_eval_args: tuple[str, ...], limit: int | None) -> tuple[tuple[str, ...], int | None]:
    """``--limit N`` given inside ``--lm_eval_args`` is the run's ``--limit``: taken out, so a finished cell
    is recognised as such (lm-eval records the limit). Both, with different values, is an error."""
    rest, found = [], None
    args = list(lm_eval_args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--limit" and i + 1 < len(args):
            found, i = args[i + 1], i + 2
            continue
        if arg.startswith("--limit="):
            found, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    if found is None:
        return tuple(rest), limit
    try:
        value = int(found)
    except ValueError:
        raise ConfigError(f"--lm_eval_args --limit {found}: give a whole number of documents per task "
                          "(a fraction of a task does not resume); or use --limit N") from None
    if limit is not None and limit != value:
        raise ConfigError(f"--limit {limit} and --lm_eval_args --limit {value} disagree; give one")
    return tuple(rest), value


def set_aside(folder: Path) -> Path | None:
    """Move an unfinished cell's leftovers out of the way (kept, not deleted) so the rerun starts clean."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    target = folder.with_name(f"{folder.name}.unfinished-{time.strftime('%Y%m%dT%H%M%S')}")
    folder.rename(target)
    return target
