"""A report as text: console, Markdown, LaTeX and CSV.

Markdown and LaTeX carry the papers' grid (rows = methods, columns = task x length, cells = TPS / speedup /
accuracy) and, below it, one line per cell with what a grid has no room for: n, the accuracy's 95%
interval, TPF, NFE and AUP. The console shows that per-cell table (readable at any width); CSV is one row
per cell with every field. Nothing here touches the file system, so golden tests pin the exact text.
"""

from __future__ import annotations

import csv
import io

from l2pd_eval.results import environment, render
from l2pd_eval.results.metrics import CI_NAME, TPF_DEFINITIONS
from l2pd_eval.results.table import (
    FALLBACK_KIND,
    FALLBACK_MARK,
    TPS_DEFINITIONS,
    Report,
    ReportCell,
    column_label,
    fmt_acc,
    fmt_aup,
    fmt_ci,
    fmt_speedup,
    fmt_tpf,
    fmt_tps,
)

AUP_SOURCE = "d3LLM, arXiv 2601.07568, AUP_leaderboard/aup_utils.py get_aup"


def row_label(report: Report, method) -> str:
    return method.label + (" (baseline)" if report.is_baseline(method) else "")


def _grid(report: Report) -> tuple[list[str], list[list[render.CellValue]]]:
    headers = ["Method"] + [column_label(c) for c in report.columns]
    rows: list[list[render.CellValue]] = []
    for method in report.methods:
        row: list[render.CellValue] = [row_label(report, method)]
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


def _n(c: ReportCell) -> str:
    if c.n_eval is None:
        return f"{c.n_timing} timed" if c.n_timing else "n/a"
    return str(c.n_eval) + (f" ({c.n_timing} timed)" if c.n_timing and c.n_timing != c.n_eval else "")


DETAIL_HEADERS = ["Task", "Len", "Method", "n", "Acc %", "95% CI", "TPS", "Speedup", "TPF", "NFE", "AUP"]
DETAIL_ALIGN = "lrlrrrrrrrr"


def _details(report: Report) -> list[list[render.CellValue]]:
    rows: list[list[render.CellValue]] = []
    for column in report.columns:
        for method in report.methods:
            c = report.cell(method, column)
            if c is None:
                continue
            acc = [(fmt_acc(c.accuracy), c.best_acc)] + ([(c.partial, False)] if c.partial else [])
            rows.append([column[0], "" if column[1] is None else str(column[1]), row_label(report, method), _n(c),
                         acc, fmt_ci(c.accuracy_ci), [(fmt_tps(c.tps, c.tps_fallback), c.best_tps)],
                         [(fmt_speedup(c.speedup, c.speedup_fallback), c.best_tps)], fmt_tpf(c.tpf),
                         "n/a" if c.nfe_mean is None else f"{c.nfe_mean:.1f}", fmt_aup(c.aup)])
    return rows


CURVE_HEADERS = ["Task", "Len", "Curve (AUP)", "Points", "TPF range", "AUP", "y_max"]


def _curves(report: Report) -> list[list[str]]:
    """The sweeps (curves of more than one measured point); single points have their AUP in the cells."""
    rows = []
    for curve in report.curves:
        if len(curve.cells) < 2:
            continue
        tpfs = [c.tpf for c in curve.cells]
        rows.append([curve.column[0], "" if curve.column[1] is None else str(curve.column[1]), curve.label,
                     str(len(curve.points)), f"{min(tpfs):.2f}-{max(tpfs):.2f}",
                     fmt_aup(curve.aup) if curve.aup is not None else f"n/a ({curve.error})",
                     "n/a" if curve.y_max is None else f"{curve.y_max:.2f}"])
    return rows


def aup_legend(report: Report) -> str:
    y = "; ".join(f"{column_label(col)} {v:.2f}" + (" (pinned)" if src == "pinned" else "")
                  for col, (v, src) in report.y_max.items())
    return (f"AUP ({AUP_SOURCE}) over TPF ({report.tpf_kind}) and accuracy (%): {report.aup_params.describe()}; "
            f"curve = one method over its numeric parameters in a column; y_max = the best accuracy of any row "
            f"in the column unless pinned: {y or 'n/a'}.")


def legend(report: Report, grid: bool = True) -> list[str]:
    base = report.baseline.base.label if report.baseline else report.baseline_spec
    lines = [f"Cells: TPS / speedup vs {base} / accuracy (%)." if grid else f"Speedup vs {base}.",
             TPS_DEFINITIONS[report.tps_kind] + ".", TPF_DEFINITIONS[report.tpf_kind] + "; NFE = mean forward "
             "passes per answer.",
             f"n = documents lm-eval scored; 95% CI = {CI_NAME} of the accuracy over them.", aup_legend(report)]
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
        lines.append("Setup: " + ", ".join(f"{environment.LABELS.get(k, k)}={v}" for k, v in report.environment.items())
                     + ".")
    lines.append("Best TPS/speedup and best accuracy per column in bold.")
    return lines


def render_markdown(report: Report) -> str:
    headers, rows = _grid(report)
    out = render.markdown_table(headers, rows) + "\n" + render.markdown_table(DETAIL_HEADERS, _details(report),
                                                                              align=DETAIL_ALIGN)
    curves = _curves(report)
    if curves:
        out += "\n" + render.markdown_table(CURVE_HEADERS, curves, align="lrlrrrr")
    out += "\n" + "\n".join(legend(report)) + "\n"
    if report.notes:
        out += "\nNotes:\n" + "".join(f"- {n}\n" for n in report.notes)
    return out


def render_latex(report: Report) -> str:
    headers, rows = _grid(report)
    out = "% Generated by l2pd-eval report\n" + "".join(f"% {line}\n" for line in legend(report))
    out += render.latex_table(headers, rows)
    out += render.latex_table(DETAIL_HEADERS, _details(report), align=DETAIL_ALIGN)
    curves = _curves(report)
    if curves:
        out += render.latex_table(CURVE_HEADERS, curves, align="lrlrrrr")
    out += "".join(f"% Note: {n}\n" for n in report.notes)
    return out


def render_console(report: Report, width: int | None = None, color: bool = False) -> str:
    lines = legend(report, grid=False)
    if not color:
        lines[-1] = "Best TPS/speedup and best accuracy per column marked with *."
    out = render.console_table(DETAIL_HEADERS, _details(report), title="l2pd-eval report", width=width, color=color,
                               align=DETAIL_ALIGN)
    curves = _curves(report)
    if curves:
        out += render.console_table(CURVE_HEADERS, curves, title="curves", width=width, color=color, align="lrlrrrr")
    out += "\n".join(lines) + "\n"
    if report.notes:
        out += "Notes:\n" + "".join(f"  - {n}\n" for n in report.notes)
    return out


CSV_COLUMNS = (
    "method", "policy", "params", "cache", "eotp", "variant", "task", "gen_length", "tps", "tps_fallback",
    "tps_paper", "tps_mean", "tps_total", "speedup", "accuracy_pct", "accuracy_ci_low_pct", "accuracy_ci_high_pct",
    "ci", "metric", "nfe_mean", "tpf", "tpf_kind", "tpf_answer", "tpf_until", "tpf_committed", "tokens_per_forward",
    "aup", "aup_curve", "aup_y_max", "aup_alpha", "aup_y_min_offset", "aup_anchor", "n_timing", "n_eval", "n_shot",
    "limit", "best_tps", "best_acc", "baseline", "partial", "model",
    *(f"env_{k}" for k, _ in environment.STAMP_KEYS),
)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _csv_row(report: Report, c: ReportCell) -> list:
    method, column = c.method, c.column
    y = report.y_max.get(column)
    ci = c.accuracy_ci
    return [
        method.label, method.policy, ";".join(f"{k}={v}" for k, v in method.params), method.cache, method.eotp,
        ";".join(f"{k}={v}" for k, v in method.variant), column[0], "" if column[1] is None else column[1],
        _num(c.tps), str(c.tps_fallback).lower(), _num(c.tps_paper), _num(c.tps_mean), _num(c.tps_total),
        _num(c.speedup), _num(None if c.accuracy is None else 100 * c.accuracy),
        _num(None if ci is None else 100 * ci[0], 2), _num(None if ci is None else 100 * ci[1], 2),
        "wilson95" if ci else "", c.metric or "", _num(c.nfe_mean, 2), _num(c.tpf), report.tpf_kind,
        _num(c.tpf_by_kind.get("answer")), _num(c.tpf_by_kind.get("until")), _num(c.tpf_by_kind.get("committed")),
        _num(c.tokens_per_forward), _num(c.aup, 2), c.curve or "", _num(y[0] if y else None, 2),
        f"{report.aup_params.alpha:g}", f"{report.aup_params.y_min_offset:g}", report.aup_params.anchor,
        c.n_timing, "" if c.n_eval is None else c.n_eval, "" if c.n_shot is None else c.n_shot,
        "" if c.limit is None else f"{c.limit:g}", str(c.best_tps).lower(), str(c.best_acc).lower(),
        str(report.is_baseline(method)).lower(), c.partial or "", c.model or "",
        *(c.environment.get(k) or "" for k, _ in environment.STAMP_KEYS),
    ]


def render_csv(report: Report) -> str:
    """Long format (one row per method x task x length), full precision for further analysis."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for method in report.methods:
        for column in report.columns:
            c = report.cell(method, column)
            if c is not None:
                writer.writerow(_csv_row(report, c))
    return buf.getvalue()


RENDERERS = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}


def render_report(report: Report, fmt: str, width: int | None = None, color: bool = False) -> str:
    if fmt == "console":
        return render_console(report, width=width, color=color)
    if fmt not in RENDERERS:
        raise ValueError(f"--format {fmt!r} is not valid; valid choices: {', '.join(render.FORMATS)}")
    return RENDERERS[fmt](report)
