"""What the leaderboard page shows, as plain data: one row per reproduced cell and per published cell, the
per-task plots, the published curves, and the regression check against a stored baseline.

Built from a :class:`~l2pd_eval.results.table.Report` (the stored runs), the published tables
(results/published) and optionally a baseline file: nothing is measured or downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2pd_eval.results import environment
from l2pd_eval.results.baseline import Check
from l2pd_eval.results.published import FULL_SPLIT, Published, PublishedCurve, published_method
from l2pd_eval.results.table import Report, ReportCell, column_label

#: The table's columns: (key of a row, header, kind of value: "text" or "number").
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("kind", "Kind", "text"), ("model", "Model", "text"), ("task", "Task", "text"), ("length", "Len", "number"),
    ("shots", "Shots", "number"), ("method", "Method", "text"), ("accuracy", "Acc %", "number"),
    ("n", "n", "number"), ("tpf", "TPF", "number"), ("tps", "TPS", "number"), ("speedup", "Speedup", "number"),
    ("nfe", "NFE", "number"), ("aup", "AUP", "number"), ("environment", "Environment", "text"),
    ("source", "Source", "text"),
)


@dataclass
class Plot:
    title: str
    file: str  # relative to the page's assets/plots/
    alt: str
    wide: bool = False  # a figure of several panels: the page's whole width


@dataclass
class Page:
    title: str
    rows: list[dict[str, Any]]
    plots: list[Plot] = field(default_factory=list)
    checks: list[Check] | None = None  # None: no baseline given
    baseline_file: str | None = None
    legend: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def short_path(text: str, parts: int = 2) -> str:
    """A local path by its last ``parts`` components (a hub id ``org/name`` stays whole)."""
    first = text.split(" + ")[0]
    if not first.startswith(("/", ".")) and first.count("/") <= 1:
        return first
    return "/".join(Path(first).parts[-parts:])


def run_label(name: str, root: Path | None) -> str:
    """A run by its folder under the runs' common root and its date: ``l2pd_demo/baseline, 2026-12-03 11:44``
    (lm-eval's model sub-folder left out; the full paths are in the cell's tooltip)."""
    first = Path(name.split(" + ")[0]).resolve()
    folder = first.parent
    if root is not None:
        try:
            folder = folder.relative_to(root)
        except ValueError:
            pass
    parts = [p for p in folder.parts if "__" not in p] or list(folder.parts[-1:])
    stamp = first.stem.split("_", 1)[-1]
    when = f"{stamp[:10]} {stamp[11:13]}:{stamp[14:16]}" if len(stamp) >= 16 and stamp[10] == "T" else first.name
    return f"{'/'.join(parts[-3:]) or '.'}, {when}"


def _root(names: list[str]) -> Path | None:
    import os

    paths = [str(Path(n.split(" + ")[0]).resolve().parent) for n in names]
    if not paths:
        return None
    common = os.path.commonpath(paths) if len(paths) > 1 else str(Path(paths[0]).parent)
    return Path(common)


def reproduced_row(report: Report, c: ReportCell, root: Path | None = None) -> dict[str, Any]:
    ci = c.accuracy_ci
    acc = None if c.accuracy is None else 100 * c.accuracy
    return {
        "kind": "reproduced", "model": short_path(c.model) if c.model else "?", "model_full": c.model or "?",
        "task": c.column[0], "length": c.column[1],
        "shots": c.n_shot, "method": c.method.label + (" (baseline)" if report.is_baseline(c.method) else ""),
        "policy": c.method.policy, "accuracy": _round(acc, 2),
        "accuracy_text": "n/a" if acc is None else f"{acc:.2f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""),
        "n": c.n_eval if c.n_eval is not None else (c.n_timing or None),
        "tpf": _round(c.tpf, 2), "tpf_note": None, "tps": _round(c.tps, 2), "speedup": _round(c.speedup, 2),
        "nfe": _round(c.nfe_mean, 1), "aup": _round(c.aup, 1),
        "environment": environment.summary(c.environment) if c.environment else "not recorded",
        "environment_full": environment.full(c.environment) if c.environment else "no sidecar",
        "source": run_label(c.run, root), "source_full": c.run, "partial": c.partial, "curve": c.curve,
        "filter": c.filter_name,
        "limit": c.limit,
    }


def _published_aups(tables: list[Published], report: Report) -> dict[int, PublishedCurve]:
    out = {}
    for table in tables:
        for curve in table.curves(report.aup_params):
            for e in curve.entries:
                out[id(e)] = curve
    return out


def published_rows(report: Report, tables: list[Published]) -> list[dict[str, Any]]:
    curves = _published_aups(tables, report)
    rows = []
    for t in tables:
        for e in t.entries:
            curve = curves.get(id(e))
            method = e.label or published_method(e).label
            rows.append({
                "kind": f"published: {t.name}", "model": e.model or t.model or "?",
                "model_full": e.model or t.model or "?", "task": e.task,
                "length": e.gen_length, "shots": e.num_fewshot,
                "method": method, "policy": e.method.get("policy"),
                "accuracy": e.accuracy, "accuracy_text": "missing" if e.accuracy is None else f"{e.accuracy:.2f}",
                "n": FULL_SPLIT.get(e.task), "tpf": e.tpf,
                "tpf_note": "TPF 1.0 by the source's convention, not measured" if e.tpf_by_convention else None,
                "tps": e.tps, "speedup": e.speedup, "nfe": None,
                "aup": None if curve is None or curve.aup is None else round(curve.aup, 1),
                "environment": f"their hardware: {t.gpu or 'not stated'}",
                "environment_full": f"timing GPU as the paper states it: {t.gpu or 'not stated'}",
                "source": f"{t.name}/{e.source}", "source_full": t.sources.get(e.source, e.source), "partial": None,
                "curve": curve.label if curve else None, "filter": None, "limit": None,
            })
    return rows


def build_page(report: Report, tables: list[Published], title: str, checks: list[Check] | None = None,
               baseline_file: str | None = None, runs: list[str] | None = None) -> Page:
    from l2pd_eval.results.text import legend

    cells = [c for m in report.methods for col in report.columns if (c := report.cell(m, col)) is not None]
    root = _root([c.run for c in cells])
    rows = [reproduced_row(report, c, root) for c in cells]
    rows += published_rows(report, tables)
    sources = []
    for t in tables:
        where = f"arXiv {t.arxiv}" if t.arxiv else ""
        sources.append(f"{t.name}: {t.title or t.name} ({where}; {t.path.name if t.path else ''}; model family "
                       f"{t.family or '?'}; timing GPU: {t.gpu or 'not stated'})")
    return Page(title=title, rows=rows, checks=checks, baseline_file=baseline_file,
                legend=legend(report, grid=False)[:-1], notes=list(report.notes), sources=sources,
                runs=list(runs or []))


def plot_files(report: Report, tables: list[Published], folder: Path) -> list[Plot]:
    """The page's SVG figures, written into ``folder``: per column a speed/accuracy scatter and an accuracy
    vs TPF curve plot (with the published curves of the same task beside ours), then each published
    table's curves on the tasks no run of ours covers."""
    from l2pd_eval.results.plot import plot_curves, plot_published, plot_tradeoff

    plots = []
    for i, column in enumerate(report.columns):
        name = column_label(column)
        for kind, draw in (("curves", lambda p, c=column: plot_curves(report, p, published=tables, columns=[c])),
                           ("tradeoff", lambda p, c=column: plot_tradeoff(report, p, columns=[c]))):
            file = f"{i:02d}_{kind}.svg"
            try:
                draw(folder / file)
            except ValueError:
                continue  # nothing of that kind to draw in this column (no timing, no accuracy)
            what = "accuracy vs TPF per method curve, AUP in the legend" if kind == "curves" else \
                "speed vs accuracy, every point labelled"
            plots.append(Plot(f"{name}: {what}", file, f"{name} {kind}"))
    covered = set(report.columns)
    for t in tables:
        curves = [c for c in t.curves(report.aup_params) if (c.task, c.gen_length) not in covered]
        if curves:
            file = f"published_{t.name}.svg"
            plot_published(t, curves, folder / file)
            plots.append(Plot(f"{t.name}: published accuracy vs TPF curves (AUP against the source's own y_max)",
                              file, f"{t.name} published curves", wide=True))
    return plots
