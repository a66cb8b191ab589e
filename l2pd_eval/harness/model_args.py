"""``--model_args`` of ``--model learn2pd``: one typed parse, joined with the settings lm-eval passes itself.

Every key is ours (:class:`ModelArgs`), the chosen policy's or the chosen cache's; each value is coerced once
by its field's type (:mod:`l2pd_eval.typed_args`), so a bad value is one error naming the key and its valid values
(docs/errors.md), raised before the model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from l2pd_eval.caches import cache_params, parse_cache_params
from l2pd_eval.engine import EotpMode, GenerationConfig
from l2pd_eval.engine.config import EosConfRule
from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy
from l2pd_eval.policies.registry import parse_policy_params, policy_class, policy_params
from l2pd_eval.typed_args import INTEGER, coerce_fields, parameters

log = logging.getLogger(__name__)

Tristate = Literal["auto", "true", "false"]
#: lm-eval 0.4.13 passes ``device="cuda:0"`` when --device is not given (EvaluatorConfig's default).
LM_EVAL_DEFAULT_DEVICE = "cuda:0"
#: The decode length when neither gen_length= nor the task's max_gen_toks says otherwise.
DEFAULT_GEN_LENGTH = 256
#: batch_size=auto: rows are sized for prompts of this many tokens (engine/memory.py's ``prompt_len``).
AUTO_PROMPT_BUDGET = 1024
#: batch_size=auto without max_batch_size: at most this many rows.
AUTO_BATCH_CAP = 64


@dataclass
class ModelArgs:
    """Everything ``--model_args`` accepts besides the chosen policy's and cache's own parameters.

    Built only by :func:`parse_model_args`, so every field already has its declared type (and
    ``cache_params`` holds the cache's parameters, all of them, defaults filled in).
    """

    pretrained: str
    tokenizer: str | None = None
    revision: str | None = None
    adapter: str | None = None        # a LoRA adapter (folder or hub id) merged into pretrained= (needs peft)
    policy: str = "low_confidence"
    cache: str = "none"
    eotp: EotpMode = "false"           # "true": the Learn2PD code's rule; "committed": after a committed end;
    #                                    "block_end": at the end of a finished block holding an end (DPad, dInfer)
    eot_ids: str | None = None        # ';'-separated ids (commas separate model_args); default: eos + eot_id
    gen_length: int | None = None     # default: each request's max_gen_toks, rounded up to a block multiple
    block_length: int = 32
    steps: int | None = None
    temperature: float | None = None  # given: wins over the tasks' gen_kwargs (harness/gen_kwargs.py)
    seed: int = 0
    eos_conf_zero: bool = False       # LLaDA's confidence_eos_eot_inf: end predictions get confidence 0
    eos_conf_rule: EosConfRule = "code"  # code (LLaDA's generate.py) / fixed (its PR #139) / zero (no renormalising)
    logits_eos_inf: bool = False      # LLaDA's logits_eos_inf: end-of-text is never predicted
    dtype: str = "auto"
    device: str | None = None
    batch_size: int | str = 1         # rows per batch, or auto: sized per (gen_length, temperature)
    max_batch_size: int | None = None
    chat: Tristate = "auto"           # auto: the model family's rule (model/family.py, instruct_marker)
    add_bos_token: Tristate = "auto"  # BOS before plain (non-chat) prompts; auto: the model family's rule
    mask_id: int | None = None
    eos_id: int | None = None
    sidecar: str | None = None        # explicit sidecar path; default: beside lm-eval's --output_path results
    checkpoint_s: float = 10.0        # partial sidecar rewritten at most this often (0: after every batch)
    progress_every_s: float = 30.0    # off a terminal: one progress line at most this often (0: every batch)
    cuda_graph: Tristate = "auto"     # CUDA-graph replay of cached steps; auto: on for CUDA devices
    compile: bool = False             # torch.compile the transformer blocks (docs/benchmarks.md)
    compile_autotune: bool = False    # compile: time reduction kernels' configs (l2pd_eval/model/compiling.py)
    skinny_gemm: bool = False         # few-row GEMMs through the Triton kernel (l2pd_eval/model/skinny.py; CUDA)
    progress: bool = True
    mc_num: int = 128                 # loglikelihood: Monte-Carlo samples per (context, continuation)
    mc_batch_size: int = 32           # loglikelihood: sample rows per forward pass
    constraints: str = "auto"         # fixed answer tokens "OFFSET:WORD|..."; auto: the policy's (Prophet's)
    cache_params: dict[str, Any] = field(default_factory=dict, init=False)  # set by parse_model_args

    def __post_init__(self) -> None:
        for name in ("block_length", "gen_length", "steps", "max_batch_size", "mc_num", "mc_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be a positive integer")
        for name in ("checkpoint_s", "progress_every_s", "temperature"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name}={value} must be >= 0")
        self.end_ids()
        self.fixed_batch_size()
        if self.compile_autotune and not self.compile:
            raise ConfigError("compile_autotune=true only applies with compile=true; add compile=true or drop it")
        if self.gen_length is None and self.steps is not None:
            raise ConfigError("steps= needs an explicit gen_length= (by default gen_length follows each task's "
                              "max_gen_toks and steps = gen_length)")

    def end_ids(self) -> list[int] | None:
        """``eot_ids=`` as ids (None: the tokenizer's eos and the family's end of turn)."""
        if self.eot_ids is None:
            return None
        parts = [p.strip() for p in self.eot_ids.split(";") if p.strip()]
        if not parts or not all(INTEGER.match(p) for p in parts):
            raise ConfigError(f"eot_ids={self.eot_ids!r}; valid: token ids separated by ';', e.g. eot_ids=126081;126348")
        return [int(p) for p in parts]

    def fixed_batch_size(self) -> int | None:
        """The rows per batch, or None for ``auto`` (lm-eval's ``auto:N`` spelling included)."""
        if isinstance(self.batch_size, str):
            if self.batch_size.startswith("auto"):
                return None
            raise ConfigError(f"batch_size={self.batch_size!r}; valid choices: a positive integer or auto")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size={self.batch_size} must be positive")
        return self.batch_size

    def gen_length_for(self, max_gen_toks: int | None) -> int:
        """gen_length= if given; else the task's max_gen_toks rounded up to whole blocks (the 256/1024 tasks)."""
        if self.gen_length is not None:
            return self.gen_length
        want = int(max_gen_toks or DEFAULT_GEN_LENGTH)
        return -(-want // self.block_length) * self.block_length

    def generation_config(self, gen_length: int, temperature: float | None,
                          constraints: tuple[tuple[int, int], ...] = ()) -> GenerationConfig:
        """The engine's settings for one (decode length, temperature); ``temperature`` None: the run's.
        ``constraints``: fixed answer tokens as ids (:meth:`constraint_ids`)."""
        return GenerationConfig(
            gen_length=gen_length, block_length=self.block_length, steps=self.steps,
            temperature=(self.temperature or 0.0) if temperature is None else temperature,
            cache=self.cache, cache_params=self.cache_params, eotp=self.eotp, seed=self.seed,
            eos_conf_zero=self.eos_conf_zero, eos_conf_rule=self.eos_conf_rule, logits_eos_inf=self.logits_eos_inf,
            constraints=constraints)

    def constraints_text(self, default: str | None) -> str:
        """``constraints=`` as text: ``auto`` is the policy's ``default`` (none for most), ``none`` is none."""
        if self.constraints.strip().lower() == "auto":
            return default or ""
        return "" if self.constraints.strip().lower() == "none" else self.constraints

    def constraint_offsets(self, default: str | None) -> tuple[int, ...]:
        """The answer offsets ``constraints=`` names (each word's first token), before any tokenizer."""
        return tuple(o for o, _ in self.constraint_ids(None, default))

    def constraint_ids(self, tokenizer: Any, default: str | None) -> tuple[tuple[int, int], ...]:
        """``constraints=`` in the authors' spelling (Prophet's ``eval_llada.py`` ``constraints_text``:
        ``"200:The|201:answer|202:is"``) as (answer offset, token id) pairs: each word is tokenized as
        ``" " + word`` without special tokens, its ids at ``offset, offset + 1, ...``."""
        text = self.constraints_text(default)
        out: dict[int, int] = {}
        for part in filter(None, (p.strip() for p in text.split("|"))):
            offset, sep, word = part.partition(":")
            if not sep or not INTEGER.match(offset.strip()) or int(offset) < 0 or not word.strip():
                raise ConfigError(f"constraints={self.constraints!r}: each part is OFFSET:WORD with OFFSET an answer "
                                  f"offset >= 0, e.g. constraints=200:The|201:answer|202:is (or auto, none)")
            ids = [-1] if tokenizer is None else tokenizer.encode(" " + word.strip(), add_special_tokens=False)
            for i, tid in enumerate(ids):
                out[int(offset) + i] = int(tid)
        return tuple(sorted(out.items()))


def parse_model_args(raw: Mapping[str, Any]) -> tuple[ModelArgs, dict[str, Any]]:
    """The one parse of ``--model_args``: (typed ModelArgs with the cache's parameters in ``cache_params``,
    typed parameters of the chosen policy).

    ``None`` means "not given" (lm-eval reads ``key=none`` as None). Each value is coerced once by its
    field's type (:mod:`l2pd_eval.typed_args`); names that are neither ours, the policy's nor the cache's
    are an error listing all three.
    """
    values = {k: v for k, v in raw.items() if v is not None}
    if "pretrained" not in values:
        raise ConfigError("model_args: pretrained=<LLaDA directory, hub id or random:<preset>> is required")
    own = parameters(ModelArgs)
    args = ModelArgs(**coerce_fields(ModelArgs, {k: v for k, v in values.items() if k in own}))
    rest = {k: v for k, v in values.items() if k not in own}
    for_cache = set(cache_params(args.cache))
    clash = sorted(for_cache & set(policy_params(args.policy)) & set(rest))
    if clash:
        raise ValueError(f"model_args: {', '.join(clash)} is a parameter of both policy={args.policy!r} and "
                         f"cache={args.cache!r} (a cache's parameters are named after it so this cannot happen: report it)")
    args.cache_params = parse_cache_params(args.cache, {k: v for k, v in rest.items() if k in for_cache})
    return args, parse_policy_params(args.policy, {k: v for k, v in rest.items() if k not in for_cache},
                                     also_valid={*own, *for_cache})


#: model_args that only decoding reads: a loglikelihood request (MMLU-style choices) uses none of them.
DECODING_ARGS = ("policy", "cache", "eotp", "gen_length", "block_length", "steps", "eos_conf_zero", "eos_conf_rule",
                 "logits_eos_inf")


def settings_that_cannot_act(args: ModelArgs, policy: Policy, given: Collection[str]) -> list[str]:
    """One line per setting the user gave (``given``: the model_args keys) that the run cannot honour, for the
    adapter to say once (Fast-dLLM issues #38 and #54: a threshold on MMLU, steps with a threshold rule)."""
    lines = []
    if "steps" in given and not policy.scheduled:
        lines.append(f"steps={args.steps} cannot act: policy={policy.name!r} is not scheduled (it decodes each "
                     f"block until it is filled, at most block_length={args.block_length} steps); drop steps=")
    if args.eos_conf_zero and not policy.reads_conf:
        lines.append(f"eos_conf_zero=true cannot act: policy={policy.name!r} does not rank by the model's "
                     f"confidence of x0")
    if "eos_conf_rule" in given and not args.eos_conf_zero:
        lines.append(f"eos_conf_rule={args.eos_conf_rule} cannot act without eos_conf_zero=true")
    return lines


def likelihood_cannot_use(policy: Policy, given: Collection[str]) -> str | None:
    """The line a run with decoding settings says once when lm-eval asks it for log-likelihoods."""
    named = [k for k in given if k in DECODING_ARGS or k in policy.parameters()]
    if not named:
        return None
    return (f"loglikelihood requests (multiple-choice tasks such as MMLU) are scored by the Monte-Carlo likelihood "
            f"(mc_num=, mc_batch_size=), not decoded: {', '.join(sorted(named))} cannot act on them")


def merge_lm_eval_settings(model_args: Mapping[str, Any], lm_eval: Mapping[str, Any]) -> dict[str, Any]:
    """Join --model_args with the settings lm-eval always passes (batch_size, max_batch_size, device).

    lm-eval hands over its own values even when the user gave none, so a key in both would be a
    ``TypeError: got multiple values``: --model_args wins and the override is said once. lm-eval's default
    ``device=cuda:0`` on a machine without CUDA is no request at all: the model picks its device itself.
    """
    merged = dict(model_args)
    for key, value in lm_eval.items():
        if value is None:
            continue
        if key in model_args:
            if str(model_args[key]) != str(value):
                log.warning("model_args %s=%s overrides lm-eval's --%s %s", key, model_args[key], key, value)
            continue
        if key == "device" and value == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            continue
        merged[key] = value
    return merged


def accepted_model_args() -> dict[str, str]:
    """Every key ``--model_args`` accepts -> who takes it (``model_args``, ``policy <name>``, ``cache <name>``):
    :class:`ModelArgs`' fields, each registered policy's parameters, and the parameters a registered cache
    declares (a ``parameters()`` classmethod, as policies have). The README's table lists each one
    (tests/test_readme.py)."""
    from l2pd_eval.caches import available as caches
    from l2pd_eval.caches import cache_class
    from l2pd_eval.policies.registry import available as policies

    out = dict.fromkeys(parameters(ModelArgs), "model_args")
    for name in policies():
        for key in policy_class(name).parameters():
            out.setdefault(key, f"policy {name}")
    for name in caches():
        declared = getattr(cache_class(name), "parameters", None)
        for key in (declared() if callable(declared) else {}):
            out.setdefault(key, f"cache {name}")
    return out
