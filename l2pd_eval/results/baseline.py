"""Stored baselines and the regression check behind ``l2pd-eval compare``.

A baseline file (format: results/baselines/README.md) freezes the cells of one report: per method x
task x length the accuracy and TPS. ``compare`` rebuilds the report of a new run and fails when a cell's
accuracy drops by more than ``acc_tol`` percentage points or its TPS by more than ``tps_tol`` (relative).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2pd_eval.results import environment, render
from l2pd_eval.results.methods import Method
from l2pd_eval.results.table import Report, column_label, fmt_acc, fmt_aup, fmt_tpf, fmt_tps

SCHEMA = "l2pd-eval/baseline"
SCHEMA_VERSION = 1


def baseline_from_report(report: Report, runs: list[str] | None = None) -> dict[str, Any]:
    cells = []
    for method in report.methods:
        for column in report.columns:
            c = report.cell(method, column)
            if c is None:
                continue
            cells.append({
                "method": method.to_json(), "label": method.label, "task": column[0], "gen_length": column[1],
                "accuracy": c.accuracy, "metric": c.metric, "tps": c.tps, "tps_fallback": c.tps_fallback,
                "tps_paper": c.tps_paper, "tps_mean": c.tps_mean,
                "tps_total": c.tps_total, "nfe_mean": c.nfe_mean, "n_timing": c.n_timing, "n_eval": c.n_eval,
                "tpf": c.tpf, "aup": c.aup, "environment": c.environment,
            })
    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tps_kind": report.tps_kind,
        "tpf_kind": report.tpf_kind,
        "aup": {"params": report.aup_params.describe(),
                "y_max": {column_label(col): v for col, (v, _) in report.y_max.items()}},
        "environment": report.environment,
        "runs": list(runs or []),
        "cells": cells,
    }


def save_baseline(path: str | os.PathLike, report: Report, runs: list[str] | None = None) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(baseline_from_report(report, runs), indent=1) + "\n", encoding="utf-8")
    return target


def load_baseline(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--baseline {p}: no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--baseline {p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"--baseline {p}: not a baseline file (schema must be {SCHEMA!r}); "
                         "write one with `l2pd-eval report RUN --save-baseline FILE`")
    if data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"--baseline {p}: unsupported version {data.get('version')!r}; expected {SCHEMA_VERSION}")
    return data


@dataclass
class Check:
    label: str
    task: str
    gen_length: int | None
    status: str  # "ok", "regression", "missing"
    detail: str
    acc_base: float | None = None
    acc_new: float | None = None
    tps_base: float | None = None
    tps_new: float | None = None
    tpf_base: float | None = None
    tpf_new: float | None = None
    aup_base: float | None = None
    aup_new: float | None = None

    @property
    def where(self) -> str:
        return f"{column_label((self.task, self.gen_length))} / {self.label}"


def _not_there(report: Report, method: Method, column: tuple) -> str:
    """Why the run has no cell for a baseline cell: its run of that method recorded nothing, or none ran."""
    empty = [name for m, name in report.empty if m.base == method.base]
    if empty:
        return f"empty: {empty[0]} recorded no samples"
    if not report.cells:
        return "empty: the run has no scored or timed cells"
    return "not in the run"


def compare(
    baseline: dict[str, Any], report: Report, acc_tol: float = 1.0, tps_tol: float = 0.10, check_tps: bool = True,
    tpf_tol: float = 0.05,
) -> list[Check]:
    """``acc_tol`` in percentage points; ``tps_tol`` and ``tpf_tol`` relative (0.10 = may be 10% lower).
    TPF is checked in the baseline's TPF kind; it does not depend on the machine, so ``check_tps=False``
    (another GPU) still checks it."""
    if min(acc_tol, tps_tol, tpf_tol) < 0:
        raise ValueError("--acc-tol, --tps-tol and --tpf-tol must be >= 0")
    tpf_kind = baseline.get("tpf_kind") or report.tpf_kind
    if baseline.get("tps_kind") and baseline["tps_kind"] != report.tps_kind:
        raise ValueError(f"baseline stores TPS kind {baseline['tps_kind']!r}, the run was read with "
                         f"{report.tps_kind!r}; pass --tps {baseline['tps_kind']}")
    checks = []
    for row in baseline.get("cells", []):
        method = Method.from_json(row["method"])
        column = (row["task"], row.get("gen_length"))
        check = Check(method.label, row["task"], row.get("gen_length"), "ok", "",
                      acc_base=row.get("accuracy"), tps_base=row.get("tps"), tpf_base=row.get("tpf"),
                      aup_base=row.get("aup"))
        cell = report.cell(method, column)
        if cell is None:
            check.status, check.detail = "missing", _not_there(report, method, column)
            checks.append(check)
            continue
        check.acc_new, check.tps_new = cell.accuracy, cell.tps
        check.tpf_new, check.aup_new = cell.tpf_by_kind.get(tpf_kind), cell.aup
        problems, missing = [], []
        if cell.partial:
            missing.append(f"the run is {cell.partial} requests")
        # An old sidecar on one side: its TPS is the decode-only sum/sum, not the papers' figure.
        kinds_differ = bool(check_tps and check.tps_base and bool(row.get("tps_fallback")) != cell.tps_fallback)
        if kinds_differ:
            missing.append("TPS kinds differ (baseline: " + _kind_text(bool(row.get("tps_fallback"))) + ", run: "
                           + _kind_text(cell.tps_fallback) + ")")
            check.tps_new = None
        if check.acc_base is not None:
            if check.acc_new is None:
                missing.append("accuracy n/a")
            else:
                drop = 100 * (check.acc_base - check.acc_new)
                if drop > acc_tol + 1e-9:
                    problems.append(f"accuracy {fmt_acc(check.acc_base)} -> {fmt_acc(check.acc_new)} "
                                    f"(-{drop:.2f} pp > {acc_tol:g} pp)")
        if check_tps and check.tps_base and not kinds_differ:
            if check.tps_new is None:
                missing.append(f"TPS n/a (empty: {cell.empty_sidecar} has no samples)" if cell.empty_sidecar
                               else "TPS n/a")
            else:
                rel = 1 - check.tps_new / check.tps_base
                if rel > tps_tol + 1e-12:
                    problems.append(f"TPS {fmt_tps(check.tps_base)} -> {fmt_tps(check.tps_new)} "
                                    f"(-{100 * rel:.1f}% > {100 * tps_tol:g}%)")
        if check.tpf_base and check.tpf_new is not None:
            rel = 1 - check.tpf_new / check.tpf_base
            if rel > tpf_tol + 1e-12:
                problems.append(f"TPF {check.tpf_base:.2f} -> {check.tpf_new:.2f} (-{100 * rel:.1f}% > "
                                f"{100 * tpf_tol:g}%)")
        if problems:
            check.status, check.detail = "regression", "; ".join(problems + missing)
        elif missing:
            check.status, check.detail = "missing", "; ".join(missing)
        checks.append(check)
    return checks


def _kind_text(fallback: bool) -> str:
    return "decode-only sum/sum, old sidecar" if fallback else "as recorded"


def render_checks(checks: list[Check], width: int | None = None) -> str:
    headers = ["Status", "Cell", "Acc base", "Acc run", "TPS base", "TPS run", "TPF base", "TPF run", "AUP base",
               "AUP run", "Detail"]
    rows = [[c.status.upper(), c.where, fmt_acc(c.acc_base), fmt_acc(c.acc_new), fmt_tps(c.tps_base),
             fmt_tps(c.tps_new), fmt_tpf(c.tpf_base), fmt_tpf(c.tpf_new), fmt_aup(c.aup_base), fmt_aup(c.aup_new),
             c.detail] for c in checks]
    return render.console_table(headers, rows, title="l2pd-eval compare", width=width, align="llrrrrrrrrl")


def environment_warnings(baseline: dict[str, Any], report: Report) -> list[str]:
    """Every environment stamp key (and the model) in which the run differs from the baseline."""
    def norm(value: Any) -> str | None:
        return None if value is None else str(value).removeprefix("torch.")

    base_env, run_env = baseline.get("environment") or {}, report.environment
    out = []
    for key, label in (("model", "model"), *environment.STAMP_KEYS):
        a, b = norm(base_env.get(key)), norm(run_env.get(key))
        if a is not None and b is not None and a != b:
            out.append(f"warning: {label} differs: baseline {a!r}, run {b!r} (TPS may not compare; accuracy, TPF "
                       "and NFE do not depend on the machine)")
    return out
