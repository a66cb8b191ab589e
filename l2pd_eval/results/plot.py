"""Figures of a report (matplotlib, Agg backend: no display needed; PNG or SVG by the file's suffix).

* :func:`plot_tradeoff`: speed against accuracy, one panel per column (task x length), every point labelled
  with its method, the panel titled with n, the axis naming the TPS kind; a footnote names each Learn2PD
  filter by its own manifest.
* :func:`plot_curves`: accuracy against TPF (or TPS) per method curve with its AUP in the legend, and the
  published (TPF, accuracy) curves of the same task dashed beside them.

One colour per method across panels. SVG text stays text (``svg.fonttype: none``) so a page can be
searched and a test can read the labels.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

from l2pd_eval.results.methods import Method
from l2pd_eval.results.table import Column, Report, ReportCell, column_label

TPS_AXIS = {"paper": "TPS (papers': tokens / generate_until wall time)", "mean": "TPS (decode, per-sample mean)",
            "total": "TPS (decode, sum/sum)"}
PANELS_PER_ROW = 3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "l2pd-eval", "font.size": 9})
    return plt


def short_label(method: Method, report: Report) -> str:
    """A point's label: the row label with only the parameters that tell rows of its policy apart (the
    filter is named once, in the footnote)."""
    same_policy = [m for m in report.methods if m.policy == method.policy]
    kept = tuple((k, v) for k, v in method.params
                 if k != "filter" and len({dict(m.params).get(k) for m in same_policy}) > 1)
    return replace(method, params=kept, shown=None).label


def _n_text(cells: list[ReportCell]) -> str:
    ns = sorted({c.n_eval if c.n_eval is not None else c.n_timing for c in cells})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _footnote(report: Report) -> str:
    names = sorted({(dict(c.method.params).get("filter"), c.filter_name) for c in report.cells.values()
                    if c.filter_name and dict(c.method.params).get("filter")})
    return "; ".join(f"learn2pd filter={path} is {name} (from its filter.json)" for path, name in names)


#: Where a point's label may go (points of text from the point), tried in order until it overlaps nothing.
LABEL_OFFSETS = ((6, 5), (6, -13), (-6, 5), (-6, -13), (6, 17), (6, -25), (-6, 17), (-6, -25), (6, 29), (6, -37))


def _label_points(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Label each point (x, y, text, colour) where its text overlaps no earlier label nor the axes' edge;
    the last offset tried is kept when none is free."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    for x, y, text, color in sorted(points, key=lambda p: (p[0], -p[1])):
        for dx, dy in LABEL_OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7.5, color=color,
                                ha="left" if dx > 0 else "right")
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
            if (dx, dy) != LABEL_OFFSETS[-1]:
                label.remove()
        placed.append(box)


def _layout(plt, panels: int, height: float = 4.4):
    """Up to three panels a row, each wider when there are fewer (a lone panel gets the whole width)."""
    cols = min(PANELS_PER_ROW, max(panels, 1))
    rows = math.ceil(panels / cols)
    width = {1: 9.0, 2: 6.8}.get(cols, 5.6)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _save(fig, plt, out: str | os.PathLike, note: str) -> Path:
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, bbox_inches="tight", dpi=120, metadata={"Date": None} if target.suffix == ".svg" else None)
    plt.close(fig)
    return target


def _colors(plt, report: Report) -> dict[Method, str]:
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: palette[i % len(palette)] for i, m in enumerate(report.methods)}


def plot_tradeoff(report: Report, out: str | os.PathLike, x: str = "auto",
                  columns: list[Column] | None = None) -> tuple[Path, str]:
    """Write the figure to ``out``; returns the path and the x axis used. ``x``: ``speedup``, ``tps``, or
    ``auto`` (speedup when any cell has one, else TPS: no baseline run). ``columns``: a subset."""
    if x not in ("auto", "speedup", "tps"):
        raise ValueError(f"plot x axis {x!r} is not valid; valid choices: auto, speedup, tps")
    wanted = columns or report.columns
    cells = [c for c in report.cells.values() if c.accuracy is not None and c.column in wanted]
    if x == "auto":
        x = "speedup" if any(c.speedup is not None for c in cells) else "tps"
    value = (lambda c: c.speedup) if x == "speedup" else (lambda c: c.tps)
    shown = [col for col in wanted if any(c.column == col and value(c) is not None for c in cells)]
    if not shown:
        raise ValueError(f"nothing to plot: no cell has both accuracy and {'a speedup' if x == 'speedup' else 'TPS'}")
    plt = _pyplot()
    color = _colors(plt, report)
    fig, axes = _layout(plt, len(shown))
    base = report.baseline.base.label if report.baseline else report.baseline_spec
    for ax, column in zip(axes, shown, strict=True):
        points = [c for c in cells if c.column == column and value(c) is not None]
        for c in points:
            ax.scatter(value(c), 100 * c.accuracy, color=color[c.method], s=46, zorder=3)
        ax.set_title(f"{column_label(column)} ({_n_text(points)})")
        ax.set_xlabel(f"speedup vs {base} (from {TPS_AXIS[report.tps_kind]})" if x == "speedup"
                      else TPS_AXIS[report.tps_kind])
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.12)
        if x == "speedup" and min(value(c) for c in points) > 0:
            ax.set_xscale("log")
            import matplotlib.ticker

            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        fig.tight_layout()  # the final axes box, so the labels are placed inside it
        _label_points(ax, [(value(c), 100 * c.accuracy, short_label(c.method, report), color[c.method])
                           for c in points])
    return _save(fig, plt, out, _footnote(report)), x


MARKERS = ("x", "+", "^", "v", "s", "D", "P", "*")


def beside(curve, column: Column, cells: list[ReportCell]) -> bool:
    """A published curve belongs in a column's panel: same task and length, the model family and the shot
    count of the column's runs where they are recorded (a 0-shot paper curve is not beside 5-shot runs)."""
    from l2pd_eval.results.published import cell_family

    if curve.task != column[0] or curve.gen_length not in (None, column[1]) or not curve.points:
        return False  # a source that names no length (d3LLM's yaml) stands beside every length of the task
    families = {cell_family(c) for c in cells} - {None}
    shots = {c.n_shot for c in cells} - {None}
    family = curve.table.family
    return (not families or family is None or family in families) and (
        not shots or curve.num_fewshot is None or curve.num_fewshot in shots)


def plot_curves(report: Report, out: str | os.PathLike, x: str = "tpf", published: list | None = None,
                columns: list[Column] | None = None) -> Path:
    """Accuracy against TPF (``x="tpf"``) or TPS per method curve, AUP in the legend; ``published``: tables
    (:class:`~l2pd_eval.results.published.Published`) whose curves of the same task and length are drawn
    dashed (their AUP against their own reference accuracy)."""
    if x not in ("tpf", "tps"):
        raise ValueError(f"curve x axis {x!r} is not valid; valid choices: tpf, tps")
    wanted = columns or report.columns
    theirs = [c for t in published or [] for c in t.curves(report.aup_params)]
    value = (lambda c: c.tpf) if x == "tpf" else (lambda c: c.tps)
    shown = [col for col in wanted if any(value(c) is not None for curve in report.curves if curve.column == col
                                          for c in curve.cells)]
    if not shown:
        raise ValueError(f"nothing to plot: no cell has both accuracy and {x.upper()}")
    plt = _pyplot()
    color = _colors(plt, report)
    fig, axes = _layout(plt, len(shown), height=4.8)
    for ax, column in zip(axes, shown, strict=True):
        curves = [cv for cv in report.curves if cv.column == column]
        cells = [c for cv in curves for c in cv.cells]
        for cv in curves:
            pts = [(value(c), 100 * c.accuracy) for c in cv.cells if value(c) is not None]
            if not pts:
                continue
            pts.sort()
            label = short_label(cv.cells[0].method, report) if len(cv.cells) == 1 else cv.label
            aup_text = f"AUP {cv.aup:.1f}" if cv.aup is not None else "AUP n/a"
            ax.plot(*zip(*pts, strict=True), marker="o", color=color[cv.cells[0].method],
                    label=f"{label} ({aup_text})")
            for c in cv.cells:
                if value(c) is not None and cv.swept:
                    ax.annotate(",".join(dict(c.method.params)[k] for k in cv.swept), (value(c), 100 * c.accuracy),
                                textcoords="offset points", xytext=(4, 4), fontsize=7)
        if x == "tpf":
            for i, pc in enumerate(c for c in theirs if beside(c, column, cells)):
                ax.plot(*zip(*pc.points, strict=True), linestyle="--", marker=MARKERS[i % len(MARKERS)],
                        color=plt.cm.tab20(2 * (i % 10) + 1), alpha=0.9,
                        label=f"{pc.label} [{pc.table.name}] (AUP {pc.aup:.1f})" if pc.aup is not None
                        else f"{pc.label} [{pc.table.name}]")
        y = report.y_max.get(column)
        ax.set_title(f"{column_label(column)} ({_n_text(cells)}" + (f", y_max {y[0]:.1f})" if y else ")"))
        ax.set_xlabel(f"TPF ({report.tpf_kind}): tokens per forward" if x == "tpf" else TPS_AXIS[report.tps_kind])
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    note = f"AUP: d3LLM's definition, {report.aup_params.describe()}. " + _footnote(report)
    return _save(fig, plt, out, note.strip())


def plot_published(table, curves: list, out: str | os.PathLike) -> Path:
    """A published table's (TPF, accuracy) curves, one panel per task of the source, AUP in the legend
    (against the source's own reference accuracy, d3LLM's main.py)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(c.group for c in curves))
    fig, axes = _layout(plt, len(groups), height=4.8)
    for ax, group in zip(axes, groups, strict=True):
        mine = [c for c in curves if c.group == group]
        for i, c in enumerate(mine):
            label = f"{c.label} (AUP {c.aup:.1f})" if c.aup is not None else f"{c.label} (AUP n/a: {c.error})"
            ax.plot(*zip(*c.points, strict=True), marker=MARKERS[i % len(MARKERS)], linestyle="-" if len(c.points) > 1
                    else "none", color=plt.cm.tab10(i % 10), label=label)
        first = mine[0]
        length = "" if first.gen_length is None else f" {first.gen_length}"
        ax.set_title(f"{group}: {first.task}{length}, {first.num_fewshot}-shot (y_max {first.y_max:.2f})")
        ax.set_xlabel("TPF (the source's count)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    note = (f"{table.name}: {table.title} (arXiv {table.arxiv}); TPF 1.0 points are entered by the source's "
            "convention. AUP: d3LLM's definition, alpha=3, y_min_offset=5.")
    return _save(fig, plt, out, note)
