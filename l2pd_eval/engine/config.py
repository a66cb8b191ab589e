"""What is decoded: the settings that change answers. How fast it is decoded is ``engine.speed``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from l2pd_eval.caches import available as cache_names
from l2pd_eval.caches import parse_cache_params
from l2pd_eval.engine.predict import EOS_CONF_RULES
from l2pd_eval.errors import ConfigError

# EoTP rules (docs/conventions.md): "true" = Learn2PD's reference code (cut after a *predicted* end),
# "committed" = cut after a *committed* end token, "block_end" = DPad's and dInfer's early termination
# (cut at the end of a finished block that holds an end token), "false" = none.
EotpMode = Literal["false", "true", "committed", "block_end"]
EOTP_MODES: tuple[str, ...] = ("false", "true", "committed", "block_end")
EosConfRule = Literal["code", "fixed", "zero"]


def eotp_mode(value: str | bool) -> str:
    """``GenerationConfig.eotp`` from a mode name or a bool (True = the reference rule ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in EOTP_MODES:
        raise ConfigError(f"eotp={value!r} is unknown; valid choices: {', '.join(EOTP_MODES)} (or a bool)")
    return text


@dataclass
class GenerationConfig:
    """Decoding settings. ``steps`` (total, default ``gen_length``) drives the linear schedule of the
    scheduled policies (low_confidence, random, learn2pd); threshold/factor/oracle ignore it."""

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    temperature: float = 0.0
    cache: str = "none"  # a registered forward strategy (caches.available())
    cache_params: dict[str, Any] = field(default_factory=dict)  # its parameters (``Params`` fields), normalised
    #                                                             to all of them, defaults filled in
    eotp: EotpMode | bool = "false"  # normalised to a mode name (``eotp_mode``); True means "true"
    seed: int = 0
    # LLaDA generate.py's end-token knobs, for every policy (engine.predict.EndTokenKnobs):
    eos_conf_zero: bool = False  # confidence_eos_eot_inf: end-of-text/turn predictions get confidence 0
    eos_conf_rule: EosConfRule = "code"  # code (LLaDA's, EoT only above temperature 0) / fixed / zero
    logits_eos_inf: bool = False  # logits_eos_inf: end-of-text is never predicted
    # Fixed answer tokens, ((answer offset, token id), ...): written before decoding, never masked, so no
    # schedule counts them (Prophet's "The answer is"; model_arg ``constraints``, docs/conventions.md)
    constraints: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        self.eotp = eotp_mode(self.eotp)
        self.validate()

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // self.num_blocks

    def validate(self) -> None:
        if self.gen_length <= 0 or self.block_length <= 0:
            raise ConfigError(f"gen_length={self.gen_length} and block_length={self.block_length} must be > 0")
        if self.gen_length % self.block_length:
            raise ConfigError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}; "
                              f"choose gen_length a multiple of {self.block_length}")
        if self.total_steps <= 0 or self.total_steps % self.num_blocks:
            raise ConfigError(f"steps={self.total_steps} must be a positive multiple of the number of blocks "
                              f"({self.num_blocks} = gen_length / block_length)")
        if self.steps_per_block > self.block_length:
            raise ConfigError(f"steps={self.total_steps} gives {self.steps_per_block} steps per block, more than "
                              f"block_length={self.block_length}; use steps <= gen_length")
        if self.cache not in cache_names():
            raise ConfigError(f"cache={self.cache!r} is unknown; valid choices: {', '.join(cache_names())}")
        self.cache_params = parse_cache_params(self.cache, self.cache_params)
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0")
        eotp_mode(self.eotp)
        if self.eos_conf_rule not in EOS_CONF_RULES:
            raise ConfigError(f"eos_conf_rule={self.eos_conf_rule!r}; valid choices: {', '.join(EOS_CONF_RULES)}")
        self.constraints = tuple((int(o), int(t)) for o, t in self.constraints)
        offsets = [o for o, _ in self.constraints]
        bad = [str(o) for o in offsets if not 0 <= o < self.gen_length]
        if bad:
            raise ConfigError(f"constraints: answer offset(s) {', '.join(bad)} lie outside [0, gen_length="
                              f"{self.gen_length}) (offsets count from the answer's first token)")
        twice = sorted({str(o) for o in offsets if offsets.count(o) > 1})
        if twice:
            raise ConfigError(f"constraints: answer offset(s) {', '.join(twice)} given twice")
