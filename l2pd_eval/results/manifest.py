"""Where a timing sidecar goes (lm-eval's results folder, reproduced from its naming rules) and the run
manifest stored in it (settings plus the environment facts needed to reproduce a number).

Torch-free on purpose, like :mod:`l2pd_eval.results.sidecar`: the GPU name is only recorded when the
caller already imported torch.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

SIDECAR_PREFIX = "l2pd_"

# lm-eval 0.4.13 (loggers/evaluation_tracker.py, GeneralConfigTracker._get_model_name): the first of
# these keys found in model_args names the results sub-folder. Order matters (peft before pretrained).
_LM_EVAL_NAME_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")


# --------------------------------------------------------------------------------------------------
# Where the sidecar goes


def new_run_id(now: datetime | None = None) -> str:
    """Same shape as lm-eval's ``date_id`` (local ISO time, ':' -> '-') so files sort together."""
    return (now or datetime.now()).isoformat().replace(":", "-")


def parse_date_id(text: str) -> float | None:
    """Epoch seconds of an lm-eval ``date_id`` / our run id (local time); ``None`` if it is not one."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})(\.\d+)?", text)
    if not m:
        return None
    try:
        return datetime.fromisoformat(f"{m[1]}T{m[2]}:{m[3]}:{m[4]}{m[5] or ''}").timestamp()
    except ValueError:
        return None


def lm_eval_model_name(model_args: str | dict[str, Any] | None) -> str | None:
    """The model name lm-eval 0.4.13 derives from ``model_args`` (before sanitising)."""
    if isinstance(model_args, dict):
        for key in _LM_EVAL_NAME_KEYS:
            if key in model_args:
                return str(model_args[key])
    elif isinstance(model_args, str):
        for key in _LM_EVAL_NAME_KEYS:
            token = f"{key}="
            if token in model_args:  # lm-eval matches substrings, so "filter_path=" counts as "path="
                return model_args.split(token)[1].split(",")[0]
    return None


def sanitize_model_name(name: str) -> str:
    """lm-eval 0.4.13 ``utils.sanitize_model_name``: the results sub-folder name."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def results_dir(output_path: str | os.PathLike, model_args: str | dict[str, Any] | None) -> Path | None:
    """The folder lm-eval writes ``results_<date_id>.json`` to for ``--output_path``.

    ``X.json`` -> its parent (lm-eval writes ``X_<date_id>.json`` there); a folder ->
    ``<folder>/<sanitized model name>``. ``None`` when lm-eval would invent a random model name
    (no name key in ``model_args``): then the folder cannot be known in advance.
    """
    path = Path(output_path)
    if path.suffix == ".json":
        return path.parent
    name = lm_eval_model_name(model_args)
    if name is None:
        return None
    return path / sanitize_model_name(name)


def sidecar_path(
    output_path: str | os.PathLike, model_args: str | dict[str, Any] | None, run_id: str
) -> Path:
    """``<results folder>/l2pd_<run_id>.json``; falls back to ``<output_path>/l2pd_<run_id>.json``."""
    folder = results_dir(output_path, model_args)
    if folder is None:
        folder = Path(output_path)
    return folder / f"{SIDECAR_PREFIX}{run_id}.json"


def output_path_from_argv(argv: list[str] | None = None) -> str | None:
    """``--output_path``/``-o`` of an ``lm_eval`` command line (the model itself never receives it)."""
    args = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(args):
        if arg in ("--output_path", "-o") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------------------
# Run manifest


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _package_version() -> str:
    from l2pd_eval import __version__

    return __version__


def harness_git_commit(start: str | os.PathLike | None = None) -> str | None:
    """Commit of the l2pd-eval checkout (``+dirty`` if it has uncommitted changes); ``None`` if not a checkout."""
    here = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def _gpu_facts() -> dict[str, Any]:
    torch = sys.modules.get("torch")  # never import torch here: only report what the caller already uses
    if torch is None:
        return {"gpu": None}
    facts: dict[str, Any] = {"gpu": None, "cuda": getattr(torch.version, "cuda", None)}
    try:
        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            facts["gpu"] = torch.cuda.get_device_name(idx)
            facts["gpu_count"] = torch.cuda.device_count()
    except Exception:  # a broken driver must not lose the run
        pass
    return facts


def build_manifest(**run_settings: Any) -> dict[str, Any]:
    """Run settings (model, policy, policy_params, cache, eotp, gen_length, block_length, steps,
    batch_size, dtype, seed, model_args, ...) plus the environment facts needed to reproduce a number.

    Keys the report reads: ``model``, ``policy``, ``policy_params`` (dict), ``cache``, ``eotp``,
    ``gen_length``, ``model_args``; ``run_id`` and ``started_at`` are filled in when absent.
    """
    now = datetime.now()
    manifest: dict[str, Any] = dict(run_settings)
    manifest.setdefault("run_id", new_run_id(now))
    manifest.setdefault("started_at", now.timestamp())
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "l2pd_eval": _version("l2pd-eval") or _package_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval"),
        "harness_git_commit": harness_git_commit(),
        "timestamp": now.astimezone().isoformat(),
    }
    env.update(_gpu_facts())
    manifest["environment"] = {**env, **manifest.get("environment", {})}
    return manifest
