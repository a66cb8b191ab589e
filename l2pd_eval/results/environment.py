"""The environment stamp of a run: what a TPS depends on besides the method (GPU, driver, CUDA, library
versions, dtype, attention kernel, compile, CUDA graphs, batch size, and which l2pd-eval produced it).

Read from a sidecar manifest (:func:`l2pd_eval.results.manifest.build_manifest` records the facts; the
adapter adds dtype, attention, compile, CUDA graphs and batch size). The report, ``compare`` and the
leaderboard page show it per row and say which keys differ between rows they put side by side: TPS
measured under different stamps do not compare (Fast-dLLM issues #18 and #49: the same method, another
torch/CUDA, another TPS). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: (key, what a reader calls it), in the order shown.
STAMP_KEYS: tuple[tuple[str, str], ...] = (
    ("gpu", "GPU"), ("gpu_count", "GPU count"), ("driver", "driver"), ("cuda", "CUDA"), ("torch", "torch"),
    ("transformers", "transformers"), ("lm_eval", "lm-eval"), ("dtype", "dtype"), ("attention", "attention"),
    ("compile", "compile"), ("cuda_graph", "CUDA graphs"), ("batch_size", "batch size"),
    ("l2pd_eval", "l2pd-eval"), ("git_commit", "git commit"),
)
LABELS = dict(STAMP_KEYS)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _attention(manifest: Mapping[str, Any], env: Mapping[str, Any], on_gpu: bool) -> str | None:
    kind = manifest.get("attention")
    if kind is None:
        return None
    kernels = env.get("sdpa_backends")
    text = f"{kind}, torch SDPA"
    if on_gpu and kernels:
        text += f" ({'/'.join(kernels)})"
    if on_gpu and manifest.get("split_keys"):
        text += ", key-split flash at batch 1"
    return text


def _batch_size(manifest: Mapping[str, Any]) -> str | None:
    asked = _text(manifest.get("batch_size"))
    used = sorted({int(b["batch_size"]) for b in manifest.get("batch_sizes") or []
                   if isinstance(b, dict) and isinstance(b.get("batch_size"), int)})
    if asked is not None and asked.startswith("auto") and used:
        return f"{asked} ({', '.join(map(str, used))})"
    return asked


def stamp(manifest: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The run's stamp: every :data:`STAMP_KEYS` key, ``None`` where the sidecar did not record it (an
    older sidecar, or no sidecar at all). A run on the CPU has ``gpu`` "CPU"."""
    m = manifest or {}
    env = m.get("environment") or {}
    device = str(m.get("device") or "")
    gpu = env.get("gpu")
    if gpu is None and device.startswith("cpu"):
        gpu = "CPU"
    dtype = _text(m.get("dtype"))
    out = {
        "gpu": _text(gpu), "gpu_count": _text(env.get("gpu_count")), "driver": _text(env.get("driver")),
        "cuda": _text(env.get("cuda")), "torch": _text(env.get("torch")),
        "transformers": _text(env.get("transformers")), "lm_eval": _text(env.get("lm_eval")),
        "dtype": dtype.removeprefix("torch.") if dtype else None,
        "attention": _attention(m, env, on_gpu=gpu not in (None, "CPU")),
        "compile": _text(m.get("compile")), "cuda_graph": _text(m.get("cuda_graph")),
        "batch_size": _batch_size(m), "l2pd_eval": _text(env.get("l2pd_eval")),
        "git_commit": _text(env.get("harness_git_commit")),
    }
    return {key: out[key] for key, _ in STAMP_KEYS}


def hardware(s: Mapping[str, str | None]) -> str:
    """"CPU", "NVIDIA H100 80GB HBM3 x2", or "not recorded"."""
    gpu = s.get("gpu")
    if gpu is None:
        return "not recorded"
    if gpu == "CPU":
        return "CPU"
    count = s.get("gpu_count")
    return f"{gpu} x{count}" if count and count != "1" else gpu


def summary(s: Mapping[str, str | None]) -> str:
    """One short line for a table cell: hardware, torch, dtype, batch size."""
    parts = [hardware(s)]
    for key, prefix in (("torch", "torch "), ("dtype", ""), ("batch_size", "bs ")):
        if s.get(key):
            parts.append(prefix + str(s[key]))
    if s.get("compile") == "true":
        parts.append("compiled")
    return ", ".join(parts)


def full(s: Mapping[str, str | None]) -> str:
    """Every recorded key, ``label=value``, for a tooltip or a legend line."""
    return "; ".join(f"{LABELS[k]}={s[k]}" for k, _ in STAMP_KEYS if s.get(k) is not None) or "not recorded"


def differences(rows: Iterable[tuple[str, Mapping[str, str | None]]]) -> dict[str, dict[str, list[str]]]:
    """Keys whose recorded values differ between rows: key -> value -> the row names that have it.
    A key some rows did not record is compared among the rows that did."""
    seen: dict[str, dict[str, list[str]]] = {}
    for name, s in rows:
        for key, _ in STAMP_KEYS:
            value = s.get(key)
            if value is not None:
                names = seen.setdefault(key, {}).setdefault(value, [])
                if name not in names:
                    names.append(name)
    return {k: v for k, v in seen.items() if len(v) > 1}


def names(names: list[str], limit: int = 3) -> str:
    """``a, b, c and 2 more``."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def difference_lines(rows: Iterable[tuple[str, Mapping[str, str | None]]], what: str = "rows") -> list[str]:
    """One line per differing key: which value which rows have (TPS of such rows do not compare)."""
    lines = []
    for key, values in differences(rows).items():
        parts = "; ".join(f"{value!r} ({names(rows)})" for value, rows in values.items())
        lines.append(f"environment differs between {what} in {LABELS[key]}: {parts}")
    return lines
