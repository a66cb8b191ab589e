"""Write the page: ``DIR/index.html``, ``DIR/data.json`` and ``DIR/assets/`` (CSS, JS, SVG plots).

A DIR that holds other files is used only if its ``index.html`` is a page of ours (the generator tag):
then our three entries are replaced and nothing else in DIR is touched; an index.html of someone else's
is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from l2pd_eval.leaderboard.data import COLUMNS, Page

GENERATOR = "l2pd-eval leaderboard"
HERE = Path(__file__).resolve().parent


def _version() -> str:
    from l2pd_eval import __version__

    return __version__


def check_target(out: Path) -> None:
    """Refuse a folder whose index.html is not a page of ours."""
    index = out / "index.html"
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a folder")
    if index.exists():
        head = index.read_text(encoding="utf-8", errors="replace")[:2000]
        if f'content="{GENERATOR}' not in head:
            raise ValueError(f"-o {out}: {index} is not a page written by l2pd-eval leaderboard; choose another "
                             "folder (nothing there is overwritten)")


def render(page: Page, summary: str = "", warnings: list[str] | None = None) -> str:
    import jinja2

    from l2pd_eval.results.table import fmt_acc, fmt_tpf, fmt_tps

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.get_template("index.html.j2")
    return template.render(
        page=page, columns=COLUMNS, generator=f"{GENERATOR} {_version()}",
        built=time.strftime("%Y-%m-%d %H:%M %Z"), kinds=sorted({r["kind"] for r in page.rows}),
        tasks=sorted({str(r["task"]) for r in page.rows}),
        reproduced=sum(r["kind"] == "reproduced" for r in page.rows),
        published=sum(r["kind"] != "reproduced" for r in page.rows),
        summary=summary, warnings=warnings or [], fmt_acc=fmt_acc, fmt_tps=fmt_tps, fmt_tpf=fmt_tpf,
    )


def _replace(tmp: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(tmp, target)


def write_site(out: Path, page: Page, draw_plots, summary: str = "", warnings: list[str] | None = None) -> Path:
    """Build everything in a temporary folder beside ``out``, then move it in (a crash leaves the old page).

    ``draw_plots(folder) -> list[Plot]`` writes the SVGs into ``folder``."""
    check_target(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".l2pd-leaderboard.tmp{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        assets = stage / "assets"
        (assets / "plots").mkdir(parents=True)
        for name in ("leaderboard.css", "leaderboard.js"):
            shutil.copy(HERE / "assets" / name, assets / name)
        page.plots = draw_plots(assets / "plots")
        (stage / "index.html").write_text(render(page, summary, warnings), encoding="utf-8")
        data = {"schema": "l2pd-eval/leaderboard", "version": 1, "columns": [c[0] for c in COLUMNS],
                "rows": page.rows, "plots": [asdict(p) for p in page.plots], "legend": page.legend,
                "regression": None if page.checks is None else [asdict(c) for c in page.checks]}
        (stage / "data.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        for name in ("assets", "data.json", "index.html"):  # index.html last: a page is whole or the old one
            _replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / "index.html"
