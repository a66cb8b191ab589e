"""Published numbers (``results/published/<name>.json``) side by side with a reproduced report.

The JSON files ship inside the wheel as ``l2pd_eval/published`` (pyproject force-include) and live at
``results/published`` in a source checkout; :func:`load_published` tries both. Only numbers actually
found in a cited source are stored; cells known to exist but not found are listed under ``missing``.

Matching rule (docs/results.md): a published cell pairs with the report cell of the same task and
generation length whose method has the same policy, cache and EoTP rule with no contradicting parameter
(a published EoTP cell is the authors' rule, ``eotp=true``: a run of the committed rule is listed as not
paired),
whose model is of the table's family (the family the run's sidecar records; for older sidecars the
family its model name gives by the torch-free family facts, ``l2pd_eval/family_facts.py``; a run with
neither is accepted and noted), whose model is the entry's checkpoint where the entry names one (``model``:
a table of several checkpoints of one family), whose step count is the entry's where it fixes one
(``method.steps``), and whose few-shot count equals the cell's when both are known. ``--published auto``:
the tables the family facts list for the runs' families.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2pd_eval.family_facts import FACTS, family_name_of_model, find_checkpoint
from l2pd_eval.results import render
from l2pd_eval.results.methods import KNOB_DEFAULTS, Method
from l2pd_eval.results.metrics import AUPError, AUPParams, aup
from l2pd_eval.results.table import Report, ReportCell, fmt_speedup, fmt_tpf, fmt_tps

SCHEMA = "l2pd-eval/published"


def published_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent  # .../l2pd_eval
    return [here / "published", here.parent / "results" / "published"]


def available() -> list[str]:
    names: set[str] = set()
    for folder in published_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json"))
    return sorted(names)


@dataclass(frozen=True)
class PublishedEntry:
    task: str
    gen_length: int | None
    label: str
    method: dict[str, Any]
    tps: float | None
    speedup: float | None
    accuracy: float | None  # percent, as printed in the paper
    source: str
    num_fewshot: int | None = None
    model: str | None = None  # the checkpoint's hub id where the table holds several of its family
    steps: int | None = None  # a row that fixes the step count (method.steps)
    tpf: float | None = None  # tokens per forward, where the source gives it (d3LLM's pairs)
    curve: str | None = None  # the published method whose (TPF, accuracy) points form one curve
    tpf_by_convention: bool = False  # a TPF of 1.0 entered by convention (vanilla decoding), not measured
    group: str | None = None  # the source's own task name (d3LLM's yaml key): AUP's y_max is taken over it


@dataclass
class Published:
    name: str
    title: str
    entries: list[PublishedEntry]
    sources: dict[str, str]
    units: dict[str, str]
    missing: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    family: str | None = None  # "llada" / "dream": which runs may stand beside it
    gpu: str | None = None
    arxiv: str | None = None
    model: str | None = None  # setup.model: the checkpoint the table's numbers are of

    def curves(self, params: AUPParams | None = None) -> list[PublishedCurve]:
        """The entries with a TPF as curves (one per method, task, length and shots), each with its AUP
        against the source's own reference: the best accuracy of any entry of that task (d3LLM's main.py
        takes it over every method of a task's block, autoregressive rows included)."""
        params = params or AUPParams()
        points: dict[tuple, list[PublishedEntry]] = {}
        for e in self.entries:
            if e.tpf is not None and e.accuracy is not None:
                key = (e.group or e.task, e.task, e.gen_length, e.num_fewshot, e.curve or e.label)
                points.setdefault(key, []).append(e)
        best: dict[str, float] = {}
        for (group, *_), entries in points.items():
            best[group] = max([best.get(group, float("-inf"))] + [e.accuracy for e in entries])
        out = []
        for (group, task, length, shots, label), entries in points.items():
            curve = PublishedCurve(self, label, task, length, shots, group, entries, best[group])
            try:
                curve.aup = aup([e.tpf for e in entries], [e.accuracy for e in entries], curve.y_max,
                                alpha=params.alpha, y_min_offset=params.y_min_offset)
            except AUPError as exc:
                curve.error = str(exc).removeprefix("AUP: ")
            out.append(curve)
        return out


@dataclass
class PublishedCurve:
    """One published method's (TPF, accuracy) points on one task, and the AUP computed from them."""

    table: Published
    label: str
    task: str
    gen_length: int | None
    num_fewshot: int | None
    group: str
    entries: list[PublishedEntry]
    y_max: float
    aup: float | None = None
    error: str | None = None

    @property
    def points(self) -> list[tuple[float, float]]:
        return sorted((e.tpf, e.accuracy) for e in self.entries)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _find(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    for folder in published_dirs():
        if (folder / f"{name_or_path}.json").is_file():
            return folder / f"{name_or_path}.json"
    raise ValueError(f"--published {name_or_path!r}: no such table; valid choices: "
                     f"{', '.join(available()) or '(none)'}, all, or a path to a JSON file")


def _curve_name(label: str) -> str:
    """d3LLM's cells are labelled ``Fast-dLLM-LLaDA (TPF 2.77)``: the method, whose points form a curve."""
    return re.sub(r"\s*\(TPF [0-9.]+\)$", "", label)


def _tpf_by_convention(e: dict[str, Any]) -> bool:
    """A TPF of exactly 1.0 on a diffusion decoding is the source's convention for vanilla decoding (d3LLM
    enters it, steps = gen_length), not a measurement; an autoregressive row's 1.0 is what it is."""
    if isinstance(e.get("tpf_by_convention"), bool):
        return e["tpf_by_convention"]
    return _num(e.get("tpf")) == 1.0 and (e.get("method") or {}).get("policy") != "autoregressive"


def _entry(path: Path, i: int, e: Any) -> PublishedEntry:
    if not isinstance(e, dict) or not isinstance(e.get("method"), dict) or "task" not in e:
        raise ValueError(f"{path}: entries[{i}] needs \"task\" and a \"method\" object")
    shots, steps = e.get("num_fewshot"), e["method"].get("steps")
    return PublishedEntry(
        task=e["task"], gen_length=e.get("gen_length"), label=e.get("label", ""), method=e["method"],
        tps=_num(e.get("tps")), speedup=_num(e.get("speedup")), accuracy=_num(e.get("accuracy")),
        source=e.get("source", ""), num_fewshot=shots if isinstance(shots, int) else None,
        model=e.get("model") if isinstance(e.get("model"), str) else None,
        steps=steps if isinstance(steps, int) else None,
        tpf=_num(e.get("tpf")), curve=e.get("curve") or _curve_name(e.get("label", "")),
        tpf_by_convention=_tpf_by_convention(e), group=e.get("source_task"),
    )


def load_published(name_or_path: str) -> Published:
    """``learn2pd``, ``fastdllm_llada``, ``fastdllm_dream`` (shipped tables) or a JSON file path."""
    from l2pd_eval.results.sidecar import read_json

    path = _find(name_or_path)
    data = read_json(path, "published-results file")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a published-results file (schema must be {SCHEMA!r})")
    entries = [_entry(path, i, e) for i, e in enumerate(data.get("entries", []))]
    paper, setup = data.get("paper") or {}, data.get("setup") or {}
    return Published(name=data.get("name", path.stem), title=paper.get("title", ""),
                     entries=entries, sources=data.get("sources", {}), units=data.get("units", {}),
                     missing=data.get("missing", []), path=path, family=data.get("family"),
                     gpu=setup.get("gpu"), arxiv=paper.get("arxiv"), model=setup.get("model"))


def family_tables(families: list[str]) -> list[str]:
    """The shipped tables the family facts list for ``families`` (``--published auto``)."""
    return [t for f in families if f in FACTS for t in FACTS[f].published if t in available()]


def load_tables(names: list[str], families: list[str] | None = None) -> list[Published]:
    """``--published`` values (repeatable); ``all`` = every shipped table; ``auto`` = those of ``families``
    (the report's runs' model families)."""
    def expand(name: str) -> list[str]:
        if name == "all":
            return available()
        if name == "auto":
            return family_tables(families or [])
        return [name]

    return [load_published(n) for n in dict.fromkeys(n for name in names for n in expand(name))]


def model_family(name: str | None) -> str | None:
    """The family a model name gives: a known checkpoint's, else a family's name marker (family facts)."""
    return family_name_of_model(name)


def cell_family(cell: ReportCell) -> str | None:
    """The recorded family of the cell's run, else the one its model name gives."""
    return cell.family or model_family(cell.model)


def cell_checkpoint(cell: ReportCell) -> str | None:
    """The released checkpoint the cell's run is: recorded, else recognised from its model name."""
    if cell.checkpoint:
        return cell.checkpoint
    known = find_checkpoint(cell.model)
    return known.hub_id if known is not None else None


def _checkpoint_fits(cell: ReportCell, entry: PublishedEntry) -> bool:
    ours = cell_checkpoint(cell)
    return entry.model is None or (ours is not None and ours.lower() == entry.model.lower())


def _params_agree(ours: Method, theirs: dict[str, Any]) -> bool:
    """No parameter of ``theirs`` contradicts ours; an end-token knob we do not carry is off (its default)."""
    mine = dict(ours.params)
    for key, value in theirs.items():
        have = mine.get(key, KNOB_DEFAULTS.get(key))
        if have is None:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        try:
            if float(have) != float(value):
                return False
        except (TypeError, ValueError):
            if have != str(value):
                return False
    return True


def _cell_fits(cell: ReportCell | None, entry: PublishedEntry, family: str | None) -> bool:
    if cell is None:
        return False
    theirs = cell_family(cell)
    if family is not None and theirs is not None and theirs != family:
        return False
    if not _checkpoint_fits(cell, entry) or (entry.steps is not None and cell.steps != entry.steps):
        return False
    return entry.num_fewshot is None or cell.n_shot is None or cell.n_shot == entry.num_fewshot


def published_method(entry: PublishedEntry) -> Method:
    """The entry's method; a published ``eotp: true`` is the authors' EoTP rule, never ``committed``."""
    return Method.from_json(entry.method, bool_true="true")


def _same_method(report: Report, entry: PublishedEntry, eotp: str | None = None) -> list[Method]:
    """Our rows of the entry's policy, cache and (``eotp``, default the entry's) EoTP rule."""
    spec = entry.method
    rule = eotp or published_method(entry).eotp
    return [
        m for m in report.methods
        if m.policy == spec.get("policy") and m.cache == spec.get("cache", "none")
        and m.eotp == rule and _params_agree(m, spec.get("params") or {})
    ]


def _committed_instead(report: Report, table: Published, entry: PublishedEntry) -> Pairing | None:
    """A run of the committed EoTP rule in a published EoTP cell's place: listed, never paired."""
    if published_method(entry).eotp != "true":
        return None
    column = (entry.task, entry.gen_length)
    if not any(report.cell(m, column) for m in _same_method(report, entry, eotp="committed")):
        return None
    return Pairing(table, entry, None, "EoTP committed-rule run vs the paper's EoTP rule (eotp=true)")


def match_method(report: Report, entry: PublishedEntry, family: str | None = None) -> Method | None:
    """Our row for a published method: same policy, cache and EoTP; parameters must not contradict.
    Among those, one whose cell for the entry's column fits (model family, shots) wins."""
    candidates = _same_method(report, entry)
    column = (entry.task, entry.gen_length)
    with_cell = [m for m in candidates if _cell_fits(report.cell(m, column), entry, family)]
    if with_cell or not report.columns:
        return (with_cell or candidates or [None])[0]
    return None


@dataclass
class Pairing:
    """One published cell and the reproduced cell beside it (``None``: not reproduced)."""

    table: Published
    entry: PublishedEntry
    ours: ReportCell | None
    unpaired: str | None = None  # why a reproduced cell of the same method/task/length was not paired

    @property
    def acc_ours(self) -> float | None:
        return None if self.ours is None or self.ours.accuracy is None else 100 * self.ours.accuracy

    @property
    def acc_diff(self) -> float | None:
        ours, theirs = self.acc_ours, self.entry.accuracy
        return None if ours is None or theirs is None else ours - theirs

    @property
    def speedup_ratio(self) -> float | None:
        ours = self.ours.speedup if self.ours is not None else None
        theirs = self.entry.speedup
        return None if ours is None or not theirs else ours / theirs


def pair_published(report: Report, tables: list[Published]) -> list[Pairing]:
    out = []
    for table in tables:
        for e in table.entries:
            method = match_method(report, e, table.family)
            column = (e.task, e.gen_length)
            if method is None:  # a cell of this method that does not fit says why it is not beside it
                method = next((m for m in _same_method(report, e) if report.cell(m, column)), None)
            cell = report.cell(method, column) if method is not None else None
            refused = _committed_instead(report, table, e) if cell is None else None
            if refused is not None:
                out.append(refused)
            elif cell is None or _cell_fits(cell, e, table.family):
                out.append(Pairing(table, e, cell))
            elif cell_family(cell) not in (None, table.family):
                out.append(Pairing(table, e, None, f"model {cell.model} is not of the {table.family} family"))
            elif not _checkpoint_fits(cell, e):
                out.append(Pairing(table, e, None, f"model {cell.model} is not {e.model}, the cell's checkpoint"))
            elif e.steps is not None and cell.steps != e.steps:
                out.append(Pairing(table, e, None, f"{cell.steps or 'gen_length'} steps vs the paper's {e.steps}"))
            else:
                out.append(Pairing(table, e, None, f"{cell.n_shot}-shot run vs {e.num_fewshot}-shot paper"))
    return out


def _shots(entry: PublishedEntry) -> str:
    return "" if entry.num_fewshot is None else str(entry.num_fewshot)


#: Documents in each task's full test split (lm-eval's tasks): the papers score all of them, so this is the
#: paper's n unless an entry says otherwise.
FULL_SPLIT = {"gsm8k": 1319, "gsm8k_cot_zeroshot": 1319, "minerva_math": 5000, "humaneval": 164,
              "humaneval_instruct": 164, "mbpp": 500, "mbpp_instruct": 500}


def _our_hardware(report: Report) -> str:
    return "CPU" if report.on_cpu else "our GPU"


def _has_tpf(tables: list[Published]) -> bool:
    return any(e.tpf is not None for t in tables for e in t.entries)


def comparison_grid(report: Report, tables: Published | list[Published]) -> tuple[list[str], list[list[str]]]:
    tables = [tables] if isinstance(tables, Published) else tables
    tpf = _has_tpf(tables)
    headers = ["Paper", "Method (paper)", "Task", "Len", "Shots", "n ours / paper", "Acc paper", "Acc ours",
               "d acc (pp)", *(["TPF paper", "TPF ours"] if tpf else []), "Speedup paper", "Speedup ours",
               "Speedup ours/paper", "TPS paper (their GPU)", f"TPS ours ({_our_hardware(report)})"]
    rows = []
    for p in pair_published(report, tables):
        e, c = p.entry, p.ours
        n_ours = "n/a" if c is None or c.n_eval is None else str(c.n_eval)
        rows.append([
            p.table.name, e.label or published_method(e).label, e.task,
            "" if e.gen_length is None else str(e.gen_length), _shots(e),
            f"{n_ours} / {FULL_SPLIT.get(e.task, '?')}",
            "missing" if e.accuracy is None else f"{e.accuracy:.2f}",
            "n/a" if p.acc_ours is None else f"{p.acc_ours:.2f}",
            "n/a" if p.acc_diff is None else f"{p.acc_diff:+.2f}",
            *([fmt_tpf(e.tpf) + ("*" if e.tpf_by_convention else ""), fmt_tpf(c.tpf) if c else "n/a"] if tpf else []),
            fmt_speedup(e.speedup), fmt_speedup(c.speedup, c.speedup_fallback) if c else "n/a",
            "n/a" if p.speedup_ratio is None else f"{p.speedup_ratio:.2f}",
            fmt_tps(e.tps), fmt_tps(c.tps, c.tps_fallback) if c else "n/a",
        ])
    return headers, rows


def same_model(ours: str | None, theirs: str | None) -> bool:
    """Is our run's model the table's checkpoint (its hub id, or a local copy in a folder of its name)?"""
    if not ours or not theirs:
        return False
    a, b = ours.rstrip("/\\"), theirs.rstrip("/\\")
    return a == b or a.endswith("/" + b) or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


def caveat_notes(report: Report, pairings: list[Pairing]) -> list[str]:
    """What a reviewer must know before reading the comparison: our sample sizes, other models."""
    lines = []
    paired = [p for p in pairings if p.ours is not None]
    if report.cells and not paired:
        lines.append("No reproduced cell matches any published cell (same task, length, method, model family and "
                     "shots): nothing is paired; the reproduced cells are in the report above.")
    limited = sorted({f"{p.entry.task} {p.entry.gen_length}: n={p.ours.n_eval}" for p in paired
                      if p.ours.limit is not None and p.ours.n_eval is not None})
    if limited:
        lines.append("Our runs used --limit (a subset of each task; the papers score the full test split): "
                     + "; ".join(limited) + ". Accuracies of small n differ from the paper's by chance (95% CI in "
                     "the report).")
    others = {}
    for p in paired:
        theirs = p.entry.model or p.table.model  # setup.model may be a description of several checkpoints
        if p.ours.model and theirs and " " not in theirs and not same_model(p.ours.model, theirs):
            others.setdefault((p.ours.model, theirs, p.table.family), None)
    for ours, theirs, family in others:
        lines.append(f"Model: ours {ours} is not the paper's {theirs}; paired on model family ({family or '?'}) "
                     "only, so the numbers side by side are of different models.")
    return lines


def comparison_notes(report: Report, tables: Published | list[Published]) -> list[str]:
    tables = [tables] if isinstance(tables, Published) else tables
    pairings = pair_published(report, tables)
    lines = [f"Not paired: {p.table.name} {p.entry.label} {p.entry.task} {p.entry.gen_length} ({p.unpaired})"
             for p in pairings if p.unpaired]
    lines += caveat_notes(report, pairings)
    for t in tables:
        where = f"arXiv {t.arxiv}, " if t.arxiv else ""
        lines.append(f"Published [{t.name}]: {t.title or t.name} ({where}{t.path.name if t.path else ''}; "
                     f"model family {t.family or '?'}; timing GPU: {t.gpu or 'not stated'}).")
        for key, text in t.sources.items():
            lines.append(f"Source [{t.name}/{key}]: {text}")
        for item in t.missing:
            lines.append(f"Missing [{t.name}]: {item.get('what', '')} ({item.get('why', '')})")
    unknown = sorted({c.model for c in report.cells.values() if c.model and cell_family(c) is None})
    if unknown:
        lines.append(f"Model family unknown for {', '.join(unknown)}: matched by method, task and length only.")
    gpu = "CPU" if report.on_cpu else report.environment.get("gpu")
    lines.append("Absolute TPS were measured on different hardware (ours: " + (str(gpu) if gpu else "not recorded")
                 + "): compare accuracy (d = ours - paper, points) and speedup (ours / paper).")
    if _has_tpf(tables):
        lines.append(f"TPF ours: {report.tpf_kind} kind (d3LLM counts as --tpf until); * = TPF 1.0 entered by the "
                     "source's convention, not measured.")
    lines.append(f"Our TPS: {report.tps_kind} kind; n/a = not reproduced; paper n = the task's full test split. "
                 "Matching rule: docs/results.md.")
    return lines


def render_comparison(report: Report, tables: Published | list[Published], fmt: str, width: int | None = None,
                      color: bool = False) -> str:
    headers, rows = comparison_grid(report, tables)
    notes = comparison_notes(report, tables)
    align = "lll" + "r" * (len(headers) - 3)
    if fmt == "markdown":
        return render.markdown_table(headers, rows, align=align) + "\n" + "".join(f"- {n}\n" for n in notes)
    if fmt == "csv":
        return render.csv_table(headers, rows)
    if fmt == "latex":
        return render.latex_table(headers, rows, align=align) + "".join(f"% {n}\n" for n in notes)
    if fmt == "console":
        return (render.console_table(headers, rows, title="published vs reproduced", width=width, color=color)
                + "".join(f"{n}\n" for n in notes))
    raise ValueError(f"--format {fmt!r} is not valid; valid choices: {', '.join(render.FORMATS)}")
