"""``l2pd-eval trajectories`` and ``l2pd-eval train-filter``.

Torch-free at import and while building the parsers (the settings and choices live in :mod:`.config`), so
``--help`` is instant; the ``*_main`` functions import the heavy modules."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _hidden_sizes(text: str) -> tuple[int, ...] | None:
    """``"32"``, ``"64,64"``; ``"none"`` for a single linear layer; ``"auto"`` for (block_length,)."""
    t = text.strip().lower()
    if t == "auto":
        return None
    if t in ("none", "linear", ""):
        return ()
    try:
        sizes = tuple(int(s) for s in t.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden-sizes must be comma-separated integers, 'auto' or 'none'; got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden-sizes must be positive; got {text!r}")
    return sizes


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(s) for s in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split must be three fractions like 0.8,0.1,0.1; got {text!r}")
    return parts  # type: ignore[return-value]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


# ------------------------------------------------------------------------------------------ train-filter


def train_filter_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import ACTIVATION_NAMES, COMMITTED_CONF, SPLIT_BY, TrainConfig

    d = TrainConfig()
    parser.add_argument("data", nargs="*", help="trajectory directories written by `l2pd-eval trajectories`")
    parser.add_argument("--out", required=True, help="output: a directory, or a file name ending in .safetensors")
    parser.add_argument("--hidden-sizes", type=_hidden_sizes, default=None, metavar="SIZES",
                        help="hidden widths, e.g. 32 or 64,64; 'auto' (default) = one layer of block_length "
                             "as in the paper; 'none' = a single linear layer")
    parser.add_argument("--activation", choices=ACTIVATION_NAMES, default=d.activation)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--max-iters", type=int, default=d.max_iters, help="optimizer steps at most")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="records per step; 0 = full batch")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation checks")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help="validation checks without improvement before early stopping")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--split", type=_split, default=d.split, help="train,val,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--split-by", choices=SPLIT_BY, default=d.split_by,
                        help="keep each prompt's records in one part (default) or split records at random")
    parser.add_argument("--no-class-balance", dest="class_balance", action="store_false",
                        help="plain BCE instead of pos_weight = negatives/positives")
    parser.add_argument("--accept-threshold", type=float, default=d.accept_threshold,
                        help="decision threshold stored in the checkpoint and used for the metrics")
    parser.add_argument("--target-precision", type=float, default=None,
                        help="instead: pick the lowest threshold reaching this precision on the validation split")
    parser.add_argument("--committed-conf", choices=COMMITTED_CONF, default=d.committed_conf,
                        help="what the filter sees at already-committed positions: raw (default, the paper's recipe) "
                             "or zero")
    parser.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--convert-published", metavar="PTH", default=None,
                        help="convert a published Learn2PD filter state dict to our format instead of training")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (a tiny MLP often trains faster on 1 than on a busy many)")
    parser.add_argument("--force", action="store_true", help="replace a filter already at --out")
    parser.add_argument("--quiet", action="store_true")


def _refuse_existing_filter(out: str, force: bool) -> None:
    """``--out`` names a filter (or its settings / metrics) that exists: replaced only with ``--force``."""
    from l2pd_eval.errors import ConfigError

    target = Path(out)
    weights = target if target.suffix == ".safetensors" else target / "filter.safetensors"
    taken = [f for f in (weights, weights.with_suffix(".json"), weights.with_name("metrics.json")
                         if weights.name == "filter.safetensors" else weights.with_suffix(".metrics.json"))
             if f.exists()]
    if taken and not force:
        raise ConfigError(f"--out {out}: {taken[0]} exists (a filter of an earlier run); choose another --out, or "
                          "pass --force to replace it")


def train_filter_main(args: argparse.Namespace) -> int:
    from l2pd_eval.policies.filter_net import load_published_filter, save_filter

    from .data import load_trajectories
    from .train import TrainConfig, train_filter

    _refuse_existing_filter(args.out, args.force)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.convert_published:
        filt = load_published_filter(args.convert_published)
        path = save_filter(args.out, filt)
        print(f"converted {args.convert_published} -> {path} (block_length={filt.block_length}, "
              f"hidden_sizes={list(filt.config.hidden_sizes)}, accept_threshold={filt.accept_threshold})")
        return 0
    if not args.data:
        print("error: give at least one trajectory directory (or --convert-published PTH)")
        return 2
    cfg = TrainConfig(
        hidden_sizes=args.hidden_sizes, activation=args.activation, lr=args.lr, weight_decay=args.weight_decay,
        max_iters=args.max_iters, batch_size=args.batch_size, eval_every=args.eval_every, patience=args.patience,
        seed=args.seed, split=args.split, split_by=args.split_by, class_balance=args.class_balance,
        accept_threshold=args.accept_threshold, target_precision=args.target_precision,
        committed_conf=args.committed_conf, device=args.device,
    )
    traj = load_trajectories(args.data)
    if not args.quiet:
        print(f"loaded {len(traj)} records (block_length={traj.block_length}) from {', '.join(args.data)}")

    def log(row: dict[str, float]) -> None:
        if not args.quiet and row["iter"] % (cfg.eval_every * 50) == 0:
            print(f"iter {row['iter']:>6}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}")

    result = train_filter(traj, cfg, log=log)
    models = sorted({str(s.get("model")) for s in traj.sources if s.get("model")})
    identities = list({i["fingerprint"]: i for s in traj.sources if isinstance(i := s.get("model_identity"), dict)
                       and i.get("fingerprint")}.values())
    meta = {
        "model": models[0] if len(models) == 1 else models,
        "trained_on": identities,  # checked at run time (policies/filter_net.py trained_elsewhere)
        "data": [{k: v for k, v in s.items() if v is not None} for s in traj.sources],
        "metrics": {k: result.metrics[k] for k in ("test", "val", "split_records", "best_iter", "iterations",
                                                      "pos_weight", "threshold_tuned_on_val", "device", "seconds")},
    }
    path = save_filter(args.out, result.filter, meta)
    metrics_path = path.with_name("metrics.json") if path.name == "filter.safetensors" else path.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps({"metrics": result.metrics, "history": result.history}, indent=1) + "\n")
    if not args.quiet:
        _print_report(result.metrics)
        print(f"wrote {path} (+ {metrics_path.name})")
    return 0


def _print_report(m: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = m["test"]
    table = Table(title=f"held-out test split ({t['records']} steps, {t['masked_positions']} masked positions)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("threshold", "precision", "recall", "fpr", "false_discovery", "tokens_per_step", "extra_tokens_per_step",
              "wrong_tokens_per_step", "oracle_tokens_per_step", "positive_rate", "loss"):
        table.add_row(k, _fmt(t[k]))
    sweep = Table(title="threshold sweep (test)")
    for c in ("threshold", "precision", "recall", "tokens/step"):
        sweep.add_column(c, justify="right")
    for th, row in t["sweep"].items():
        sweep.add_row(th, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["tokens_per_step"]))
    base = {k: v for k, v in t.items() if k.startswith("conf>")}
    for name, row in base.items():
        sweep.add_row(name, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["tokens_per_step"]))
    c = Console()
    c.print(table)
    c.print(sweep)
    c.print(f"device {m['device']}, {m['iterations']} iterations (best {m['best_iter']}), {m['seconds']:.1f}s, "
            f"pos_weight {m['pos_weight']}")


# ------------------------------------------------------------------------------------------ trajectories


def trajectories_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import CONF_DTYPE_NAMES, ROLLOUTS, TrajectoryConfig

    d = TrajectoryConfig()
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl", help="prompts from a JSONL file (one object per line)")
    src.add_argument("--task", help="prompts from an lm-eval generation task (contexts incl. few-shot)")
    parser.add_argument("--model", required=True, help="checkpoint directory, hub id, or random:<preset>")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path/hub id (default: --model)")
    parser.add_argument("--out", required=True, help="output directory (resumed if it already holds trajectories)")
    parser.add_argument("--field", default="question", help="JSONL field holding the prompt text (default: question)")
    parser.add_argument("--id-field", default=None, help="JSONL field with a unique id (default: line number)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="lm-eval task: few-shot examples (default: task's)")
    parser.add_argument("--include-path", default=None, help="lm-eval task: extra task directory")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    parser.add_argument("--gen-length", type=int, default=d.gen_length,
                        help=f"answer length (default {d.gen_length}); prompt + answer must fit the model's context")
    parser.add_argument("--block-length", type=int, default=d.block_length)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--rollout", choices=ROLLOUTS, default=d.rollout,
                        help="states to record: the reference decoding itself (default), or an oracle pass that "
                             "commits every position already equal to the reference (the official generator)")
    parser.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                        help="wrap prompts in the tokenizer's chat template (default: when it has one)")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float32, float64")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--conf-dtype", choices=CONF_DTYPE_NAMES, default=d.conf_dtype)
    parser.add_argument("--shard-records", type=int, default=d.shard_records, help="records per shard file")
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (lm-eval task)")
    parser.add_argument("--no-progress", action="store_true")


def trajectories_main(args: argparse.Namespace) -> int:
    from .trajectories import main

    return main(args)
