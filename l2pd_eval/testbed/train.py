"""Train the embedded testbed dLLM: a small LLaDA on the synthetic GSM8K-format problems.

The objective is LLaDA's SFT loss: the prompt is never masked; the answer, followed by end-of-text
padding up to a fixed length, is the target region; each example draws ``t ~ U(eps, 1)``, masks every
target token with probability ``t``, and pays ``CE / t`` on the masked ones, summed and divided by
the target length. Learning to predict the end-of-text padding is what lets EoTP stop early.

The model is the package's own :class:`~l2pd_eval.model.LLaDA` and is written with
:func:`~l2pd_eval.model.save_model`, so the checkpoint is a real LLaDA directory (config.json,
model.safetensors with hub key names, tokenizer with LLaDA's special tokens and chat template).

The examples (tokenizer, prompt formats, batches) are ``testbed/examples.py``; this file holds the
objective, the monitoring decoder, the training loop and its command line. Run
``python -m l2pd_eval.testbed.train --out DIR --device cuda`` (see docs/testbed.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from l2pd_eval.engine.greedy import unmask_most_confident
from l2pd_eval.engine.layout import left_pad
from l2pd_eval.testbed.data import ANSWER_RE, DEFAULT_TEST_SEED, DEFAULT_TEST_SIZE, Problem, make_splits
from l2pd_eval.testbed.examples import FORMATS, Batch, ExampleStream, Special, encode, train_tokenizer


@dataclass
class TrainConfig:
    """Model shape, data and optimisation of one testbed training run (all recorded in the checkpoint)."""

    # model
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 8
    mlp_hidden_size: int = 768
    vocab_size: int = 1024
    max_sequence_length: int = 256
    rope_theta: float = 10000.0
    # data
    data_seed: int = DEFAULT_TEST_SEED
    n_test: int = DEFAULT_TEST_SIZE
    tokenizer_corpus: int = 20000
    gen_length: int = 96
    block_length: int = 32
    fixed_length_prob: float = 0.5
    max_target_length: int = 160
    format_probs: tuple[float, float, float] = (0.55, 0.2, 0.25)
    # optimisation
    seed: int = 0
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.1
    eps: float = 1e-3
    grad_clip: float = 1.0
    workers: int = 0
    # monitoring
    eval_every: int = 500
    eval_size: int = 100
    save_dtype: str = "bfloat16"

    def validate(self) -> None:
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} must be a multiple of block_length={self.block_length}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if self.save_dtype not in {"bfloat16", "float16", "float32"}:
            raise ValueError(f"save_dtype={self.save_dtype!r}; valid choices: bfloat16, float16, float32")
        if len(self.format_probs) != len(FORMATS) or abs(sum(self.format_probs) - 1) > 1e-6:
            raise ValueError(f"format_probs must be {len(FORMATS)} probabilities for {FORMATS} summing to 1")


# ---------------------------------------------------------------------------------------------
# Objective, schedule, reference decoder
# ---------------------------------------------------------------------------------------------


def sft_loss(model, batch: Batch, mask_id: int, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """LLaDA SFT loss: masked target tokens' CE weighted 1/t, per example over its target length."""
    ids = batch.input_ids
    b = ids.shape[0]
    t = eps + (1 - eps) * torch.rand(b, 1, device=ids.device, generator=generator)
    draw = torch.rand(ids.shape, device=ids.device, generator=generator)
    masked = batch.target & (draw < t)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, key_mask=batch.key_mask)
    ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none").view_as(ids)
    weight = masked.float() / t / batch.target_len[:, None]
    return (ce * weight).sum() / b


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def vanilla_decode(model, prompts: Sequence[Sequence[int]], gen_length: int, block_length: int,
                   mask_id: int, pad_id: int) -> Tensor:
    """Reference decoder for monitoring: semi-autoregressive blocks, greedy, one token per step (the
    most confident masked one, ``engine.greedy``). Prompts are left-padded and hidden by the key mask.
    Returns the answer region [B, gen_length]."""
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be a multiple of block_length={block_length}")
    layout = left_pad(prompts, pad_id, model.device, tail=gen_length, tail_id=mask_id)
    p = layout.width
    for start in range(p, p + gen_length, block_length):
        window = slice(start, start + block_length)
        unmask_most_confident(model, layout, window, layout.ids[:, window] == mask_id, block_length)
    return layout.ids[:, p:]


def extract(text: str) -> str | None:
    """lm-eval gsm8k's strict-match answer (commas and a trailing period dropped, like its metric)."""
    text = text.split("Question:")[0]
    m = ANSWER_RE.search(text)
    return None if m is None else m.group(1).replace(",", "").rstrip(".")


def evaluate(model, tokenizer, problems: Sequence[Problem], gen_length: int = 96, block_length: int = 32,
             batch_size: int = 64, fmt: str = "plain") -> dict[str, Any]:
    """Strict-match accuracy of :func:`vanilla_decode` on ``problems``."""
    special = Special.of(tokenizer)
    correct, outputs = 0, []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        prompts = [encode(tokenizer, pr, fmt, special)[0] for pr in chunk]
        tokens = vanilla_decode(model, prompts, gen_length, block_length, special.mask, special.eos)
        for pr, row in zip(chunk, tokens.tolist(), strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(text)
            correct += extract(text) == str(pr.final)
    return {"accuracy": correct / max(1, len(problems)), "n": len(problems), "outputs": outputs}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, tokenizer, device: str | torch.device):
    from l2pd_eval.model import LLaDA, LLaDAConfig

    special = Special.of(tokenizer)
    mcfg = LLaDAConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads,
        mlp_hidden_size=cfg.mlp_hidden_size, vocab_size=len(tokenizer), embedding_size=len(tokenizer),
        max_sequence_length=cfg.max_sequence_length, rope_theta=cfg.rope_theta, mask_token_id=special.mask,
        eos_token_id=special.eos, pad_token_id=special.eos, init_std=0.02,
    )
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = LLaDA(mcfg)
    model.init_weights(cfg.seed)
    return model


def _optimizer(model, cfg: TrainConfig, dev: torch.device) -> torch.optim.AdamW:
    """AdamW decaying the weight matrices only: decay on norm gains would pull them towards zero."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), fused=dev.type == "cuda")


def _batches(cfg: TrainConfig, tokenizer, test: Sequence[Problem], dev: torch.device) -> Iterator[Batch]:
    """Training batches, tokenised in ``cfg.workers`` background processes so the GPU does not wait on the
    tokenizer; the test questions are excluded so the monitoring and final accuracy stay held out."""
    stream = ExampleStream(cfg, tokenizer, [p.question for p in test])
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                         pin_memory=dev.type == "cuda",
                                         persistent_workers=cfg.workers > 0, prefetch_factor=8 if cfg.workers else None)
    return iter(loader)


class _StepBudget:
    """Lowers ``cfg.steps`` so the run fits ``seconds``, timed over steps 20 to 120: after worker start-up and
    allocator warm-up, and early enough for the new step count to shape the learning-rate schedule."""

    def __init__(self, seconds: float, t_start: float):
        self.seconds, self.t_start, self.t_probe = seconds, t_start, 0.0

    def after_step(self, step: int, cfg: TrainConfig, log) -> None:
        if step == 20:
            self.t_probe = time.time()
        if step == min(120, cfg.steps) and step > 20:
            per_step = (time.time() - self.t_probe) / (step - 20)
            # Keep a tenth of the budget for the periodic and final evaluations.
            fit = int((0.9 * self.seconds - (time.time() - self.t_start)) / per_step) + step
            if fit < cfg.steps:
                log(f"time budget {self.seconds:.0f}s at {per_step * 1e3:.1f} ms/step: steps {cfg.steps} -> {fit}")
                cfg.steps = max(step, fit)


@dataclass
class _Progress:
    """Per-step losses and the periodic accuracy checks: what the log prints and training.json records."""

    t_train: float
    losses: list[float] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def recent_loss(self) -> float:
        """Mean of the last 100 steps: one step's loss is too noisy (random mask ratio per example)."""
        return sum(self.losses[-100:]) / len(self.losses[-100:])


def _optimise(model, tokenizer, test: Sequence[Problem], cfg: TrainConfig, dev: torch.device, log,
              budget: _StepBudget | None) -> _Progress:
    """The training loop, with the vanilla decoder's accuracy on the first ``eval_size`` test problems every
    ``eval_every`` steps, so a run that stops learning shows it before the end."""
    opt = _optimizer(model, cfg, dev)
    batches = _batches(cfg, tokenizer, test, dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    mask_id = model.config.mask_token_id
    progress = _Progress(t_train=time.time())
    step, data_wait = 0, 0.0
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        t_wait = time.time()
        batch = next(batches).to(dev)
        data_wait += time.time() - t_wait
        with autocast:
            loss = sft_loss(model, batch, mask_id, cfg.eps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        progress.losses.append(loss.item())
        step += 1
        if budget is not None:
            budget.after_step(step, cfg, log)
        if step % 100 == 0 or step == cfg.steps:
            log(f"step {step}/{cfg.steps} loss {progress.recent_loss():.4f} lr {lr_at(step - 1, cfg):.2e} "
                f"{time.time() - progress.t_train:.0f}s (waiting for data {data_wait:.0f}s)")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps) and cfg.eval_size:
            model.eval()
            with autocast:
                res = evaluate(model, tokenizer, test[: cfg.eval_size], cfg.gen_length, cfg.block_length)
            model.train()
            progress.history.append({"step": step, "loss": progress.recent_loss(), "accuracy": res["accuracy"]})
            log(f"step {step}: vanilla accuracy {res['accuracy']:.3f} on {res['n']} test problems")
    return progress


def _score_saved(out: Path, test: Sequence[Problem], cfg: TrainConfig, dev: torch.device, log) -> dict[str, Any]:
    """Accuracy of what a user gets: the saved (rounded) weights, loaded back, on the whole test split."""
    from l2pd_eval.model import load_model, load_tokenizer

    saved = load_model(str(out), dtype="auto", device=dev)
    res = evaluate(saved, load_tokenizer(out), test, cfg.gen_length, cfg.block_length)
    log(f"saved checkpoint: vanilla accuracy {res['accuracy']:.3f} on {res['n']} test problems")
    return {"accuracy": res["accuracy"], "n": res["n"], "dtype": str(saved.dtype).removeprefix("torch."),
            "decoder": "vanilla low-confidence, 1 token/step, greedy", "gen_length": cfg.gen_length,
            "block_length": cfg.block_length}


def train(cfg: TrainConfig, out: str | Path, device: str = "cpu", log=print,
          time_budget: float | None = None) -> dict[str, Any]:
    """Train, save the LLaDA directory to ``out`` and return the run's metadata (also ``out/training.json``).

    ``time_budget`` (seconds) shrinks ``steps`` after a short timing probe so a run fits a lent GPU
    slot; the steps actually run are recorded, so ``--steps`` reproduces it.
    """
    from l2pd_eval.model import save_model

    cfg.validate()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    t_start = time.time()
    tokenizer = train_tokenizer(cfg)
    _, test = make_splits(cfg.data_seed, cfg.n_test, 0)
    model = build_model(cfg, tokenizer, dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tokenizer {len(tokenizer)} tokens ({time.time() - t_start:.1f}s); model {n_params / 1e6:.2f}M parameters")
    budget = _StepBudget(time_budget, t_start) if time_budget is not None else None
    progress = _optimise(model, tokenizer, test, cfg, dev, log, budget)
    model.eval()
    save_model(model, out, dtype=getattr(torch, cfg.save_dtype), tokenizer=tokenizer)
    final = _score_saved(out, test, cfg, dev, log) if cfg.eval_size else {}
    meta = {
        "config": dataclasses.asdict(cfg),
        "parameters": n_params,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "train_seconds": round(time.time() - progress.t_train, 1),
        "final_loss": progress.recent_loss(),
        "first_loss": progress.losses[0],
        "history": progress.history,
        "final_eval": final,
        "command": "python -m l2pd_eval.testbed.train " + " ".join(map(shlex.quote, sys.argv[1:])),
        "reproduce_command": reproduce_command(cfg, device=str(dev.type)),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def reproduce_command(cfg: TrainConfig, out: str = "OUT_DIR", device: str = "cuda") -> str:
    """The command that retrains ``cfg`` exactly: every setting explicit, the steps actually run, no
    time budget (the data order depends on ``workers``, so it is part of the recipe)."""
    flags = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        value = ",".join(map(str, value)) if f.name == "format_probs" else value
        flags.append(f"--{f.name.replace('_', '-')} {value}")
    return f"python -m l2pd_eval.testbed.train --out {out} --device {device} " + " ".join(flags)


def _probs(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the embedded testbed LLaDA on synthetic GSM8K-format problems.")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; lowers --steps after a timing probe so the run fits (the steps run are recorded)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "format_probs":
            parser.add_argument(flag, type=_probs, default=defaults.format_probs,
                                help=f"comma-separated sampling weights of the prompt formats {', '.join(FORMATS)}")
            continue
        parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.device not in {"cpu", "cuda"} and not re.fullmatch(r"cuda:\d+", args.device):
        raise SystemExit(f"--device={args.device!r}; valid choices: cpu, cuda, cuda:N")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    try:
        cfg.validate()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    meta = train(cfg, args.out, args.device, time_budget=args.time_budget)
    print(json.dumps({k: meta[k] for k in ("parameters", "train_seconds", "final_loss", "history", "final_eval")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
