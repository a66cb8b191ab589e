"""Pure text renderers for small tables: Markdown, CSV, LaTeX and rich console.

A table is ``headers`` plus ``rows``; a cell is a string or a list of ``(text, bold)`` segments joined
by " / " (the report's "TPS / speedup / accuracy" cells bold some parts only). Everything returns a
string so golden tests can compare exact text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

Segment = tuple[str, bool]
CellValue = str | list[Segment]

FORMATS = ("console", "markdown", "csv", "latex")
SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".tex": "latex", ".txt": "console"}


def _segments(cell: CellValue) -> list[Segment]:
    return [(cell, False)] if isinstance(cell, str) else list(cell)


def plain(cell: CellValue) -> str:
    return " / ".join(text for text, _ in _segments(cell))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[CellValue]], align: str | None = None) -> str:
    """``align``: one char per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "| " + " | ".join(":---" if a == "l" else "---:" for a in align) + " |"]
    for row in rows:
        cells = []
        for cell in row:
            parts = [f"**{_md_escape(t)}**" if b and t else _md_escape(t) for t, b in _segments(cell)]
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_text(text: str) -> str:
    # "22.58x" is a speedup: typeset the x as a times sign.
    out = latex_escape(text)
    if text.endswith("x") and text[:-1].replace(".", "", 1).lstrip("+-").isdigit():
        out = out[:-1] + r"$\times$"
    return out


def latex_table(headers: Sequence[str], rows: Sequence[Sequence[CellValue]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    for row in rows:
        cells = []
        for cell in row:
            parts = [rf"\textbf{{{_latex_text(t)}}}" if b and t else _latex_text(t) for t, b in _segments(cell)]
            cells.append(" / ".join(parts))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_table(headers: Sequence[str], rows: Sequence[Sequence[CellValue]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow([plain(c) for c in row])
    return buf.getvalue()


def console_table(headers: Sequence[str], rows: Sequence[Sequence[CellValue]], title: str | None = None,
                  width: int | None = None, color: bool = False, align: str | None = None) -> str:
    """rich table as text; ``color=False`` gives plain characters (bold is lost, so best cells get '*').
    ``width=None``: as wide as the table needs (a file or pipe has no width to fit)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    align = align or ("l" + "r" * (len(headers) - 1))
    table = Table(title=title, show_lines=False)
    for i, h in enumerate(headers):
        table.add_column(escape(h), justify="left" if align[i] == "l" else "right", no_wrap=align[i] == "r")
    for row in rows:
        cells = []
        for cell in row:
            parts = []
            for text, bold in _segments(cell):
                if bold and text:
                    parts.append(f"[bold]{escape(text)}[/bold]" if color else f"{escape(text)}*")
                else:
                    parts.append(escape(text))
            cells.append(" / ".join(parts))
        table.add_row(*cells)
    if width is None:  # off a terminal: the table's natural width, so no column wraps or is squeezed
        width = Console(file=io.StringIO(), width=100_000).measure(table).maximum
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None,
                      highlight=False, soft_wrap=False)
    console.print(table)
    return buf.getvalue()
