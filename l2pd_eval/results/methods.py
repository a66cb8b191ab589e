"""Decoding methods (the report's rows): policy + parameters + KV cache + EoTP rule.

A run's method comes from its sidecar manifest, or from lm-eval's ``model_args`` when it has none;
``--baseline-method`` and baseline files name methods by the same fields. The EoTP rule is one of
``"false"``, ``"true"`` (the Learn2PD authors' rule), ``"committed"`` (cut after a committed end id) and
``"block_end"`` (DPad's and dInfer's early termination at a finished block holding an end id;
docs/conventions.md). A boolean ``true`` is read per source (:func:`eotp_rule_name`): sidecars and baselines
written before the rules were told apart stored ``true`` for what is now ``"committed"``.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from l2pd_eval.typed_args import FALSE_WORDS, TRUE_WORDS


@dataclass(frozen=True, order=True)
class Method:
    """A decoding method = policy (+ its parameters) + KV cache + EoTP; one table row. ``params`` holds the
    policy's and the cache's parameters in one namespace (a cache's are named after it: ``dpad_window``)."""

    policy: str
    params: tuple[tuple[str, str], ...] = ()
    cache: str = "none"
    eotp: str = "false"  # an EOTP_RULES name
    # Settings that change answers (runs.ANSWER_SETTINGS: model, sampling, prompt format, ...) in which
    # this row's runs differ from other runs of the same method in a column; empty when none do.
    variant: tuple[tuple[str, str], ...] = ()
    # The parameters the label shows: those the run's model_args named (its manifest records every parameter,
    # defaults filled in, and they stay in the key, so a run from before a default changed stays apart).
    # None: all of them (published cells and baselines spell out what they set).
    shown: frozenset[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.eotp not in EOTP_RULES:  # e.g. a bool from older code: say which rule (eotp_rule_name reads one)
            raise ValueError(f"Method.eotp={self.eotp!r}: use one of {', '.join(EOTP_RULES)}")

    @property
    def label(self) -> str:
        text = self.policy
        params = [(k, v) for k, v in self.params if self.shown is None or k in self.shown]
        if params:
            text += "(" + ", ".join(f"{k}={v}" for k, v in params) + ")"
        if self.cache and self.cache != "none":
            text += f" + {self.cache} cache"
        if self.eotp != "false":
            text += EOTP_LABELS[self.eotp]
        if self.variant:
            text += " [" + ", ".join(f"{k}={v}" for k, v in self.variant) + "]"
        return text

    @property
    def base(self) -> Method:
        """The method without its variant (what the paper and a baseline spec name)."""
        return replace(self, variant=())

    def sort_key(self) -> tuple:
        order = {p: i for i, p in enumerate(POLICY_ORDER)}
        caches = {c: i for i, c in enumerate(CACHE_ORDER)}
        return (order.get(self.policy, len(order)), self.policy, EOTP_RULES.index(self.eotp),
                caches.get(self.cache, len(caches)), self.cache, _numeric_order(self.params), self.variant)

    def to_json(self) -> dict[str, Any]:
        out = {"policy": self.policy, "params": dict(self.params), "cache": self.cache, "eotp": self.eotp}
        if self.variant:
            out["variant"] = dict(self.variant)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], bool_true: str = "committed") -> Method:
        """A stored method (baseline files); a boolean ``eotp: true`` there predates the rule names."""
        method = method_from_settings(data.get("policy"), data.get("params") or {}, data.get("cache"),
                                      data.get("eotp"), bool_true=bool_true)
        variant = tuple(sorted((str(k), str(v)) for k, v in (data.get("variant") or {}).items()))
        return Method(method.policy, method.params, method.cache, method.eotp, variant)


def _numeric_order(params: tuple[tuple[str, str], ...]) -> tuple:
    """Parameters in numeric order where they are numbers (a sweep's 0.5 < 0.55 < 0.9 < 0.95)."""
    out = []
    for key, value in params:
        try:
            out.append((key, 0, float(value), ""))
        except ValueError:
            out.append((key, 1, 0.0, value))
    return tuple(out)


# Policy parameters read from lm-eval's model_args when a run has no sidecar (the policies' field names).
MODEL_ARGS_PARAMS = ("threshold", "factor", "accept_thres", "filter")
# The end-token knobs (model_args of every policy, engine/predict.py) change answers, so a method carries the
# ones that are on; absent means this value (published cells spell out their setting, LLaDA's EVAL.md).
KNOB_DEFAULTS = {"eos_conf_zero": "false", "eos_conf_rule": "code", "logits_eos_inf": "false"}
POLICY_ORDER = ("low_confidence", "random", "threshold", "factor", "learn2pd", "oracle")
# l2pd_eval.caches.available(), spelled out to keep results torch-free (tests/test_caches.py checks they agree)
CACHE_ORDER = ("none", "prefix", "dual", "dpad", "dpad_prefix", "dpad_dual", "vicinity", "dllm_cache", "dkv_decode",
               "block")
# Every registered cache's parameters (model_args keys; the same check), read from model_args without a sidecar
CACHE_PARAMS: tuple[str, ...] = (
    "dpad_dropout", "dpad_sigma", "dpad_scale", "dpad_window", "dpad_preserved",
    "vicinity_prefix", "vicinity_after", "vicinity_warmup", "vicinity_double_refresh", "vicinity_smooth",
    "vicinity_smooth_init", "vicinity_smooth_growth",
    "dllm_cache_prompt_interval", "dllm_cache_gen_interval", "dllm_cache_transfer_ratio", "dkv_refresh")
EOTP_RULES = ("false", "true", "committed", "block_end")  # also the rows' order
EOTP_LABELS = {"true": " + EoTP", "committed": " + EoTP (committed)", "block_end": " + early stop (block end)"}
# The boolean words of the strict rule, plus what model_args accepted before it (yes/on, no/off, empty),
# which older results files may hold.
_TRUE_SPELLINGS = {*TRUE_WORDS, "yes", "on"}
_FALSE_SPELLINGS = {*FALSE_WORDS, "no", "off", ""}


def _fmt_param(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        # A filter checkpoint path: its file name identifies it, the folder does not.
        return os.path.basename(value.rstrip("/\\")) if ("/" in value or "\\" in value) else value
    return None  # lists/dicts/None do not go into a row label


def knob_params(settings: dict[str, Any]) -> dict[str, Any]:
    """The end-token knobs that are on in a manifest or model_args (``eos_conf_rule`` only with
    ``eos_conf_zero``, and only when not the default)."""
    on: dict[str, Any] = {}
    if str(settings.get("eos_conf_zero", "")).strip().lower() in _TRUE_SPELLINGS:
        on["eos_conf_zero"] = True
        rule = settings.get("eos_conf_rule")
        if rule is not None and str(rule) != KNOB_DEFAULTS["eos_conf_rule"]:
            on["eos_conf_rule"] = str(rule)
    if str(settings.get("logits_eos_inf", "")).strip().lower() in _TRUE_SPELLINGS:
        on["logits_eos_inf"] = True
    return on


def eotp_rule_name(value: Any, bool_true: str = "committed") -> str:
    """The EoTP rule's name (an :data:`EOTP_RULES` entry) a recorded ``eotp`` value stands for.

    Strings are today's spellings (``true``/``1``/``yes`` = the authors' rule). A JSON/Python boolean
    ``True`` is ``bool_true``: ``"committed"`` for sidecar manifests and stored baselines (written as a
    boolean only before the two rules were told apart, when EoTP was the committed rule), ``"true"`` for
    published tables (the authors' numbers).
    """
    if value is None or value is False:
        return "false"
    if value is True:
        return bool_true
    text = str(value).strip().lower()
    if text in _FALSE_SPELLINGS:
        return "false"
    if text in _TRUE_SPELLINGS:
        return "true"
    if text in ("committed", "block_end"):
        return text
    raise ValueError(f"eotp={value!r} is not an EoTP rule; use one of {', '.join(EOTP_RULES)}")


def method_from_settings(policy: Any, params: dict[str, Any] | None, cache: Any, eotp: Any,
                         bool_true: str = "committed", named: Collection[str] | None = None) -> Method:
    """The method of recorded settings; ``named``: the parameters the run's model_args set (the label shows
    only those), None to show all."""
    items = []
    for key, value in sorted((params or {}).items()):
        text = _fmt_param(value)
        if text is not None:
            items.append((str(key), text))
    return Method(
        policy=str(policy or "unknown"),
        params=tuple(items),
        cache=str(cache or "none"),
        eotp=eotp_rule_name(eotp, bool_true),
        shown=None if named is None else frozenset(named),
    )


def parse_method_spec(spec: str) -> dict[str, str]:
    """``policy=threshold,threshold=0.9,cache=none,eotp=false`` (or just ``low_confidence``) -> fields.

    ``eotp`` is checked here (``true``/``false``/``committed`` or a boolean spelling) so a typo is an error,
    not a baseline that never matches."""
    fields: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key.strip()] = value.strip()
        elif i == 0:
            fields["policy"] = part
        else:
            raise ValueError(f"--baseline-method: cannot read {part!r}; use KEY=VALUE (policy, cache, eotp, params)")
    if "policy" not in fields:
        raise ValueError(f"--baseline-method {spec!r} names no policy; e.g. 'policy=low_confidence,cache=none'")
    if "eotp" in fields:
        try:
            fields["eotp"] = eotp_rule_name(fields["eotp"])
        except ValueError as err:
            raise ValueError(f"--baseline-method: {err}") from None
    return fields


def method_matches(method: Method, fields: dict[str, str]) -> bool:
    """Does ``method`` satisfy a parsed spec? cache/eotp default to none/false, params must match if given."""
    if method.policy != fields["policy"]:
        return False
    if method.cache != fields.get("cache", "none"):
        return False
    if method.eotp != eotp_rule_name(fields.get("eotp", "false")):
        return False
    params = {**dict(method.variant), **dict(method.params)}
    for key, value in fields.items():
        if key in {"policy", "cache", "eotp"}:
            continue
        if key not in params:
            return False
        mine = params[key]
        try:
            if float(mine) != float(value):
                return False
        except ValueError:
            if mine != value:
                return False
    return True
