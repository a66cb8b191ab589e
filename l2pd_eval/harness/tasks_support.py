"""Support code for the lm-eval task YAMLs in ``tasks/`` (gsm8k, minerva_math, humaneval, mbpp at 256/1024).

Three things lm-eval 0.4.13 cannot do from YAML alone:

* **Include lm-eval's own task configs.** ``include:`` in lm-eval resolves relative to the including
  file (or takes an absolute path), so a YAML shipped in our package cannot name
  ``lm_eval/tasks/gsm8k/gsm8k.yaml`` by a path that is stable across installs. Our YAMLs therefore
  use lm-eval's documented Python-task hook (``class: !function utils.L2PDTask``) and name the base
  config with ``include_lm_eval: gsm8k/gsm8k.yaml`` (relative to lm-eval's ``tasks`` package); the
  class loads it at build time and applies our keys on top, with the same shallow "local keys win"
  rule as lm-eval's ``include``. ``!function`` references of the base are resolved only if they
  survive the merge, so an overridden metric never imports its module (lm-eval's humaneval/mbpp
  ``utils`` download a metric from the Hub at import time, which fails offline).
* **Local data.** With ``L2PD_DATA_DIR`` set, each task reads the files named in its
  ``local_data`` mapping (split -> path relative to that folder, HF schema) instead of the Hub.
* **Code tasks.** Completions of a chat dLLM need their program extracted and executed for pass@1:
  :mod:`l2pd_eval.harness.tasks_code` does it; its metrics are re-exported here, and importing this
  module registers its ``l2pd_extract_code`` filter.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lm_eval.api.task import ConfigurableTask

from l2pd_eval.errors import ConfigError, ConfigFileNotFound

# Re-exported for the task YAMLs' utils.py (tasks/l2pd_suite); the import also registers the filter.
from l2pd_eval.harness.tasks_code import pass_at_1, pass_at_1_humaneval  # noqa: F401

DATA_DIR_ENV = "L2PD_DATA_DIR"
# Keys our YAMLs add on top of lm-eval's TaskConfig; removed before the config reaches lm-eval.
OUR_KEYS = ("class", "include_lm_eval", "local_data")
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


# --------------------------------------------------------------------------------------------------
# Including lm-eval's task configs


def lm_eval_tasks_dir() -> Path:
    """Folder of lm-eval's bundled task YAMLs, wherever lm-eval is installed."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


@dataclass(frozen=True)
class FunctionRef:
    """A ``!function`` tag of an included YAML, kept unresolved until we know it is still used."""

    spec: str
    base_dir: Path

    def resolve(self) -> Any:
        # lm-eval's own resolver: loads ``utils.py`` beside the YAML under lm-eval's module name.
        from lm_eval.tasks._yaml_loader import _import_func_in_yml

        return _import_func_in_yml(self.spec, self.base_dir)


def _lazy_loader(base_dir: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def ctor(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
        return FunctionRef(loader.construct_scalar(node), base_dir)  # type: ignore[arg-type]

    Loader.add_constructor("!function", ctor)
    return Loader


def load_yaml_lazy(path: Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """lm-eval's YAML semantics (nested ``include``, local keys win) with lazy ``!function``."""
    path = path.resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    with path.open("rb") as fh:
        cfg = yaml.load(fh, Loader=_lazy_loader(path.parent))  # noqa: S506 (SafeLoader subclass)
    if not isinstance(cfg, dict):
        raise ValueError(f"expected a YAML mapping in {path}, got {type(cfg).__name__}")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        sub = load_yaml_lazy(inc_path, _seen | {path})
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged


def resolve_refs(obj: Any) -> Any:
    """Resolve every :class:`FunctionRef` left in a (nested) config."""
    if isinstance(obj, FunctionRef):
        return obj.resolve()
    if isinstance(obj, dict):
        return {k: resolve_refs(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_refs(v) for v in obj]
    return obj


def load_lm_eval_base(rel_path: str) -> dict[str, Any]:
    """The config of one of lm-eval's bundled tasks, ``!function`` tags left unresolved."""
    root = lm_eval_tasks_dir()
    path = (root / rel_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"include_lm_eval: {rel_path!r} is not a file under lm-eval's task folder {root}"
        )
    cfg = load_yaml_lazy(path)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)  # the base's tags would list our task under lm-eval's tag names
    return cfg


def load_function_isolated(path: Path, name: str) -> Any:
    """A module-level function of ``path``, defined without running the rest of the module.

    For self-contained helpers (e.g. a function returning few-shot examples) in a module whose import
    has side effects; fails if the function needs anything else from its module.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            namespace: dict[str, Any] = {}
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
            return namespace[name]
    raise AttributeError(f"{path} defines no top-level function {name!r}")


def mbpp_fewshot_samples() -> list[dict]:
    """lm-eval's MBPP few-shot examples (``mbpp/utils.py:list_fewshot_samples``), no Hub access.

    Importing that module runs HF evaluate's ``code_eval`` load and self-test (network, and
    HF_ALLOW_CODE_EVAL=1), so only the function itself is taken from lm-eval's source.
    """
    return load_function_isolated(lm_eval_tasks_dir() / "mbpp" / "utils.py", "list_fewshot_samples")()


# --------------------------------------------------------------------------------------------------
# Local data files


def local_data_files(
    task: str, local_data: dict[str, str], cfg: dict[str, Any], root: Path
) -> dict[str, str]:
    """Map each split in ``local_data`` to an existing file under ``root``, or fail naming it."""
    fmt = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float))}
    files: dict[str, str] = {}
    for split, pattern in local_data.items():
        try:
            rel = str(pattern).format(**fmt)
        except KeyError as err:
            raise ValueError(f"{task}: local_data[{split!r}] = {pattern!r} uses unknown key {err}") from None
        path = root / rel
        if not path.is_file():
            raise ConfigFileNotFound(
                f"{task}: {DATA_DIR_ENV}={root} is set, but the {split!r} split file {path} does not "
                f"exist (expected layout: {DATA_DIR_ENV}/{rel}, HF schema, one JSON object per line)"
            )
        files[split] = str(path)
    return files


def apply_local_data(cfg: dict[str, Any], local_data: dict[str, str] | None, root: Path) -> dict[str, Any]:
    """Point a task config at local files: ``dataset_path: json`` + ``data_files``."""
    task = cfg.get("task", "?")
    if not local_data:
        raise ConfigError(f"{task}: {DATA_DIR_ENV} is set but this task declares no local_data mapping")
    files = local_data_files(task, local_data, cfg, root)
    suffixes = {Path(p).suffix for p in files.values()}
    builders = {_DATA_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"{task}: local data files must share one format among {sorted(_DATA_BUILDERS)}, got {sorted(suffixes)}"
        )
    out = dict(cfg)
    out["dataset_path"] = builders.pop()
    out["dataset_name"] = None
    out["dataset_kwargs"] = {"data_files": files}
    for key in _SPLIT_KEYS:
        split = out.get(key)
        if split is not None and split not in files:
            if key in ("test_split", "fewshot_split"):
                raise ValueError(f"{task}: {key} {split!r} needs a local_data entry (have {sorted(files)})")
            out[key] = None  # e.g. minerva's training_split: few-shot samples are fixed in the config
    return out


# --------------------------------------------------------------------------------------------------
# The task class named by our YAMLs


def build_task_config(config: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Our YAML keys on top of the included lm-eval config; the result is a plain lm-eval config."""
    environ = os.environ if environ is None else environ
    ours = dict(config)
    ours.pop("class", None)
    base_rel = ours.pop("include_lm_eval", None)
    local_data = ours.pop("local_data", None)
    cfg = load_lm_eval_base(base_rel) if base_rel else {}
    base_meta = cfg.get("metadata") or {}
    cfg.update(ours)  # local keys win, as with lm-eval's include
    # metadata is bookkeeping (version, config_source, run metadata): merged, not replaced.
    meta = {**base_meta, **(ours.get("metadata") or {}), "l2pd_include_lm_eval": base_rel}
    data_dir = environ.get(DATA_DIR_ENV)
    if data_dir:
        cfg = apply_local_data(cfg, local_data, Path(data_dir).expanduser())
        meta["l2pd_data_files"] = cfg["dataset_kwargs"]["data_files"]
    cfg["metadata"] = meta
    return resolve_refs(cfg)


class L2PDTask(ConfigurableTask):
    """A ConfigurableTask whose config is ``include_lm_eval`` + our overrides (+ local data)."""

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        if config is None:
            raise ValueError("L2PDTask needs the task config (it is built from a YAML with class: L2PDTask)")
        cfg = build_task_config(config)
        try:
            super().__init__(data_dir, cache_dir, download_mode, config=cfg)
        except (ConnectionError, FileNotFoundError) as err:
            raise no_offline_data(cfg, config.get("local_data"), err) from None


def no_offline_data(cfg: dict[str, Any], local_data: dict[str, str] | None, err: Exception,
                    environ: dict[str, str] | None = None) -> Exception:
    """The error for a dataset the Hub cannot give (offline, or not cached) while ``L2PD_DATA_DIR`` is unset
    or empty: it names the variable and the files it should hold. Other failures are returned unchanged."""
    environ = os.environ if environ is None else environ
    value = environ.get(DATA_DIR_ENV)
    if value or not local_data:
        return err
    fmt = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float))}
    files = ", ".join(f"{split}: {str(rel).format(**fmt)}" for split, rel in local_data.items())
    state = "is empty" if value == "" else "is not set"
    return ConfigError(f"{cfg.get('task', '?')}: {DATA_DIR_ENV} {state} and its dataset {cfg.get('dataset_path')!r} "
                       f"could not be loaded from the Hugging Face hub or its cache ({err}); set {DATA_DIR_ENV} to "
                       f"a folder holding {files} (docs/tasks.md), or allow downloads (unset HF_DATASETS_OFFLINE)")
