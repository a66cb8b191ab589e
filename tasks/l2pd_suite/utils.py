"""Functions the task YAMLs in this folder name with ``!function utils.<name>``.

lm-eval loads this file by path, so it works from the installed package (``l2pd_eval/tasks``) and
from a source checkout passed with ``--include_path tasks/``; in the latter case ``l2pd_eval`` may not
be importable, so the checkout root (the first parent holding ``l2pd_eval/``) goes on ``sys.path``.
Importing ``l2pd_eval.harness.tasks_support`` also registers the ``l2pd_extract_code`` filter before lm-eval
builds the task's filters.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import l2pd_eval.harness.tasks_support as _support
except ModuleNotFoundError as err:
    if not (err.name or "").startswith("l2pd_eval"):
        raise
    _root = next(p for p in Path(__file__).resolve().parents if (p / "l2pd_eval" / "__init__.py").is_file())
    sys.path.insert(0, str(_root))
    if getattr(sys.modules.get("l2pd_eval"), "__file__", "") is None:
        del sys.modules["l2pd_eval"]  # a namespace-package stand-in (e.g. a stale copied tasks/ folder)
    import l2pd_eval.harness.tasks_support as _support

L2PDTask = _support.L2PDTask
pass_at_1 = _support.pass_at_1
pass_at_1_humaneval = _support.pass_at_1_humaneval
mbpp_fewshot_samples = _support.mbpp_fewshot_samples
