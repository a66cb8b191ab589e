"""Task names (the report's columns: task x generation length) and each task's primary metric."""

from __future__ import annotations

import re
from typing import Any

_L2PD_TASK = re.compile(r"^(?P<base>.+?)_l2pd_(?P<length>\d+)$")

# Primary metric per task family, in order of preference ("metric,filter" as lm-eval 0.4.13 writes it).
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("exact_match,flexible-extract", "exact_match,strict-match"),
    "minerva_math": ("math_verify,none", "exact_match,none"),
    "minerva_math500": ("math_verify,none", "exact_match,none"),
    "humaneval": ("pass_at_1_humaneval,extract_code", "pass_at_k,create_test", "pass@1,create_test"),
    "humaneval_instruct": ("pass_at_k,create_test", "pass@1,create_test"),
    "mbpp": ("pass_at_1,extract_code", "pass_at_1,none", "pass@1,none"),
}
# Fallback for other tasks: the first metric (any filter) found in this order, else the first metric.
GENERIC_METRIC_ORDER = ("exact_match", "math_verify", "pass_at_1", "pass_at_k", "pass@1", "acc_norm", "acc")
TASK_ORDER = ("gsm8k", "minerva_math", "minerva_math500", "humaneval", "mbpp")


def split_task(name: str) -> tuple[str, int | None]:
    """``gsm8k_l2pd_256`` -> ``("gsm8k", 256)``; any other name -> ``(name, None)``."""
    m = _L2PD_TASK.match(name)
    if m:
        return m["base"], int(m["length"])
    return name, None


def column_sort_key(column: tuple[str, int | None]) -> tuple:
    task, length = column
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    return (order.get(task, len(order)), task, length if length is not None else -1)


def metric_keys(entry: dict[str, Any]) -> list[str]:
    return [k for k in entry if "," in k and k != "alias" and "_stderr," not in k]


def choose_metric(base_task: str, entry: dict[str, Any], wanted: str | None = None) -> str | None:
    """Key of the task's primary metric in an lm-eval results entry, or ``None`` if it has none.

    ``wanted`` (from ``--metric TASK=...``) is ``metric`` (any filter) or ``metric,filter``.
    """
    keys = metric_keys(entry)
    if not keys:
        return None
    if wanted is not None:
        if wanted in entry:
            return wanted
        hits = sorted(k for k in keys if k.split(",", 1)[0] == wanted)
        if hits:
            return hits[0]
        raise ValueError(
            f"--metric {base_task}={wanted}: no such metric in the results; valid choices: {', '.join(sorted(keys))}"
        )
    for key in PRIMARY_METRICS.get(base_task, ()):
        if key in entry:
            return key
    for name in GENERIC_METRIC_ORDER:
        hits = sorted(k for k in keys if k.split(",", 1)[0] == name)
        if hits:
            return hits[0]
    return sorted(keys)[0]
