"""The golden decoding recording: every policy x cache x EoTP rule x temperature, on the embedded testbed
(LLaDA) and a tiny random Dream, decoded as one padded batch on the CPU.

It guards every change to the engine, policies, caches and models: a refactor must leave the recording
bit-identical; a deliberate change says which configurations it moves and why (docs/golden.md).

    python scripts/golden_decoding.py --check            # compare with tests/golden/decoding.json
    python scripts/golden_decoding.py --write            # re-record (after a deliberate change only)
    python scripts/golden_decoding.py --check --dump D   # also write every configuration's full record to D

Each configuration stores a digest of what it decoded (answer tokens, per-row NFE, commits per step,
answer token counts, EoTP savings, positions computed) and, in the clear, the per-row NFE and token counts,
so a mismatch shows at a glance which rows moved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "tests" / "golden" / "decoding.json"
PROMPTS = 6
GEN_LENGTH, BLOCK_LENGTH = 96, 32
TEMPERATURES = (0.0, 1.0)


def _prompts_and_references(tok) -> tuple[list[list[int]], list[list[int]]]:
    from l2pd_eval.testbed.data import format_prompt

    rows = [json.loads(line) for line in (ROOT / "tasks/l2pd_demo/test.jsonl").read_text().splitlines()[:PROMPTS]]
    prompts = [tok(format_prompt(r["question"]), add_special_tokens=False)["input_ids"] for r in rows]
    refs = []
    for r in rows:
        ids = tok(" " + r["answer"], add_special_tokens=False)["input_ids"][:GEN_LENGTH]
        refs.append(ids + [tok.eos_token_id] * (GEN_LENGTH - len(ids)))
    return prompts, refs


def _families(tmp: Path) -> dict[str, str]:
    from l2pd_eval.model.tiny import write_tiny_dream
    from l2pd_eval.testbed import checkpoint_path

    return {"testbed": str(checkpoint_path()), "dream-tiny": str(write_tiny_dream(tmp / "dream", seed=0))}


def _policy_params(name: str) -> dict[str, object]:
    from l2pd_eval.testbed import filter_path

    return {"filter": str(filter_path())} if name == "learn2pd" else {}


def _record(out) -> dict[str, object]:
    full = {
        "tokens": out.tokens.tolist(),
        "nfe": [s.nfe for s in out.stats],
        "committed_per_step": [s.committed_per_step for s in out.stats],
        "num_tokens": [s.num_tokens for s in out.stats],
        "eotp_saved": [s.eotp_saved for s in out.stats],
        "positions": [s.positions for s in out.stats],
    }
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "nfe": full["nfe"], "num_tokens": full["num_tokens"], "_full": full}


def _refused(message: str) -> dict[str, object]:
    """A configuration a policy refuses (slowfast's Dream sampler at temperature 1): the refusal is recorded."""
    full = {"refused": message}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "nfe": [], "num_tokens": [], "refused": message, "_full": full}


def record_all(only: str | None = None) -> dict[str, dict[str, object]]:
    from l2pd_eval.caches import available as cache_names
    from l2pd_eval.caches import cache_class
    from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
    from l2pd_eval.policies import available, get_policy

    torch.set_num_threads(1)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam, path in _families(Path(tmp)).items():
            model, tok = load_model(path, dtype="float32"), load_tokenizer(path)
            special = SpecialIds.resolve(tok, model.config)
            prompts, refs = _prompts_and_references(tok)
            for policy in available():
                for cache in [c for c in cache_names() if not cache_class(c).requires_block_causal]:
                    for eotp in EOTP_MODES:
                        for temp in TEMPERATURES:
                            key = f"{fam}/{policy}/{cache}/eotp={eotp}/T={temp:g}"
                            if only and only not in key:
                                continue
                            cfg = GenerationConfig(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, cache=cache,
                                                   eotp=eotp, temperature=temp, seed=0)
                            pol = get_policy(policy, **_policy_params(policy))
                            ref = refs if pol.needs_reference else None
                            try:
                                results[key] = _record(generate(model, prompts, cfg, pol, special, reference=ref))
                            except ValueError as refused:  # a setting the policy cannot serve: its message
                                results[key] = _refused(str(refused))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare with the committed recording")
    mode.add_argument("--write", action="store_true", help="overwrite the committed recording")
    p.add_argument("--only", help="only configurations whose key contains this text (with --check)")
    p.add_argument("--dump", type=Path, help="write each configuration's full record (tokens...) to this folder")
    args = p.parse_args(argv)
    if args.write and args.only:
        p.error("--only: a partial recording cannot be written; drop --only")
    results = record_all(args.only)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        for key, rec in results.items():
            (args.dump / (key.replace("/", "__") + ".json")).write_text(json.dumps(rec["_full"]))
    public = {k: {f: v for f, v in r.items() if f != "_full"} for k, r in results.items()}
    if args.write:
        RECORDING.parent.mkdir(parents=True, exist_ok=True)
        RECORDING.write_text(json.dumps({"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH,
                                         "prompts": PROMPTS, "configurations": public}, indent=1) + "\n")
        print(f"wrote {len(public)} configurations to {RECORDING}")
        return 0
    stored = json.loads(RECORDING.read_text())["configurations"]
    missing = sorted(set(stored) - set(public)) if not args.only else []
    new = sorted(set(public) - set(stored))
    moved = [k for k in public if k in stored and stored[k]["digest"] != public[k]["digest"]]
    for k in moved:
        print(f"MOVED {k}: nfe {stored[k]['nfe']} -> {public[k]['nfe']}, "
              f"tokens {stored[k]['num_tokens']} -> {public[k]['num_tokens']}")
    for k in new:
        print(f"NEW   {k} (not in the recording)")
    for k in missing:
        print(f"GONE  {k} (in the recording, not decoded now)")
    if moved or new or missing:
        print(f"DIFFERS: {len(moved)} moved, {len(new)} new, {len(missing)} gone of {len(public)} decoded")
        return 1
    print(f"OK: {len(public)} configurations bit-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
