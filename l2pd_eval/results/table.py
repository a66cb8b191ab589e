"""The paper's results table: rows = methods, columns = task x generation length,
cells = TPS / speedup / accuracy; speedup against the baseline method in the same column.

:func:`build_report` turns runs into a :class:`Report` (data only); the ``render_*`` functions turn a
report into text and never touch the file system, so golden tests pin their exact output.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from l2pd_eval.results import render
from l2pd_eval.results.columns import column_sort_key
from l2pd_eval.results.methods import Method, method_matches, parse_method_spec
from l2pd_eval.results.runs import Run, TaskResult
from l2pd_eval.results.sidecar import TPS_KINDS

Column = tuple[str, "int | None"]
DEFAULT_BASELINE = "policy=low_confidence,cache=none,eotp=false"

TPS_DEFINITIONS = {
    "paper": "TPS (papers') = answer tokens cut at the stop strings / wall time of the whole generate_until "
             "loop, summed over ranks, as Learn2PD and Fast-dLLM report it",
    "mean": "TPS (decode, per-sample mean) = mean over samples of (answer tokens / decode seconds)",
    "total": "TPS (decode, sum/sum) = total answer tokens / total decode seconds",
}
# Old sidecars lack the papers' fields: their cells show this kind instead, marked FALLBACK_MARK.
FALLBACK_KIND = "total"
FALLBACK_MARK = "†"


@dataclass
class ReportCell:
    method: Method
    column: Column
    run: str
    tps: float | None = None  # the report's TPS kind (or FALLBACK_KIND when ``tps_fallback``)
    tps_fallback: bool = False  # the run could not give the report's kind; tps is FALLBACK_KIND
    speedup_fallback: bool = False  # this cell's or the baseline's TPS is FALLBACK_KIND
    partial: str | None = None  # "partial: 37/200" for a run whose sidecar says it did not finish
    tps_paper: float | None = None
    tps_mean: float | None = None
    tps_total: float | None = None
    speedup: float | None = None
    accuracy: float | None = None  # fraction 0..1
    metric: str | None = None
    nfe_mean: float | None = None
    tokens_per_forward: float | None = None
    n_timing: int = 0
    n_eval: int | None = None
    model: str | None = None
    family: str | None = None  # the run's model family, as its sidecar recorded it
    checkpoint: str | None = None  # the released checkpoint the run's model is (family_facts), if recognised
    steps: int | None = None  # the run's fixed step count; None: steps = gen_length
    n_shot: int | None = None
    best_tps: bool = False
    best_acc: bool = False


@dataclass
class Report:
    tps_kind: str
    methods: list[Method]
    columns: list[Column]
    cells: dict[tuple[Method, Column], ReportCell]
    baseline: Method | None
    baseline_spec: str
    notes: list[str] = field(default_factory=list)
    environment: dict[str, object] = field(default_factory=dict)  # GPU, dtype ... of the runs (if all agree)

    def cell(self, method: Method, column: Column) -> ReportCell | None:
        return self.cells.get((method, column))

    def metrics(self, column: Column) -> list[str]:
        return sorted({c.metric for (m, col), c in self.cells.items() if col == column and c.metric})


def column_label(column: Column) -> str:
    task, length = column
    return f"{task} {length}" if length is not None else f"{task} (len ?)"


def _cell_quality(cell: ReportCell, started: float) -> tuple:
    return (cell.partial is None, cell.accuracy is not None, cell.tps is not None, started)


def _cell_tps(t, kind: str) -> tuple[float | None, bool]:
    """The cell's TPS of ``kind``; an old sidecar without the papers' fields gives the decode-only sum/sum,
    flagged, so a reader never mistakes it for the papers' figure."""
    if t is None:
        return None, False
    value = t.tps(kind)
    if value is None and kind == "paper" and t.paper_missing and t.count:
        return t.tps(FALLBACK_KIND), True
    return value, False


def _report_cell(run: Run, method: Method, result: TaskResult, tps_kind: str, notes: list[str]) -> ReportCell:
    """One run's result on one column as a table cell (no speedup yet); what is missing goes to ``notes``."""
    column, t = (result.task, result.length), result.timing
    tps, fallback = _cell_tps(t, tps_kind)
    if fallback:
        notes.append(f"{run.name}: TPS (papers') n/a, {t.paper_missing}; its cells show TPS (decode, "
                     f"sum/sum), marked {FALLBACK_MARK}")
    if run.partial:
        notes.append(f"{run.name}: {run.partial} requests (the run was interrupted or is still going)")
    if result.metric is None and run.results is not None:
        notes.append(f"{column_label(column)}: {result.source_task} has no metric in {run.results.path}")
    return ReportCell(
        method=method, column=column, run=run.name,
        tps=tps, tps_fallback=fallback, partial=run.partial, tps_paper=t.tps_paper if t else None,
        tps_mean=t.tps_mean if t else None, tps_total=t.tps_total if t else None,
        accuracy=result.accuracy, metric=result.metric,
        nfe_mean=t.nfe_mean if t else None,
        tokens_per_forward=t.tokens_per_forward_mean if t else None,
        n_timing=t.count if t else 0, n_eval=result.n_eval, model=run.model, family=run.family,
        checkpoint=run.checkpoint, steps=run.steps, n_shot=result.n_shot,
    )


def _collect_cells(runs: list[Run], tps_kind: str, metric_overrides: dict[str, str] | None,
                   notes: list[str]) -> dict[tuple[Method, Column], ReportCell]:
    """Every run's cells; where several runs fill one cell, the best (finished, with accuracy and TPS,
    then the later one) is kept and a note says so."""
    cells: dict[tuple[Method, Column], ReportCell] = {}
    quality: dict[tuple[Method, Column], tuple] = {}
    for run in runs:
        method = run.method
        run_results = run.task_results(metric_overrides)
        notes.extend(run.notes)
        for result in run_results:
            cell = _report_cell(run, method, result, tps_kind, notes)
            key = (method, cell.column)
            q = _cell_quality(cell, run.started_at)
            if key in cells:
                keep = cell if q >= quality[key] else cells[key]  # ties: the later run
                notes.append(f"{column_label(cell.column)} / {method.label}: several runs, using {keep.run}")
                if keep is cells[key]:
                    continue
            cells[key] = cell
            quality[key] = q
    return cells


def _choose_baseline(methods: list[Method], spec: str, notes: list[str]) -> Method | None:
    matching = [m for m in methods if m.label == spec]  # a row label copied from a table
    if not matching:
        fields = parse_method_spec(spec)
        matching = [m for m in methods if method_matches(m, fields)]
    baseline = matching[0] if matching else None
    if baseline is None:
        notes.append(f"no run matches the baseline method ({spec}): every speedup is n/a")
    elif len(matching) > 1:
        notes.append(f"several methods match the baseline ({spec}); using {baseline.label}")
    return baseline


def _fill_column(cells: dict[tuple[Method, Column], ReportCell], column: Column, baseline: Method | None,
                 notes: list[str]) -> None:
    """Speedups against the baseline's cell of ``column``, and the column's best TPS and accuracy."""
    base_cell = cells.get((baseline, column)) if baseline is not None else None
    base_tps = base_cell.tps if base_cell is not None else None
    if baseline is not None and not base_tps:
        notes.append(f"{column_label(column)}: no baseline ({baseline.label}) timing, speedup n/a")
    column_cells = [c for (m, col), c in cells.items() if col == column]
    for c in column_cells:
        if base_tps and c.tps is not None:
            c.speedup = c.tps / base_tps
            c.speedup_fallback = c.tps_fallback or base_cell.tps_fallback
            if c.n_timing != base_cell.n_timing:  # e.g. an unfinished run: not the same questions
                notes.append(f"{column_label(column)} / {c.method.label}: {c.n_timing} timed samples vs "
                             f"{base_cell.n_timing} for the baseline")
    tps_values = [c.tps for c in column_cells if c.tps is not None]
    acc_values = [c.accuracy for c in column_cells if c.accuracy is not None]
    for c in column_cells:
        c.best_tps = len(tps_values) > 1 and c.tps is not None and c.tps == max(tps_values)
        c.best_acc = len(acc_values) > 1 and c.accuracy is not None and c.accuracy == max(acc_values)


def build_report(
    runs: list[Run],
    tps_kind: str = "paper",
    metric_overrides: dict[str, str] | None = None,
    baseline_spec: str | None = None,
) -> Report:
    """The table of ``runs``: one row per method, one column per (task, length), speedups against the
    baseline method (``baseline_spec``, default low_confidence without cache or EoTP) in each column."""
    if tps_kind not in TPS_KINDS:
        raise ValueError(f"--tps {tps_kind!r} is not valid; valid choices: {', '.join(TPS_KINDS)}")
    notes: list[str] = []
    cells = _collect_cells(runs, tps_kind, metric_overrides, notes)
    methods = sorted({m for m, _ in cells}, key=Method.sort_key)
    columns = sorted({col for _, col in cells}, key=column_sort_key)
    spec = baseline_spec or DEFAULT_BASELINE
    baseline = _choose_baseline(methods, spec, notes)
    for column in columns:
        _fill_column(cells, column, baseline, notes)
    return Report(tps_kind=tps_kind, methods=methods, columns=columns, cells=cells, baseline=baseline,
                  baseline_spec=spec, notes=_dedupe(notes), environment=_common_environment(runs))


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _common_environment(runs: list[Run]) -> dict[str, object]:
    """Facts of the runs with a sidecar, "mixed" where they differ (TPS compares only on one setup)."""
    found: dict[str, list] = {}
    for run in runs:
        m = run.manifest
        if not m:
            continue
        env = m.get("environment") or {}
        for key, value in (("model", m.get("model")), ("dtype", m.get("dtype")), ("batch_size", m.get("batch_size")),
                           ("gpu", env.get("gpu")), ("torch", env.get("torch")),
                           ("transformers", env.get("transformers")), ("lm_eval", env.get("lm_eval"))):
            found.setdefault(key, []).append(value)
    out: dict[str, object] = {}
    for key, values in found.items():
        out[key] = values[0] if all(v == values[0] for v in values) else "mixed"
    return out


# --------------------------------------------------------------------------------------------------
# Formatting


def fmt_tps(value: float | None, fallback: bool = False) -> str:
    return "n/a" if value is None else f"{value:.2f}{FALLBACK_MARK if fallback else ''}"


def fmt_speedup(value: float | None, fallback: bool = False) -> str:
    return "n/a" if value is None else f"{value:.2f}x{FALLBACK_MARK if fallback else ''}"


def fmt_acc(value: float | None) -> str:
    """Accuracy fraction as percent with two decimals (the papers' 79.83)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def _grid(report: Report) -> tuple[list[str], list[list[render.CellValue]]]:
    headers = ["Method"] + [column_label(c) for c in report.columns]
    rows: list[list[render.CellValue]] = []
    for method in report.methods:
        label = method.label + (" (baseline)" if method == report.baseline else "")
        row: list[render.CellValue] = [label]
        for column in report.columns:
            c = report.cell(method, column)
            if c is None:
                row.append("-")
                continue
            parts = [(fmt_tps(c.tps, c.tps_fallback), c.best_tps), (fmt_speedup(c.speedup, c.speedup_fallback), c.best_tps),
                     (fmt_acc(c.accuracy), c.best_acc)]
            row.append(parts + [(c.partial, False)] if c.partial else parts)
        rows.append(row)
    return headers, rows


def legend(report: Report) -> list[str]:
    base = report.baseline.label if report.baseline else report.baseline_spec
    lines = [f"Cells: TPS / speedup vs {base} / accuracy (%). {TPS_DEFINITIONS[report.tps_kind]}."]
    if any(c.tps_fallback for c in report.cells.values()):
        lines.append(f"{FALLBACK_MARK} TPS (papers') not recorded by that run's sidecar: "
                     f"{TPS_DEFINITIONS[FALLBACK_KIND]} shown instead (also in its speedup).")
    if any(c.partial for c in report.cells.values()):
        lines.append("partial: n/m = the run stopped (or is still going) after n of its m requests.")
    metrics = []
    for column in report.columns:
        names = report.metrics(column)
        if names:
            metrics.append(f"{column_label(column)}: {', '.join(names)}")
    if metrics:
        lines.append("Accuracy metric: " + "; ".join(metrics) + ".")
    if report.environment:
        lines.append("Setup: " + ", ".join(f"{k}={v}" for k, v in report.environment.items()) + ".")
    lines.append("Best TPS/speedup and best accuracy per column in bold.")
    return lines


def render_markdown(report: Report) -> str:
    headers, rows = _grid(report)
    out = render.markdown_table(headers, rows) + "\n" + "\n".join(legend(report)) + "\n"
    if report.notes:
        out += "\nNotes:\n" + "".join(f"- {n}\n" for n in report.notes)
    return out


def render_latex(report: Report) -> str:
    headers, rows = _grid(report)
    out = "% Generated by l2pd-eval report\n" + "".join(f"% {line}\n" for line in legend(report))
    out += render.latex_table(headers, rows)
    out += "".join(f"% Note: {n}\n" for n in report.notes)
    return out


def render_console(report: Report, width: int | None = None, color: bool = False) -> str:
    headers, rows = _grid(report)
    lines = legend(report)
    if not color:
        lines[-1] = "Best TPS/speedup and best accuracy per column marked with *."
    out = render.console_table(headers, rows, title="l2pd-eval report", width=width, color=color)
    out += "\n".join(lines) + "\n"
    if report.notes:
        out += "Notes:\n" + "".join(f"  - {n}\n" for n in report.notes)
    return out


CSV_COLUMNS = (
    "method", "policy", "params", "cache", "eotp", "task", "gen_length", "tps", "tps_fallback", "tps_paper",
    "tps_mean", "tps_total",
    "speedup", "accuracy_pct", "metric", "nfe_mean", "tokens_per_forward", "n_timing", "n_eval",
    "best_tps", "best_acc", "baseline", "partial",
)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_csv(report: Report) -> str:
    """Long format (one row per method x task x length), full precision for further analysis."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for method in report.methods:
        for column in report.columns:
            c = report.cell(method, column)
            if c is None:
                continue
            writer.writerow([
                method.label, method.policy, ";".join(f"{k}={v}" for k, v in method.params), method.cache,
                method.eotp, column[0], "" if column[1] is None else column[1],
                _num(c.tps), str(c.tps_fallback).lower(), _num(c.tps_paper), _num(c.tps_mean), _num(c.tps_total),
                _num(c.speedup),
                _num(None if c.accuracy is None else 100 * c.accuracy), c.metric or "",
                _num(c.nfe_mean, 2), _num(c.tokens_per_forward), c.n_timing, "" if c.n_eval is None else c.n_eval,
                str(c.best_tps).lower(), str(c.best_acc).lower(), str(method == report.baseline).lower(),
                c.partial or "",
            ])
    return buf.getvalue()


RENDERERS = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}


def render_report(report: Report, fmt: str, width: int | None = None, color: bool = False) -> str:
    if fmt == "console":
        return render_console(report, width=width, color=color)
    if fmt not in RENDERERS:
        raise ValueError(f"--format {fmt!r} is not valid; valid choices: {', '.join(render.FORMATS)}")
    return RENDERERS[fmt](report)
