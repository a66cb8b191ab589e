"""Learn2PD filter: trajectory recording and training. The network and its checkpoints live in
:mod:`l2pd_eval.policies.filter_net` (the learn2pd policy needs them without this package's engine imports)."""

from l2pd_eval.policies.filter_net import (
    FilterBlockLengthError,
    FilterConfig,
    L2PFilter,
    convert_published_state_dict,
    load_filter,
    save_filter,
)

__all__ = [
    "FilterBlockLengthError",
    "FilterConfig",
    "L2PFilter",
    "convert_published_state_dict",
    "load_filter",
    "save_filter",
]
