"""Learn2PD: a learned filter f_theta scores the block's confidence vector; positions it accepts
(sigmoid > accept_thres) are committed together with the vanilla schedule's top-k."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, RunSettings, Selection, StepState, topk_mask
from l2pd_eval.policies.filter_net import check_block_length, load_filter, trained_elsewhere
from l2pd_eval.policies.registry import register

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # each (filter, model) mismatch is said once a process


@register
@dataclass
class Learn2PD(Policy):
    filter: str | None = None
    accept_thres: float | None = None  # default: the threshold stored with the filter (0.96 unless tuned)

    name = "learn2pd"

    def __post_init__(self) -> None:
        if not self.filter:
            raise ConfigError("policy=learn2pd needs filter=<path to a trained filter checkpoint> "
                              "(train one with `l2pd-eval train-filter`; there is no silent default)")
        # The loaded network is state, not a parameter: a plain attribute, so it is never a model_arg.
        self._net = load_filter(self.filter, accept_threshold=self.accept_thres)
        self.accept_thres = self._net.accept_threshold

    def bind(self, run: RunSettings) -> Learn2PD:
        """A filter reads one confidence per block position: it only serves the block length it was trained on.
        A filter trained on another model's trajectories still runs, but one warning names both models."""
        check_block_length(self._net, run.block_length, source=str(self.filter))
        if run.model is not None:
            why = trained_elsewhere(self._net, run.model, str(self.filter))
            if why is not None and why not in _WARNED:
                _WARNED.add(why)
                log.warning(why)
        return self.to(run.device)

    def to(self, device: torch.device) -> Learn2PD:
        self._net = self._net.to(device)
        return self

    def select(self, state: StepState) -> Selection:
        accepted = self._net.accept(state.conf, state.masked, state.live)  # zeros past an EoTP cut
        return Selection(topk_mask(state.masked_conf, state.k) | accepted, accepted=accepted)
