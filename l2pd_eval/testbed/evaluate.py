"""Score a testbed checkpoint on the demo test split with the package's decoding engine.

This is the quick, lm-eval-free check used while training the testbed (and recorded in its
checkpoint folder): strict-match accuracy (lm-eval gsm8k's ``#### N`` regex) and mean forward passes
(NFE) per question for a few decoding settings. The oracle row (EoTP, commits every position whose
prediction already equals vanilla decoding's output) bounds what a Learn2PD filter can reach.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2pd_eval.testbed.data import Problem, format_prompt, load_test_split
from l2pd_eval.testbed.train import extract


@dataclass
class Setting:
    label: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    eotp: str = "false"  # GenerationConfig.eotp: "true" (the Learn2PD code's rule), "committed", "block_end"
    cache: str = "none"  # GenerationConfig.cache and its parameters
    cache_params: dict[str, Any] = field(default_factory=dict)


DEFAULT_SETTINGS = [
    Setting("vanilla", "low_confidence"),
    Setting("vanilla+eotp", "low_confidence", eotp="true"),
    Setting("vanilla+eotp(committed)", "low_confidence", eotp="committed"),
    Setting("threshold0.9", "threshold", {"threshold": 0.9}),
    Setting("threshold0.9+eotp", "threshold", {"threshold": 0.9}, eotp="true"),
    Setting("threshold0.9+eotp(committed)", "threshold", {"threshold": 0.9}, eotp="committed"),
    Setting("threshold0.9+eotp(block_end)", "threshold", {"threshold": 0.9}, eotp="block_end"),
    Setting("oracle+eotp(committed)", "oracle", {"fallback": "reference"}, eotp="committed"),
]
# The field's rules with their authors' default parameters (docs/conventions.md). Prophet's default fixed
# tokens (answer offsets 200-202) do not fit a 96-token answer, so it runs without them (it cannot exit),
# beside its named option gap_window=answer, which needs none.
FIELD_SETTINGS = [
    Setting("prophet", "prophet"),
    Setting("prophet(gap_window=answer)", "prophet", {"gap_window": "answer"}),
    Setting("wino", "wino"),
    Setting("slowfast", "slowfast"),
]
SETTINGS = {"default": DEFAULT_SETTINGS, "field": FIELD_SETTINGS, "all": DEFAULT_SETTINGS + FIELD_SETTINGS}


def parse_setting(spec: str) -> Setting:
    """``policy[,key=value...]`` (``eotp=`` among the keys) as a row labelled by the spec itself."""
    policy, *pairs = [p.strip() for p in spec.split(",") if p.strip()]
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--add {spec!r}: {pair!r} is not key=value; e.g. --add dinfer_hierarchy,eotp=true")
        params[key.strip()] = value.strip()
    eotp = params.pop("eotp", "false")
    return Setting(spec, policy, params, eotp)


def learn2pd_settings(filter_path: str) -> list[Setting]:
    """The learn2pd rows with a trained filter: without EoTP and with each of its two rules."""
    return [Setting("learn2pd", "learn2pd", {"filter": filter_path}),
            Setting("learn2pd+eotp", "learn2pd", {"filter": filter_path}, eotp="true"),
            Setting("learn2pd+eotp(committed)", "learn2pd", {"filter": filter_path}, eotp="committed")]


def evaluate_checkpoint(checkpoint: str | Path, device: str = "cpu", problems: Sequence[Problem] | None = None,
                        settings: Sequence[Setting] = tuple(DEFAULT_SETTINGS), gen_length: int = 96,
                        block_length: int = 32, batch_size: int = 200, dtype: str = "auto",
                        filter_path: str | None = None) -> list[dict[str, Any]]:
    """One result dict per setting: accuracy, mean NFE, mean committed tokens per forward, seconds."""
    from l2pd_eval.engine import GenerationConfig, generate
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
    from l2pd_eval.policies import RunSettings, get_policy

    problems = list(load_test_split() if problems is None else problems)
    model = load_model(str(checkpoint), dtype=dtype, device=device)
    tok = load_tokenizer(checkpoint)
    special = SpecialIds.resolve(tok, model.config)
    prompts = [tok(format_prompt(p.question), add_special_tokens=False).input_ids for p in problems]
    settings = list(settings)
    if filter_path:
        settings += learn2pd_settings(filter_path)
    reference: list[torch.Tensor] | None = None
    results = []
    for s in settings:
        policy = get_policy(s.policy, **s.params).bind(
            RunSettings(block_length=block_length, gen_length=gen_length, device=model.device))
        cfg = GenerationConfig(gen_length=gen_length, block_length=block_length, eotp=s.eotp, cache=s.cache,
                               cache_params=s.cache_params)
        if policy.needs_reference and reference is None:
            raise ValueError(f"setting {s.label!r} needs the vanilla setting to run first (its output is the reference)")
        outs, stats, t0 = [], [], time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            ref = reference[i // batch_size] if policy.needs_reference else None
            out = generate(model, prompts[i:i + batch_size], cfg, policy, special, reference=ref)
            outs.append(out.tokens)
            stats += out.stats
        seconds = time.perf_counter() - t0
        if s.label == "vanilla":
            reference = outs
        texts = [tok.decode(row, skip_special_tokens=True) for t in outs for row in t.tolist()]
        correct = [extract(text) == str(p.final) for text, p in zip(texts, problems, strict=True)]
        results.append({
            "setting": s.label, "policy": s.policy, "params": dict(s.params),
            "eotp": s.eotp, "cache": s.cache, "cache_params": cfg.cache_params,
            "accuracy": sum(correct) / len(correct), "n": len(correct),
            "mean_nfe": sum(st.nfe for st in stats) / len(stats),
            "mean_positions": sum(st.positions for st in stats) / len(stats),
            "tokens_per_forward": sum(st.tokens_per_forward for st in stats) / len(stats),
            "mean_answer_tokens": sum(st.num_tokens for st in stats) / len(stats),
            "seconds": round(seconds, 3), "example": texts[0],
        })
    return results


def with_caches(settings: Sequence[Setting], caches: Sequence[str]) -> list[Setting]:
    """Each setting once per cache spec ``name`` or ``name:key=value;key=value`` (its parameters), labelled
    ``setting @ spec``; no specs: the settings as they are."""
    if not caches:
        return list(settings)
    out = []
    for spec in caches:
        name, _, rest = spec.partition(":")
        params = dict(p.split("=", 1) for p in rest.split(";") if p)
        out += [Setting(f"{s.label} @ {spec}", s.policy, s.params, s.eotp, name, params) for s in settings]
    return out


def format_table(results: Sequence[dict[str, Any]]) -> str:
    base = next((r["mean_nfe"] for r in results if r["setting"] == "vanilla"), None)
    lines = [f"{'setting':<30} {'acc':>6} {'NFE':>7} {'NFE x':>6} {'tok/fwd':>7} {'positions':>9} {'sec':>7}"]
    for r in results:
        ratio = f"{base / r['mean_nfe']:.2f}" if base else "-"
        lines.append(f"{r['setting']:<30} {r['accuracy'] * 100:6.1f} {r['mean_nfe']:7.1f} {ratio:>6} "
                     f"{r['tokens_per_forward']:7.2f} {r['mean_positions']:9.0f} {r['seconds']:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Accuracy and NFE of a testbed checkpoint on the demo test split.")
    parser.add_argument("checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--limit", type=int, default=None, help="only the first N test problems")
    parser.add_argument("--filter", default=None, help="a trained Learn2PD filter: adds learn2pd rows")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="default",
                        help="default: the rows of docs/testbed.md's first table; field: prophet, wino, slowfast")
    parser.add_argument("--add", action="append", default=[], metavar="POLICY[,KEY=VALUE...]",
                        help="another row: a policy with its parameters (eotp= too), e.g. dinfer_credit,eotp=true")
    parser.add_argument("--no-defaults", action="store_true", help="only the --add rows (and --filter's), no --settings rows")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only these settings (labels, e.g. threshold0.9 learn2pd+eotp)")
    parser.add_argument("--caches", nargs="+", default=[],
                        help="run the settings once per cache: NAME or NAME:key=value;key=value")
    args = parser.parse_args(argv)
    problems = load_test_split()[: args.limit]
    settings = ([] if args.no_defaults else list(SETTINGS[args.settings])) + [parse_setting(a) for a in args.add]
    if args.filter:
        settings += learn2pd_settings(args.filter)
    if args.only:
        unknown = sorted(set(args.only) - {s.label for s in settings})
        if unknown:
            parser.error(f"--only: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(s.label for s in settings)}")
        settings = [s for s in settings if s.label in args.only]
    results = evaluate_checkpoint(args.checkpoint, args.device, problems, settings=with_caches(settings, args.caches),
                                  gen_length=args.gen_length, block_length=args.block_length,
                                  batch_size=args.batch_size, dtype=args.dtype)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
