"""Where a timing sidecar goes (lm-eval's results folder, reproduced from its naming rules) and the run
manifest stored in it (settings plus the environment facts needed to reproduce a number).

Torch-free on purpose, like :mod:`l2pd_eval.results.sidecar`: the GPU name is only recorded when the
caller already imported torch.
"""

from __future__ import annotations

import json
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
    """GPU model and count, CUDA and driver versions, cuDNN, and the scaled-dot-product attention kernels
    torch may pick (``sdpa_backends``), from the torch the caller already imported."""
    torch = sys.modules.get("torch")  # never import torch here: only report what the caller already uses
    if torch is None:
        return {"gpu": None}
    facts: dict[str, Any] = {"gpu": None, "cuda": getattr(torch.version, "cuda", None)}
    try:
        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            facts["gpu"] = torch.cuda.get_device_name(idx)
            facts["gpu_count"] = torch.cuda.device_count()
            facts["cudnn"] = torch.backends.cudnn.version()
            facts["driver"] = _driver_version()
            facts["sdpa_backends"] = [name for name, on in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("cudnn", getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)()),
                ("math", torch.backends.cuda.math_sdp_enabled())) if on]
    except Exception:  # a broken driver must not lose the run
        pass
    return facts


def _driver_version() -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``; torch does not expose it), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


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
    filt = (manifest.get("policy_params") or {}).get("filter")
    if isinstance(filt, str) and "filter_name" not in manifest:
        name = filter_name(filt)
        if name is not None:
            manifest["filter_name"] = name
    return manifest


def filter_name(path: str | os.PathLike) -> str | None:
    """What a Learn2PD filter is, from its own manifest (``filter.json`` beside the weights, written by
    ``l2pd-eval train-filter``): its network, block length and the model it was trained for, e.g.
    ``MLP[32], block 32, for testbed/checkpoint``; the authors' ``.pth`` by its file name. None when the
    path holds neither (a plot then shows the path's last part, as row labels do)."""
    p = Path(path)
    if p.suffix in (".pth", ".pt") and p.is_file():
        return f"authors' filter {p.name}"
    config = p.with_suffix(".json") if p.suffix == ".safetensors" else p / "filter.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != "l2pd-filter":
        return None
    hidden = data.get("hidden_sizes") or []
    name = f"MLP[{'x'.join(map(str, hidden))}], block {data.get('block_length')}"
    model = (data.get("metadata") or {}).get("model")
    if isinstance(model, str) and model:
        name += ", for " + "/".join(Path(model.rstrip("/")).parts[-2:])
    return name
