"""Learn2PD filter: trajectory recording and training. The network and its checkpoints live in
:mod:`l2pd_eval.policies.filter_net` (the learn2pd policy needs them without this package's engine imports).

The re-exported names load on first use (PEP 562): the command line (:mod:`.cli`) and the settings
(:mod:`.config`) are torch-free, so ``l2pd-eval trajectories --help`` is instant."""

from importlib import import_module

__all__ = ["FilterBlockLengthError", "FilterConfig", "L2PFilter", "convert_published_state_dict", "load_filter",
           "save_filter"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module("l2pd_eval.policies.filter_net"), name)
    globals()[name] = value
    return value
