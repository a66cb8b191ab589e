"""Make the stock ``lm_eval`` CLI see the ``learn2pd`` model, the ``tasks/`` of this package and our sidecar.

lm-eval 0.4.13 has no plugin entry point for models or task folders. A ``.pth`` file installed beside
the package calls :func:`install` at interpreter start; it only puts a finder on ``sys.meta_path``
(no torch, no lm-eval import). When lm-eval itself imports one of these modules, the finder patches it
right after it ran (:data:`_AFTER`):

* ``lm_eval.api.registry``: registers a *lazy* placeholder ``learn2pd`` ->
  :data:`MODEL_TARGET` (lm-eval's own placeholders are filled in first, so they keep resolving).
* ``lm_eval.tasks.manager``: ``TaskManager.__init__`` puts our task folder (:func:`task_dir`) first on
  every include path (user paths after it, so they may override ours).
* ``lm_eval.loggers.evaluation_tracker``: after ``EvaluationTracker.save_results_aggregated`` wrote
  ``results_<stamp>.json``, the pending sidecars of that model go beside it as ``l2pd_<stamp>.json``
  (:func:`l2pd_eval.harness.recorder.flush_sidecars`).
* ``lm_eval.api.model``: ``CachingLM`` (``--use_cache``) lets the model tie the db to its model_args
  before opening it (``bind_cache_db``), shows every request of a ``generate_until`` call to the
  model's ``restore_cached`` before it answers the cached ones itself, and makes a data-parallel rank
  whose requests were all cached join the call's collective.
* ``lm_eval.evaluator``: ``simple_evaluate`` with ``model="learn2pd"`` checks every task's generation
  kwargs merged with ``--gen_kwargs`` before the model loads (:func:`l2pd_eval.harness.gen_kwargs.check_tasks`).
* ``lm_eval._cli.harness``: ``HarnessCLI.execute`` prints our configuration errors
  (:class:`l2pd_eval.errors.ConfigError`) as one line and exits with status 2; every other exception
  keeps lm-eval's behaviour. A sidecar that could not be written makes it exit with status 1.

Each patch is applied once (a ``_l2pd_patched`` flag on the class); :func:`install` called after lm-eval
was imported (a notebook) patches the modules already loaded. Set ``L2PD_EVAL_NO_HOOK=1`` to switch
the hook off (``python -m l2pd_eval.harness.lm_eval_cli`` still installs it).
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
        recorder = sys.modules.get("l2pd_eval.harness.recorder")  # imported by the model, if one was built
        if recorder is not None and self.output_path and getattr(self, "date_id", None):
            from pathlib import Path

            path = Path(self.output_path)
            folder = path.parent if path.suffix == ".json" else path / str(
                self.general_config_tracker.model_name_sanitized)
            recorder.flush_sidecars(folder, self.date_id, getattr(self.general_config_tracker, "model_name", None))
        return out

    cls.save_results_aggregated = save_results_aggregated
    cls._l2pd_patched = True


def _after_model(module) -> None:
    """``--use_cache``: lm-eval's CachingLM answers cached requests itself and hands the model only the
    rest, so the model never sees the cached ones. Show them to a model that wants them
    (``restore_cached``) first, so the learn2pd sidecar re-attaches their timing (l2pd_eval/harness/resume.py).
    A model with ``bind_cache_db`` sees the db's path before lm-eval opens it (its answers' model_args)."""
    cls = module.CachingLM
    if getattr(cls, "_l2pd_patched", False):
        return
    original_init, original = cls.__init__, cls.__getattr__

    def __init__(self, lm, cache_db, *args, **kwargs):
        bind = getattr(lm, "bind_cache_db", None)
        if bind is not None:
            bind(cache_db)
        original_init(self, lm, cache_db, *args, **kwargs)

    def __getattr__(self, attr):
        fn = original(self, attr)
        restore = getattr(self.lm, "restore_cached", None)
        if attr != "generate_until" or restore is None:
            return fn

        def generate_until(requests, *args, **kwargs):
            restore(requests, self.dbdict)
            calls = getattr(self.lm, "generate_calls", None)
            out = fn(requests, *args, **kwargs)
            if calls is not None and self.lm.generate_calls == calls and getattr(self.lm, "world_size", 1) > 1:
                # every request of this rank came from the db, so CachingLM never called the model; its
                # generate_until is collective (rank 0 gathers the sidecar records), so join it empty.
                self.lm.generate_until([])
            return out

        return generate_until

    cls.__init__, cls.__getattr__ = __init__, __getattr__
    cls._l2pd_patched = True


def _after_evaluator(module) -> None:
    """``simple_evaluate(model="learn2pd", ...)``: the tasks' generation kwargs (with ``--gen_kwargs``) are
    checked against what the decoder honours before the model is loaded, not after."""
    original = module.simple_evaluate
    if getattr(original, "_l2pd_patched", False):
        return

    def simple_evaluate(*args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if model == MODEL_NAME:
            from l2pd_eval.harness.gen_kwargs import check_tasks

            check_tasks(kwargs.get("tasks"), kwargs.get("gen_kwargs"), kwargs.get("task_manager"))
        return original(*args, **kwargs)

    simple_evaluate.__doc__, simple_evaluate.__wrapped__ = original.__doc__, original
    simple_evaluate._l2pd_patched = True
    module.simple_evaluate = simple_evaluate


def _after_cli(module) -> None:
    """The stock CLI: a :class:`~l2pd_eval.errors.ConfigError` is one line and exit status 2."""
    cls = module.HarnessCLI
    if getattr(cls, "_l2pd_patched", False):
        return
    original = cls.execute

    def execute(self, args):
        from l2pd_eval.errors import ConfigError, report

        try:
            out = original(self, args)
        except ConfigError as err:
            raise SystemExit(report(err, "lm_eval")) from None
        recorder = sys.modules.get("l2pd_eval.harness.recorder")
        failures = recorder.write_failures() if recorder is not None else []
        for line in failures:
            print(f"lm_eval: error: {line}", file=sys.stderr, flush=True)
        if failures:
            raise SystemExit(1)
        return out

    cls.execute = execute
    cls._l2pd_patched = True


_AFTER = {"lm_eval.api.registry": _after_registry, "lm_eval.tasks.manager": _after_manager,
          "lm_eval.loggers.evaluation_tracker": _after_tracker, "lm_eval.api.model": _after_model,
          "lm_eval.evaluator": _after_evaluator, "lm_eval._cli.harness": _after_cli}


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
