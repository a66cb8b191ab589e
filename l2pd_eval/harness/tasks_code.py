"""Code tasks (HumanEval, MBPP): completion -> program -> pass@1.

Completions of a chat dLLM come with chat wrappers, markdown fences and prose; :class:`ExtractCodeFilter`
(registered as ``l2pd_extract_code`` when this module is imported) extracts the program the way the
anchors' post-processing does, and :func:`run_program` executes program + tests in a subprocess for
pass@1 (no Hub download, so it works offline). The task YAMLs reach these through
:mod:`l2pd_eval.harness.tasks_support`, which re-exports them.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

FILTER_NAME = "l2pd_extract_code"

# --------------------------------------------------------------------------------------------------
# Code extraction (HumanEval / MBPP)

# Special tokens of LLaDA / Llama-3 style chat templates, and role names that a decode without
# special tokens leaves behind on their own line.
_SPECIAL_TOKEN = re.compile(r"<\|[a-zA-Z0-9_]+\|>")
_ROLE_LINE = re.compile(r"^\s*(assistant|user|system)\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_LANGS = {"", "python", "py", "python3", "py3"}
_MAX_LINES = 300


def strip_chat_wrappers(text: str) -> str:
    """Remove special tokens, role-header lines and MBPP's [BEGIN]/[DONE] markers."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = _SPECIAL_TOKEN.sub("\n", text)
    text = _ROLE_LINE.sub("", text)
    return text.replace("[BEGIN]", "").replace("[DONE]", "")


def fenced_blocks(text: str) -> list[str]:
    """Python (or unlabeled) markdown code blocks, in order; an unclosed last fence runs to the end."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _CODE_LANGS]


def _parses(code: str) -> bool:
    return _syntax_error_line(code) is None


# Errors that more lines could repair (an open bracket/string/block at the end of the window).
_SOFT_ERRORS = ("never closed", "triple-quoted", "unexpected eof", "expected an indented block", "eof while")


def _syntax_error_line(code: str) -> int | None:
    """None if ``code`` parses; else the 0-based line of an error that no added line can repair,
    or -1 when more lines might repair it."""
    try:
        ast.parse(code)
    except SyntaxError as err:
        msg = (err.msg or "").lower()
        if err.lineno is None or any(s in msg for s in _SOFT_ERRORS):
            return -1
        return err.lineno - 1
    except (ValueError, MemoryError, RecursionError):
        return -1
    return None


def longest_valid_code(code: str) -> str:
    """The longest run of consecutive lines that parses as Python (earliest on ties).

    Prose before/after the program, a truncated last statement or a stray fence fall outside it.
    Windows are tried longest first; a window that fails on a syntax error no later line can repair
    (e.g. at a prose line) bounds every longer window from the same start, which keeps messy
    1024-token answers fast without changing the result.
    """
    lines = code.split("\n")[:_MAX_LINES]
    n = len(lines)
    if _parses("\n".join(lines)):
        return "\n".join(lines)
    # A parseable window starts at a non-blank, unindented line (else: "unexpected indent") and
    # ends at a non-blank line (a blank edge only repeats a shorter window).
    max_end = {i: n for i, line in enumerate(lines) if line.strip() and not line[0].isspace()}
    for length in range(n - 1, 0, -1):
        for start, bound in max_end.items():
            end = start + length
            if end > bound or not lines[end - 1].strip():
                continue
            bad = _syntax_error_line("\n".join(lines[start:end]))
            if bad is None:
                return "\n".join(lines[start:end])
            if 0 <= bad < length:
                max_end[start] = start + bad  # windows from here must stop before the bad line
    return ""


def _is_stub(node: ast.AST) -> bool:
    """A def whose body is only a docstring / ``pass`` / ``...`` (HumanEval's prompt header)."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    for stmt in node.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring or ``...``
        return False
    return True


def _defined_name(node: ast.AST) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id
    return None


def _referenced_names(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
    return names


def sanitize_program(code: str, entry_point: str | None = None, keep: Iterable[str] = ()) -> str:
    """Imports + top-level definitions needed by ``entry_point`` (all definitions without one).

    Top-level statements that are not imports or definitions (prints, example calls, ``if __name__``
    blocks, stray asserts) are dropped: they are test scaffolding of the model, not the solution.
    Stub defs lose to a later full def of the same name.
    """
    snippet = longest_valid_code(code)
    if not snippet:
        return ""
    tree = ast.parse(snippet)
    imports: list[ast.stmt] = []
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
            continue
        name = _defined_name(node)
        if name is None:
            continue
        if _is_stub(node) and name in defs:
            continue  # keep the earlier full definition over a later stub
        defs.pop(name, None)  # re-insert: the last definition wins and keeps its source position
        defs[name] = node
    if entry_point is not None:
        wanted = {entry_point, *keep}
        deps = {name: _referenced_names(node) for name, node in defs.items()}
        reachable: set[str] = set()
        todo = [n for n in wanted if n in defs]
        while todo:
            name = todo.pop()
            if name in reachable:
                continue
            reachable.add(name)
            todo.extend(d for d in deps[name] if d in defs and d not in reachable)
        defs = {n: node for n, node in defs.items() if n in reachable}
    return "\n".join(ast.unparse(node) for node in [*imports, *defs.values()])


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b", code, re.MULTILINE) is not None


def extract_program(completion: str, prompt: str | None = None, entry_point: str | None = None) -> str:
    """The program a (dLLM) completion means, ready to run against the task's tests.

    Steps (after the anchors' post-processing; own implementation): drop chat wrappers; take the
    python code block (the first one that defines ``entry_point`` if several); put the task's
    prompt in front (HumanEval's prompt is a function header the model may only continue, or may
    restate); cut to the longest parseable run of lines; keep imports and the definitions that the
    entry point (and the prompt's own helpers) reach.
    """
    text = strip_chat_wrappers(completion)
    blocks = fenced_blocks(text)
    if blocks:
        code = next((b for b in blocks if entry_point and _defines(b, entry_point)), blocks[0])
    else:
        code = text
    keep: list[str] = []
    candidates = [code]
    if prompt:
        prompt = strip_chat_wrappers(prompt)
        keep = [n for n in _top_level_names(prompt) if n != entry_point]
        candidates = [prompt.rstrip("\n") + "\n" + code, code]
    first = ""
    for cand in candidates:
        program = sanitize_program(cand, entry_point, keep)
        first = first or program
        if entry_point is None or _defines_full(program, entry_point):
            return program
    return first or code.strip()


def _top_level_names(code: str) -> list[str]:
    snippet = longest_valid_code(code)
    if not snippet:
        return []
    return [n for node in ast.parse(snippet).body if (n := _defined_name(node)) and not _is_stub(node)]


def _defines_full(program: str, name: str) -> bool:
    if not program:
        return False
    return any(_defined_name(n) == name and not _is_stub(n) for n in ast.parse(program).body)


_BUILTIN_NAMES = set(dir(builtins))


def entry_point_from_tests(tests: Sequence[str] | str) -> str | None:
    """The function an MBPP test calls: the first called plain name that is not a builtin."""
    if isinstance(tests, str):
        tests = [tests]
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        calls.sort(key=lambda c: (c.lineno, c.col_offset))
        for call in calls:
            if isinstance(call.func, ast.Name) and call.func.id not in _BUILTIN_NAMES:
                return call.func.id
    return None


@register_filter(FILTER_NAME)
class ExtractCodeFilter(Filter):
    """lm-eval filter: raw completions -> runnable programs (see :func:`extract_program`).

    YAML arguments name document fields: ``prompt_key`` (text put before the completion, HumanEval's
    ``prompt``), ``entry_point_key`` (HumanEval's ``entry_point``) or ``tests_key`` (MBPP's
    ``test_list``, from which the entry point is read).
    """

    def __init__(
        self, prompt_key: str | None = None, entry_point_key: str | None = None, tests_key: str | None = None
    ) -> None:
        super().__init__()
        self.prompt_key, self.entry_point_key, self.tests_key = prompt_key, entry_point_key, tests_key

    def _entry_point(self, doc: dict) -> str | None:
        if self.entry_point_key:
            return doc[self.entry_point_key]
        if self.tests_key:
            return entry_point_from_tests(doc[self.tests_key])
        return None

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[list[str]]:
        out = []
        for resp, doc in zip(resps, docs, strict=True):
            prompt = doc[self.prompt_key] if self.prompt_key else None
            entry = self._entry_point(doc)
            out.append([extract_program(r, prompt=prompt, entry_point=entry) for r in resp])
        return out


# --------------------------------------------------------------------------------------------------
# Executing programs for pass@1


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # "passed", "failed: <last stderr line>", "timed out"


def run_program(program: str, timeout: float = 10.0) -> ExecResult:
    """Run ``program`` in a fresh isolated interpreter in an empty temp dir; pass = exit code 0.

    Only reached through lm-eval's gate: our code tasks are ``unsafe_code: true``, so lm-eval refuses
    to run them without ``--confirm_run_unsafe_code``. A subprocess (not exec in this process) keeps
    a crashing or hanging program away from the evaluator.
    """
    with tempfile.TemporaryDirectory(prefix="l2pd_exec_") as tmp:
        src = Path(tmp) / "program.py"
        src.write_text(program, encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-B", str(src)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"},
            )
        except subprocess.TimeoutExpired:
            return ExecResult(False, "timed out")
    if proc.returncode == 0:
        return ExecResult(True, "passed")
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return ExecResult(False, f"failed: {err[-1] if err else f'exit code {proc.returncode}'}")


def _first(pred: str | Sequence[str]) -> str:
    return pred if isinstance(pred, str) else (pred[0] if pred else "")


def _score(references: Sequence[str], predictions: Sequence[str | Sequence[str]]) -> float:
    """Greedy decoding gives one sample per problem, so pass@1 is the fraction of passing programs."""
    results = [
        run_program(_first(p) + "\n\n" + ref).passed for ref, p in zip(references, predictions, strict=True)
    ]
    return sum(results) / len(results) if results else 0.0


def pass_at_1_humaneval(
    references: Sequence[str], predictions: Sequence[str | Sequence[str]]
) -> dict[str, float]:
    """lm-eval metric for HumanEval; reported as ``pass@1`` like lm-eval's own humaneval task."""
    return {"pass@1": _score(references, predictions)}


def pass_at_1(references: Sequence[str], predictions: Sequence[str | Sequence[str]]) -> float:
    """lm-eval metric for MBPP; reported as ``pass_at_1`` like lm-eval's own mbpp task."""
    return _score(references, predictions)
