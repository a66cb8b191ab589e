"""A method is a curve, not a point: the report's cells grouped into (TPF, accuracy) curves, each scored
with d3LLM's AUP (:func:`l2pd_eval.results.metrics.aup`).

A curve is one method with its numeric parameters free (a ``threshold`` sweep, an ``accept_thres``
sweep): same policy, KV cache, EoTP rule, non-numeric parameters (a filter) and variant, in one column, of
one model and prompt format (``table.SAME_SETUP``).
Its points are the column's finished cells of that method with a TPF and an accuracy. The reference
accuracy ``y_max`` of a column is the best accuracy of any row in it (d3LLM: the best of any method on
that task), unless pinned. With the ``baseline`` anchor (d3LLM's convention, every curve of theirs starts
with the vanilla model at TPF 1.0) the baseline cell's accuracy, of the same model and prompt, is put at
TPF 1.0 first; the baseline's own curve is that one point.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from l2pd_eval.results.methods import Method
from l2pd_eval.results.metrics import AUPError, aup

if TYPE_CHECKING:
    from l2pd_eval.results.table import Column, Report, ReportCell

ANCHOR_TPF = 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def curve_key(method: Method) -> Method:
    """The method with its numeric parameters left out: the points of one curve share it."""
    return replace(method, params=tuple((k, v) for k, v in method.params if not _is_number(v)))


@dataclass
class Curve:
    column: Column
    key: Method
    cells: list[ReportCell]  # measured points, by TPF
    swept: tuple[str, ...]  # the numeric parameters that vary along it
    anchor: float | None = None  # baseline accuracy (percent) put at TPF 1.0
    y_max: float | None = None
    aup: float | None = None
    error: str | None = None  # why AUP is n/a
    is_baseline: bool = False

    @property
    def label(self) -> str:
        if len(self.cells) == 1:
            return self.cells[0].method.label
        return self.key.label + (f" over {', '.join(self.swept)}" if self.swept else "")

    @property
    def points(self) -> list[tuple[float, float]]:
        """(TPF, accuracy %) the AUP is computed over, the anchor first."""
        if self.is_baseline and self.anchor is not None:
            return [(ANCHOR_TPF, self.anchor)]  # d3LLM's vanilla row: its accuracy at TPF 1.0
        measured = [(c.tpf, 100 * c.accuracy) for c in self.cells]
        return ([(ANCHOR_TPF, self.anchor)] if self.anchor is not None else []) + measured


def _point(cell: ReportCell) -> bool:
    return cell.partial is None and cell.accuracy is not None and cell.tpf is not None and cell.tpf > 0


def column_y_max(report: Report, column: Column, pinned: dict[str, float]) -> tuple[float, str] | None:
    """The column's AUP reference accuracy (percent) and where it comes from."""
    task, length = column
    for key in (f"{task}:{length}", task):
        if key in pinned:
            return float(pinned[key]), "pinned"
    best = [(100 * c.accuracy, c.method.label) for (m, col), c in report.cells.items()
            if col == column and c.accuracy is not None and c.partial is None]
    if not best:
        return None
    value, label = max(best)
    return value, f"best: {label}"


def build_curves(report: Report, pinned: dict[str, float], notes: list[str]) -> None:
    """Fill ``report.curves``, ``report.y_max`` and each cell's ``aup``/``curve``."""
    from l2pd_eval.results.table import SAME_SETUP

    params = report.aup_params
    groups: dict[tuple, list[ReportCell]] = {}
    for (method, column), cell in report.cells.items():
        if not _point(cell):
            continue
        # one curve per method and setup (never the points of two models joined); a setting one run did
        # not record (lm-eval's python API writes no chat_template) does not split a curve
        setup = {k: cell.settings[k] for k in SAME_SETUP if k in cell.settings}
        key = next((k for k in groups if k[:2] == (column, curve_key(method))
                    and all(v == dict(k[2]).get(name, v) for name, v in setup.items())), None)
        if key is None:
            key = (column, curve_key(method), tuple(sorted(setup.items())))
        groups.setdefault(key, []).append(cell)
    for column in report.columns:
        y = column_y_max(report, column, pinned)
        if y is not None:
            report.y_max[column] = y
    for (column, key, _), cells in sorted(groups.items(), key=lambda kv: (report.columns.index(kv[0][0]),
                                                                         kv[0][1].sort_key(), str(kv[0][2]))):
        cells.sort(key=lambda c: (c.tpf, c.method.sort_key()))
        swept = tuple(k for k, _ in cells[0].method.params
                      if _is_number(_) and len({dict(c.method.params).get(k) for c in cells}) > 1)
        curve = Curve(column, key, cells, swept, is_baseline=report.is_baseline(cells[0].method))
        if params.anchor == "baseline":
            base = curve.cells[0] if curve.is_baseline else None
            anchor = base.accuracy if base is not None else cells[0].baseline_accuracy
            curve.anchor = None if anchor is None else 100 * anchor
            if curve.anchor is None:
                notes.append(f"{curve.label} ({column[0]} {column[1]}): no baseline accuracy to anchor its AUP "
                             "curve at TPF 1.0; AUP over its measured points only")
        if curve.is_baseline and len(cells) > 1:
            curve.is_baseline = False  # a sweep of the baseline policy itself: its measured points count
        y = report.y_max.get(column)
        curve.y_max = y[0] if y else None
        if curve.y_max is None or not curve.points:
            curve.error = "no reference accuracy" if curve.y_max is None else "no points"
        else:
            try:
                curve.aup = aup([p[0] for p in curve.points], [p[1] for p in curve.points], curve.y_max,
                                alpha=params.alpha, y_min_offset=params.y_min_offset)
            except AUPError as exc:
                curve.error = str(exc).removeprefix("AUP: ")
                notes.append(f"AUP n/a for {curve.label} ({column[0]} {column[1]}): {curve.error}")
        for cell in cells:
            cell.aup, cell.curve = curve.aup, curve.label
        report.curves.append(curve)

