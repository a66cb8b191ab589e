"""The README as a newcomer reads it: rendered with a markdown parser (markdown-it-py, which rich brings), its
tables well formed, and the model_args table complete against the code (so a new argument of anyone's is
caught until it is documented)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from l2pd_eval.harness.model_args import accepted_model_args

README = Path(__file__).resolve().parents[1] / "README.md"


def tables(text: str) -> list[dict]:
    """Each table of the rendered markdown: its heading, header cells, body rows (cell texts, backticks kept)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    out: list[dict] = []
    heading, table, row, head = None, None, None, False
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            heading = tokens[i + 1].content
        elif tok.type == "table_open":
            table = {"heading": heading, "header": [], "rows": [], "line": tok.map[0] + 1, "lines": tok.map}
        elif tok.type in ("thead_open", "thead_close"):
            head = tok.type == "thead_open"
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append("".join(f"`{c.content}`" if c.type == "code_inline" else c.content for c in tok.children or []))
        elif tok.type == "tr_close":
            if head:
                table["header"] = row
            else:
                table["rows"].append(row)
            row = None
        elif tok.type == "table_close":
            out.append(table)
    return out


@pytest.fixture(scope="module")
def readme_tables() -> list[dict]:
    return tables(README.read_text(encoding="utf-8"))


def test_every_table_has_whole_rows_and_no_duplicates(readme_tables):
    assert readme_tables, "README.md renders no table"
    for t in readme_tables:
        where = f"README.md table at line {t['line']} ({t['heading']})"
        assert all(len(r) == len(t["header"]) for r in t["rows"]), where
        firsts = [r[0] for r in t["rows"]]
        assert len(firsts) == len(set(firsts)), f"{where}: duplicated rows {sorted({f for f in firsts if firsts.count(f) > 1})}"


def test_no_table_row_outside_a_table(readme_tables):
    """A row separated from its table (a blank line left by a merge) renders as a paragraph of pipes."""
    lines = README.read_text(encoding="utf-8").splitlines()
    inside = {i for t in readme_tables for i in range(*t["lines"])}
    fences = [tok.map for tok in MarkdownIt("commonmark").parse("\n".join(lines)) if tok.type == "fence"]
    inside |= {i for a, b in fences for i in range(a, b)}
    stray = [i + 1 for i, line in enumerate(lines) if line.startswith("|") and i not in inside]
    assert not stray, f"README.md lines {stray}: table rows outside any table"


def test_the_model_args_table_lists_every_argument_the_code_accepts(readme_tables):
    (table,) = [t for t in readme_tables if t["heading"] == "model_args of `--model learn2pd`"]
    assert table["header"] == ["argument", "default", "meaning"]
    listed = [name for row in table["rows"] for name in re.findall(r"`([a-z_]+)`", row[0])]
    assert len(listed) == len(set(listed)), "an argument is listed twice"
    accepted = accepted_model_args()
    missing = sorted(set(accepted) - set(listed))
    assert not missing, f"README's model_args table lacks {', '.join(f'{k} ({accepted[k]})' for k in missing)}"
    assert not set(listed) - set(accepted), "README lists arguments the code does not accept"
    assert "revision" in listed


def test_the_prose_around_the_table_is_whole():
    """No sentence cut by a merge: the paragraph after the model_args table starts a sentence, and the
    boolean/integer rule is stated."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## model_args of `--model learn2pd`", 1)[1].split("\n## ", 1)[0]
    assert "Booleans" in section and "Integers must be whole numbers" in section and "finite" in section
    paragraphs = [p.strip() for p in section.split("\n\n") if p.strip() and not p.strip().startswith("|")]
    assert all(p[0].isupper() or p[0] in "`(" for p in paragraphs), [p[:40] for p in paragraphs]


def test_quickstart_activates_the_venv_before_commands_that_need_it():
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in quick
    assert "batch_size=auto" in text and "on a CPU it is always 1" in text
    assert "--ignore-tps" in text
