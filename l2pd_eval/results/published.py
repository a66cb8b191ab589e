"""Published numbers (``results/published/<name>.json``) side by side with a reproduced report.

The JSON files ship inside the wheel as ``l2pd_eval/published`` (pyproject force-include) and live at
``results/published`` in a source checkout; :func:`load_published` tries both. Only numbers actually
found in a cited source are stored; cells known to exist but not found are listed under ``missing``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2pd_eval.results import render
from l2pd_eval.results.methods import Method
from l2pd_eval.results.table import Report, fmt_acc, fmt_speedup, fmt_tps

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


@dataclass
class Published:
    name: str
    title: str
    entries: list[PublishedEntry]
    sources: dict[str, str]
    units: dict[str, str]
    missing: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_published(name_or_path: str) -> Published:
    """``learn2pd`` (a shipped table) or a path to a JSON file of the same format."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix == ".json" and candidate.is_file() else None
    if path is None:
        for folder in published_dirs():
            if (folder / f"{name_or_path}.json").is_file():
                path = folder / f"{name_or_path}.json"
                break
    if path is None:
        raise ValueError(f"--published {name_or_path!r}: no such table; valid choices: {', '.join(available()) or '(none)'}"
                         " or a path to a JSON file")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a published-results file (schema must be {SCHEMA!r})")
    entries = [
        PublishedEntry(
            task=e["task"], gen_length=e.get("gen_length"), label=e.get("label", ""), method=e["method"],
            tps=_num(e.get("tps")), speedup=_num(e.get("speedup")), accuracy=_num(e.get("accuracy")),
            source=e.get("source", ""),
        )
        for e in data.get("entries", [])
    ]
    return Published(name=data.get("name", path.stem), title=(data.get("paper") or {}).get("title", ""),
                     entries=entries, sources=data.get("sources", {}), units=data.get("units", {}),
                     missing=data.get("missing", []), path=path)


def _params_agree(ours: Method, theirs: dict[str, Any]) -> bool:
    mine = dict(ours.params)
    for key, value in theirs.items():
        if key in mine:
            try:
                if float(mine[key]) != float(value):
                    return False
            except (TypeError, ValueError):
                if mine[key] != str(value):
                    return False
    return True


def match_method(report: Report, entry: PublishedEntry) -> Method | None:
    """Our row for a published method: same policy, cache and EoTP; parameters must not contradict."""
    spec = entry.method
    candidates = [
        m for m in report.methods
        if m.policy == spec.get("policy") and m.cache == spec.get("cache", "none")
        and m.eotp == bool(spec.get("eotp", False)) and _params_agree(m, spec.get("params") or {})
    ]
    with_cell = [m for m in candidates if report.cell(m, (entry.task, entry.gen_length)) is not None]
    pool = with_cell or candidates
    return pool[0] if pool else None


def _diff(ours: float | None, theirs: float | None, fmt: str) -> str:
    if ours is None or theirs is None:
        return "n/a"
    return format(ours - theirs, fmt)


def comparison_grid(report: Report, published: Published) -> tuple[list[str], list[list[str]]]:
    headers = ["Method (paper)", "Task", "Len", "TPS paper", "TPS ours", "Speedup paper", "Speedup ours",
               "d speedup", "Acc paper", "Acc ours", "d acc (pp)"]
    rows = []
    for e in published.entries:
        method = match_method(report, e)
        cell = report.cell(method, (e.task, e.gen_length)) if method is not None else None
        ours_acc = None if cell is None or cell.accuracy is None else 100 * cell.accuracy
        rows.append([
            e.label or Method.from_json(e.method).label, e.task, "" if e.gen_length is None else str(e.gen_length),
            fmt_tps(e.tps), fmt_tps(cell.tps if cell else None),
            fmt_speedup(e.speedup), fmt_speedup(cell.speedup if cell else None),
            _diff(cell.speedup if cell else None, e.speedup, "+.2f"),
            "missing" if e.accuracy is None else f"{e.accuracy:.2f}", fmt_acc(cell.accuracy if cell else None),
            _diff(ours_acc, e.accuracy, "+.2f"),
        ])
    return headers, rows


def comparison_notes(published: Published) -> list[str]:
    lines = [f"Published: {published.title or published.name} ({published.path.name if published.path else ''})."]
    for key, text in published.sources.items():
        lines.append(f"Source [{key}]: {text}")
    for item in published.missing:
        lines.append(f"Missing: {item.get('what', '')} {item.get('why', '')}".rstrip())
    lines.append("TPS depends on the GPU: compare speedups and accuracy; d = ours - paper.")
    return lines


def render_comparison(report: Report, published: Published, fmt: str, width: int | None = None,
                      color: bool = False) -> str:
    headers, rows = comparison_grid(report, published)
    notes = comparison_notes(published)
    if fmt == "markdown":
        return render.markdown_table(headers, rows, align="lllrrrrrrrr") + "\n" + "".join(f"- {n}\n" for n in notes)
    if fmt == "csv":
        return render.csv_table(headers, rows)
    if fmt == "latex":
        return render.latex_table(headers, rows, align="lllrrrrrrrr") + "".join(f"% {n}\n" for n in notes)
    if fmt == "console":
        return (render.console_table(headers, rows, title=f"published ({published.name}) vs reproduced",
                                     width=width, color=color) + "".join(f"{n}\n" for n in notes))
    raise ValueError(f"--format {fmt!r} is not valid; valid choices: {', '.join(render.FORMATS)}")
