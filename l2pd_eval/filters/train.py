"""Train f_theta on recorded trajectories and measure it on held-out prompts.

Defaults follow the official recipe (AdamW lr 3e-3, full batch, BCE-with-logits, 80/10/10 split) with
three deliberate changes, each switchable: positions already committed at a step are neither inputs
(zeroed) nor targets (masked out of the loss), because the policy only ever asks about masked
positions; the positive class is re-weighted (``pos_weight = negatives / positives``); and training
stops early on the validation loss instead of running a fixed 40k iterations. The split is by prompt
by default: steps of one prompt are strongly correlated, so a record-level split would overstate
held-out quality.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from l2pd_eval.filters.config import SPLIT_BY, TrainConfig  # noqa: F401  (re-exported)
from l2pd_eval.policies.base import top1_mask
from l2pd_eval.policies.filter_net import FilterConfig, L2PFilter

from .data import Trajectories

SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99)


@dataclass
class TrainResult:
    filter: L2PFilter
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def split_indices(traj: Trajectories, split: tuple[float, float, float], by: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Train/val/test record indices; ``by="prompt"`` keeps each prompt's records in one part."""
    g = torch.Generator().manual_seed(seed)
    if by == "prompt":
        prompts = torch.unique(traj.prompt)
        if len(prompts) < 3:
            raise ValueError(
                f"split_by='prompt' needs at least 3 prompts, the data has {len(prompts)}; record more or use split_by='record'"
            )
        perm = prompts[torch.randperm(len(prompts), generator=g)]
        n_train = max(1, int(len(perm) * split[0]))
        n_val = max(1, int(len(perm) * split[1]))
        n_train = min(n_train, len(perm) - 2)
        parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
        return tuple(torch.nonzero(torch.isin(traj.prompt, p)).flatten() for p in parts)
    perm = torch.randperm(len(traj), generator=g)
    n_train = int(len(perm) * split[0])
    n_val = int(len(perm) * split[1])
    out = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    if any(len(o) == 0 for o in out):
        raise ValueError(f"{len(traj)} records are too few for a {split} split")
    return out


def _inputs(traj: Trajectories, committed_conf: str) -> torch.Tensor:
    x = torch.nan_to_num(traj.conf.float(), nan=0.0, posinf=1.0, neginf=0.0)
    return x * traj.masked.float() if committed_conf == "zero" else x


def masked_bce(logits: torch.Tensor, label: torch.Tensor, masked: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean BCE over masked positions only: committed positions carry no decision.

    ``label``/``masked`` may be bool or already float (the training loop converts them once).
    """
    m = masked if masked.is_floating_point() else masked.float()
    y = label if label.is_floating_point() else label.float()
    loss = F.binary_cross_entropy_with_logits(logits, y, weight=m, pos_weight=pos_weight, reduction="sum")
    return loss / m.sum().clamp_min(1.0)


@torch.no_grad()
def evaluate_filter(filt: L2PFilter, traj: Trajectories, threshold: float | None = None, baseline_conf: float = 0.9) -> dict[str, Any]:
    """Quality of the accept decision on masked positions, and what it buys per decoding step.

    ``tokens_per_step`` counts what the Learn2PD policy would commit at each recorded step: the
    filter's accepted positions plus the vanilla top-1 (always committed). It is measured on the
    recorded states, so it estimates, not simulates, the speed-up. ``oracle_tokens_per_step`` is the
    ceiling (every position already equal to the final token). The ``conf>baseline_conf`` rule
    (Fast-dLLM's threshold) is reported on the same positions for comparison.
    """
    device = next(filt.parameters()).device
    t = filt.accept_threshold if threshold is None else float(threshold)
    masked = traj.masked.to(device)
    label = traj.label.to(device) & masked
    x = _inputs(traj, filt.config.committed_conf).to(device)
    logits = filt(x)
    probs = torch.sigmoid(logits)
    conf = torch.nan_to_num(traj.conf.float(), nan=0.0, neginf=0.0).to(device)
    top1 = top1_mask(torch.where(masked, conf, torch.full_like(conf, -1.0))) & masked  # the vanilla commit
    rows = masked.any(-1)

    def decision_stats(accept: torch.Tensor) -> dict[str, float]:
        accept = accept & masked
        tp = int((accept & label).sum())
        fp = int((accept & ~label).sum())
        fn = int((~accept & label).sum())
        tn = int((~accept & ~label & masked).sum())
        commit = (accept | top1)[rows]
        return {
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "fpr": fp / (fp + tn) if fp + tn else float("nan"),
            "false_discovery": fp / (tp + fp) if tp + fp else float("nan"),
            "accepted_per_step": float(accept[rows].sum(-1).float().mean()),
            "tokens_per_step": float(commit.sum(-1).float().mean()),
            "extra_tokens_per_step": float((accept & ~top1)[rows].sum(-1).float().mean()),
            "wrong_tokens_per_step": float((commit & ~label[rows]).sum(-1).float().mean()),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        }

    loss = float(masked_bce(logits, label, masked, None)) if len(traj) else float("nan")
    out: dict[str, Any] = {
        "records": len(traj),
        "masked_positions": int(masked.sum()),
        "positive_rate": float(label.sum() / masked.sum().clamp_min(1)),
        "loss": loss,
        "threshold": t,
        **decision_stats(probs > t),
        "oracle_tokens_per_step": float(label[rows].sum(-1).float().mean()),
        "vanilla_top1_precision": float((top1 & label).sum() / top1.sum().clamp_min(1)),
        "sweep": {f"{s:g}": {k: v for k, v in decision_stats(probs > s).items() if k in ("precision", "recall", "tokens_per_step")} for s in SWEEP_THRESHOLDS},
        f"conf>{baseline_conf:g}": {k: v for k, v in decision_stats(conf > baseline_conf).items() if k in ("precision", "recall", "tokens_per_step")},
    }
    return out


@torch.no_grad()
def tune_threshold(filt: L2PFilter, traj: Trajectories, target_precision: float) -> float:
    """Lowest threshold on a 0.001 grid whose precision on ``traj`` reaches ``target_precision``."""
    device = next(filt.parameters()).device
    masked = traj.masked.to(device)
    label = traj.label.to(device)[masked]
    probs = torch.sigmoid(filt(_inputs(traj, filt.config.committed_conf).to(device)))[masked]
    grid = torch.arange(500, 1000, device=device).float() / 1000
    acc = probs[None, :] > grid[:, None]
    tp = (acc & label[None, :]).sum(-1).float()
    n = acc.sum(-1).float()
    prec = torch.where(n > 0, tp / n.clamp_min(1), torch.zeros_like(n))
    ok = torch.nonzero(prec >= target_precision).flatten()
    if len(ok) == 0:
        return 0.999
    return float(grid[int(ok[0])])


@dataclass
class _Tensors:
    """Training and validation tensors on the device; labels and masks become float once here, not per step."""

    x: torch.Tensor
    y: torch.Tensor
    m: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    mv: torch.Tensor
    pos_weight: torch.Tensor | None


@dataclass
class _Fit:
    """What the optimisation loop hands back: the best validation loss seen and where training stopped."""

    best_loss: float
    best_iter: int
    iterations: int
    history: list[dict[str, float]]


def _new_filter(block_length: int, cfg: TrainConfig, device: torch.device) -> L2PFilter:
    """The network the policy will load: its config carries the threshold and input convention it was trained with."""
    fcfg = FilterConfig(
        block_length=block_length,
        hidden_sizes=cfg.hidden_sizes,
        activation=cfg.activation,
        accept_threshold=cfg.accept_threshold,
        committed_conf=cfg.committed_conf,
    )
    return L2PFilter(fcfg).to(device)


def _tensors(train: Trajectories, val: Trajectories, cfg: TrainConfig, device: torch.device) -> _Tensors:
    """Moves the splits to the device once; refuses a training split without both classes, because then
    the loss has nothing to separate (and ``pos_weight`` would divide by zero)."""
    X, Y, M = _inputs(train, cfg.committed_conf).to(device), train.label.to(device), train.masked.to(device)
    Xv, Yv, Mv = _inputs(val, cfg.committed_conf).to(device), val.label.to(device), val.masked.to(device)
    n_pos = float((Y & M).sum())
    n_neg = float((~Y & M).sum())
    Y, M, Yv, Mv = Y.float(), M.float(), Yv.float(), Mv.float()
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"training split has {int(n_pos)} correct and {int(n_neg)} wrong masked positions; both classes are needed"
        )
    pos_weight = torch.tensor(min(max(n_neg / n_pos, 1e-3), 1e3), device=device) if cfg.class_balance else None
    return _Tensors(X, Y, M, Xv, Yv, Mv, pos_weight)


def _batches(n: int, batch_size: int, seed: int, device: torch.device) -> Iterator[torch.Tensor | None]:
    """Record indices for each step. ``None`` is the full batch (the official recipe); otherwise one seeded
    shuffle per epoch, dropping each epoch's short remainder so every step sees the same batch size."""
    if batch_size <= 0 or batch_size >= n:
        while True:
            yield None
    g = torch.Generator(device="cpu").manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g).to(device)
        for cursor in range(0, n - batch_size + 1, batch_size):
            yield perm[cursor:cursor + batch_size]


def _fit(filt: L2PFilter, data: _Tensors, n_train: int, cfg: TrainConfig, t0: float,
         log: Callable[[dict[str, float]], None] | None) -> _Fit:
    """AdamW steps with early stopping on the validation loss; leaves ``filt`` holding the best weights
    seen, because later steps that only overfit the training prompts should not reach the policy."""
    opt = torch.optim.AdamW(filt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = _batches(n_train, cfg.batch_size, cfg.seed, data.x.device)
    best_loss, best_state, best_iter, bad = math.inf, copy.deepcopy(filt.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    it = 0
    for it in range(1, cfg.max_iters + 1):
        filt.train()
        sel = next(batches)
        xb, yb, mb = (data.x, data.y, data.m) if sel is None else (data.x[sel], data.y[sel], data.m[sel])
        loss = masked_bce(filt(xb), yb, mb, data.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % cfg.eval_every == 0 or it == cfg.max_iters:
            filt.eval()
            with torch.no_grad():
                vloss = float(masked_bce(filt(data.xv), data.yv, data.mv, data.pos_weight))
            row = {"iter": it, "train_loss": float(loss.detach()), "val_loss": vloss, "seconds": time.perf_counter() - t0}
            history.append(row)
            if log is not None:
                log(row)
            if vloss < best_loss - cfg.min_delta:
                best_loss, best_state, best_iter, bad = vloss, copy.deepcopy(filt.state_dict()), it, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    filt.load_state_dict(best_state)
    return _Fit(best_loss, best_iter, it, history)


def train_filter(
    traj: Trajectories,
    config: TrainConfig | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit a filter; returns it (on CPU, eval mode) with validation and test metrics."""
    cfg = config or TrainConfig()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tr_idx, va_idx, te_idx = split_indices(traj, cfg.split, cfg.split_by, cfg.seed)
    train, val, test = traj.subset(tr_idx), traj.subset(va_idx), traj.subset(te_idx)
    filt = _new_filter(traj.block_length, cfg, device)
    data = _tensors(train, val, cfg, device)
    t0 = time.perf_counter()
    fit = _fit(filt, data, len(train), cfg, t0, log)
    filt.eval()
    tuned = None
    if cfg.target_precision is not None:
        tuned = tune_threshold(filt, val, cfg.target_precision)
        filt.set_accept_threshold(tuned)
    metrics = {
        "device": str(device),
        "iterations": fit.iterations,
        "best_iter": fit.best_iter,
        "best_val_loss": fit.best_loss,
        "seconds": time.perf_counter() - t0,
        "pos_weight": float(data.pos_weight) if data.pos_weight is not None else None,
        "split_records": {"train": len(train), "val": len(val), "test": len(test)},
        "threshold_tuned_on_val": tuned,
        "val": evaluate_filter(filt, val),
        "test": evaluate_filter(filt, test),
    }
    filt = filt.to("cpu").eval()
    cfg_json = asdict(cfg)
    cfg_json["split"] = list(cfg.split)
    filt.config.metadata = {**filt.config.metadata, "train_config": cfg_json}
    return TrainResult(filter=filt, metrics=metrics, history=fit.history)
