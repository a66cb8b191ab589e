"""Make the stock ``lm_eval`` CLI see the ``learn2pd`` model and the ``tasks/`` of this package.

lm-eval 0.4.13 has no plugin entry point for models or task folders. A ``.pth`` file installed beside
the package calls :func:`install` at interpreter start; it only puts a finder on ``sys.meta_path``
(no torch, no lm-eval import). When lm-eval itself imports ``lm_eval.api.registry`` we add a *lazy*
placeholder for our model class, and when it imports ``lm_eval.tasks.manager`` we append our task
folder to every ``TaskManager``'s include path. Set ``L2PD_EVAL_NO_HOOK=1`` to switch it off.
"""

from __future__ import annotations

import os
import sys

MODEL_NAME = "learn2pd"
MODEL_TARGET = "l2pd_eval.harness.lm_eval_model:Learn2PDLM"


def task_dir():
    """Installed wheels carry the YAMLs as ``l2pd_eval/tasks``; a source checkout has ``tasks/`` at the root."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1]  # l2pd_eval/
    for cand in (package / "tasks", package.parent / "tasks"):
        if cand.is_dir():
            return cand
    return None


def _after_registry(module) -> None:
    # Fill the registry with lm-eval's own lazy placeholders first: get_model() only does that itself
    # when the registry is empty, and ours would make it non-empty.
    import lm_eval.models  # noqa: F401  (cheap: a dict of strings)

    if MODEL_NAME not in module.model_registry:
        module.model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _after_manager(module) -> None:
    cls = module.TaskManager
    if getattr(cls, "_l2pd_patched", False):
        return
    original = cls.__init__

    def __init__(self, *args, include_path=None, **kwargs):
        from pathlib import Path

        ours = task_dir()
        if ours is not None:
            paths = [] if include_path is None else (
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            )
            if all(Path(p).resolve() != ours for p in paths):
                paths = [ours, *paths]  # user paths last: they may override ours
            include_path = paths
        original(self, *args, include_path=include_path, **kwargs)

    cls.__init__ = __init__
    cls._l2pd_patched = True


def _after_tracker(module) -> None:
    """Write the learn2pd timing sidecar beside the results file lm-eval just saved (same timestamp)."""
    cls = module.EvaluationTracker
    if getattr(cls, "_l2pd_patched", False):
        return
    original = cls.save_results_aggregated

    def save_results_aggregated(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        lm_mod = sys.modules.get("l2pd_eval.harness.lm_eval_model")
        if lm_mod is not None and self.output_path and getattr(self, "date_id", None):
            from pathlib import Path

            path = Path(self.output_path)
            folder = path.parent if path.suffix == ".json" else path / str(
                self.general_config_tracker.model_name_sanitized)
            lm_mod.flush_sidecars(folder, self.date_id, getattr(self.general_config_tracker, "model_name", None))
        return out

    cls.save_results_aggregated = save_results_aggregated
    cls._l2pd_patched = True


def _after_model(module) -> None:
    """``--use_cache``: lm-eval's CachingLM answers cached requests itself and hands the model only the
    rest, so the model never sees the cached ones. Show them to a model that wants them
    (``restore_cached``) first, so the learn2pd sidecar re-attaches their timing (l2pd_eval/harness/resume.py)."""
    cls = module.CachingLM
    if getattr(cls, "_l2pd_patched", False):
        return
    original = cls.__getattr__

    def __getattr__(self, attr):
        fn = original(self, attr)
        restore = getattr(self.lm, "restore_cached", None)
        if attr != "generate_until" or restore is None:
            return fn

        def generate_until(requests, *args, **kwargs):
            restore(requests, self.dbdict)
            calls = getattr(self.lm, "generate_calls", None)
            out = fn(requests, *args, **kwargs)
            if calls is not None and self.lm.generate_calls == calls and getattr(self.lm, "_world_size", 1) > 1:
                # every request of this rank came from the db, so CachingLM never called the model; its
                # generate_until is collective (rank 0 gathers the sidecar records), so join it empty.
                self.lm.generate_until([])
            return out

        return generate_until

    cls.__getattr__ = __getattr__
    cls._l2pd_patched = True


_AFTER = {"lm_eval.api.registry": _after_registry, "lm_eval.tasks.manager": _after_manager,
          "lm_eval.loggers.evaluation_tracker": _after_tracker, "lm_eval.api.model": _after_model}


class _Loader:
    """Wraps the real loader; plain class (importlib.abc costs import time at every start)."""

    def __init__(self, inner, name: str):
        self._inner, self._name = inner, name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _AFTER[self._name](module)


class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install(force: bool = False) -> None:
    if (os.environ.get("L2PD_EVAL_NO_HOOK") and not force) or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    # lm-eval already imported (e.g. install() called late, in a notebook): patch in place.
    for name, after in _AFTER.items():
        if name in sys.modules:
            after(sys.modules[name])
    sys.meta_path.insert(0, _Finder())
