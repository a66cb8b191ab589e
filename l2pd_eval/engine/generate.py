"""Semi-autoregressive masked-diffusion decoding over a batch: the one block loop every policy, cache and
EoTP setting goes through.

Layout: prompts are **left-padded** to a common length P, so every row's answer occupies the same
absolute slots ``[P, P + gen_length)`` and blocks line up across rows; padding is hidden from attention by
a key mask and rope positions count from each row's first real token, so a row decodes as it would alone.
A row that finishes its block early simply drops out of the forward passes until the next block.
Per step there is a single host sync (which rows still have masks, and how long the live sequence is).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from l2pd_eval.caches import CACHES, StepInput, make_strategy
from l2pd_eval.engine import rng
from l2pd_eval.model.llada import LLaDA
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies.base import Policy, StepState, top1_mask

_GUMBEL = 0  # rng purpose ids; policies use others


@dataclass
class GenerationConfig:
    """Decoding settings. ``steps`` (total, default ``gen_length``) drives the linear schedule of the
    scheduled policies (low_confidence, random, learn2pd); threshold/factor/oracle ignore it."""

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    temperature: float = 0.0
    cache: str = "none"
    eotp: bool = False
    seed: int = 0
    cuda_graph: bool = False  # replay the cached steps of prefix/dual as CUDA graphs (CUDA only)

    def __post_init__(self) -> None:
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
            raise ValueError(f"gen_length={self.gen_length} and block_length={self.block_length} must be > 0")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}; "
                             f"choose gen_length a multiple of {self.block_length}")
        if self.total_steps <= 0 or self.total_steps % self.num_blocks:
            raise ValueError(f"steps={self.total_steps} must be a positive multiple of the number of blocks "
                             f"({self.num_blocks} = gen_length / block_length)")
        if self.steps_per_block > self.block_length:
            raise ValueError(f"steps={self.total_steps} gives {self.steps_per_block} steps per block, more than "
                             f"block_length={self.block_length}; use steps <= gen_length")
        if self.cache not in CACHES:
            raise ValueError(f"cache={self.cache!r} is unknown; valid choices: {', '.join(CACHES)}")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")


@dataclass
class RowStats:
    nfe: int                     # forward passes this row took part in
    committed_per_step: list[int]
    seconds: float               # this row's share of its batch's wall time (sum over rows = wall time)
    latency: float               # wall time of the whole batch that decoded the row
    num_tokens: int              # answer tokens before the first end-of-text/turn token
    eotp_saved: int              # answer positions after an EoTP cut (filled, never decoded)
    positions: int               # query positions the network computed for this row (cost proxy)

    @property
    def tokens_per_forward(self) -> float:
        return sum(self.committed_per_step) / max(self.nfe, 1)


@dataclass
class StepEvent:
    """What ``on_step`` observers (trajectory recording, progress) see after each step's commit."""

    conf: Tensor
    x0: Tensor
    masked: Tensor
    commit: Tensor
    step: int
    block: int
    rows: Tensor


@dataclass
class GenerationOutput:
    tokens: Tensor               # [B, gen_length] answer tokens (end-of-text after an EoTP cut)
    stats: list[RowStats] = field(default_factory=list)
    sequences: Tensor | None = None  # [B, P + gen_length] left-padded prompt + answer, as decoded


def linear_schedule(num_masked: Tensor, steps: int) -> Tensor:
    """LLaDA's schedule: spread each row's masked count evenly over ``steps``, remainder first. [B, steps]"""
    base = (num_masked // steps).unsqueeze(-1)
    rem = (num_masked % steps).unsqueeze(-1)
    return base + (torch.arange(steps, device=num_masked.device) < rem).long()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _work(logits: Tensor) -> Tensor:
    """Softmax statistics run in float32 (float64 for float64 models, so tests can compare exactly)."""
    return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _confidence(logits: Tensor, x0: Tensor) -> Tensor:
    """Probability of ``x0`` under the model, from ``_work`` logits."""
    return torch.exp(logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1))


def _greedy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """argmax and its probability."""
    logits = _work(logits)
    x0 = logits.argmax(-1)
    return x0, _confidence(logits, x0)


@functools.cache
def _greedy_compiled() -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``_greedy`` as fused reductions: one pass over the bf16 logits instead of a float32 copy plus three
    passes over it (0.9 -> 0.3 ms for 16 x 32 x 126k logits on an H100, docs/benchmarks.md)."""
    return torch.compile(_greedy, dynamic=True)


def _predict(logits: Tensor, temperature: float, seeds: Tensor, salt: tuple[int, ...],
             fused: bool = False) -> tuple[Tensor, Tensor]:
    """x0 (argmax, or a Gumbel-max sample at ``temperature``) and its probability under the model.
    ``fused`` runs the greedy statistics through ``torch.compile`` (models compiled with compile_blocks)."""
    if temperature <= 0:
        return (_greedy_compiled() if fused else _greedy)(logits)
    logits = _work(logits)
    u = rng.uniform(seeds, salt, tuple(logits.shape[1:])).to(logits.dtype)
    x0 = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
    return x0, _confidence(logits, x0)


@torch.no_grad()
def generate(
    model: LLaDA,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    policy: Policy,
    special: SpecialIds,
    reference: Tensor | Sequence[Sequence[int]] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
) -> GenerationOutput:
    if not prompts:
        return GenerationOutput(torch.empty(0, config.gen_length, dtype=torch.long))
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token")
    device, mask_id = model.device, special.mask
    bsz, G, BL = len(prompts), config.gen_length, config.block_length
    P = max(len(p) for p in prompts)
    T = P + G
    if T > model.config.max_sequence_length:
        raise ValueError(f"prompt ({P} tokens) + gen_length ({G}) exceeds the model's max_sequence_length "
                         f"({model.config.max_sequence_length})")
    policy.to(device)
    lengths = torch.tensor([len(p) for p in prompts])
    x = torch.full((bsz, T), mask_id, dtype=torch.long)
    for i, p in enumerate(prompts):  # host-side set-up, once per batch
        x[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
    x[:, :P].masked_fill_(torch.arange(P) < (P - lengths).unsqueeze(1), special.eos)
    valid = torch.arange(T) >= (P - lengths).unsqueeze(1)
    has_pad = bool((lengths < P).any())
    x, valid = x.to(device), valid.to(device)
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    seeds = torch.tensor([rng.row_seed(list(p), config.seed) for p in prompts], device=device)
    ref = None
    if reference is not None:
        ref = torch.as_tensor(reference, dtype=torch.long).to(device)
        if ref.shape != (bsz, G):
            raise ValueError(f"reference must have shape [batch, gen_length] = [{bsz}, {G}], got {list(ref.shape)}")
    end_ids = torch.tensor(special.end_ids, device=device)
    limit = torch.full((bsz,), T, dtype=torch.long, device=device)  # live sequence end per row (EoTP cuts)
    strategy = make_strategy(config.cache, model, bsz, T, cuda_graph=config.cuda_graph)
    counts: list[Tensor] = []  # per step: committed count per original row, -1 when the row sat out
    positions = torch.zeros(bsz, dtype=torch.long)
    arange_t = torch.arange(T, device=device)

    _sync(device)
    t0 = time.perf_counter()
    for blk in range(config.num_blocks):
        bs, be = P + blk * BL, P + (blk + 1) * BL
        masked_all = x[:, bs:be] == mask_id
        state_host = torch.cat([masked_all.any(-1).long(), limit]).tolist()  # one sync per block start
        cur_host = [i for i in range(bsz) if state_host[i]]
        if not cur_host:
            continue
        cur = torch.tensor(cur_host, device=device)
        max_limit = max(state_host[bsz + i] for i in cur_host)
        schedule = linear_schedule(masked_all[cur].sum(-1), config.steps_per_block) if policy.scheduled else None
        max_steps = config.steps_per_block if policy.scheduled else BL
        for step in range(max_steps):
            block_x = x[cur, bs:be]
            masked = block_x == mask_id
            if step > 0:
                synced = torch.cat([masked.any(-1).long(), limit[cur]]).tolist()  # the step's one sync
                n = cur.numel()
                keep_host = [j for j in range(n) if synced[j]]
                if not keep_host:
                    break
                max_limit = max(synced[n + j] for j in keep_host)
                if len(keep_host) < n:
                    idx = torch.tensor(keep_host, device=device)
                    cur, block_x, masked = cur[idx], block_x[idx], masked[idx]
                    schedule = None if schedule is None else schedule[idx]
                    strategy.keep(idx)
                    cur_host = [cur_host[j] for j in keep_host]
            length = max(max_limit, be)
            lim = limit[cur]
            key_mask = None
            if has_pad or max_limit < T:
                key_mask = valid[cur, :length] & (arange_t[:length] < lim.unsqueeze(1))
            before = model.positions_computed
            logits = strategy.logits(StepInput(x[cur, :length], pos[cur, :length], key_mask, (bs, be), length,
                                               refresh=step == 0))
            positions[cur_host] += (model.positions_computed - before) // len(cur_host)
            x0, conf = _predict(logits, config.temperature, seeds[cur], (blk, step, _GUMBEL), fused=model.compiled)
            if schedule is not None:
                k = torch.minimum(schedule[:, step], masked.sum(-1))
            else:
                k = torch.ones(len(cur_host), dtype=torch.long, device=device)
            state = StepState(
                conf=conf, x0=x0, masked=masked, k=k, step=step, block=blk, block_start=bs - P, rows=cur,
                reference=None if ref is None else ref[cur, bs - P:be - P],
                uniform=lambda purpose, _s=seeds[cur], _b=blk, _t=step: rng.uniform(_s, (_b, _t, purpose), (BL,)),
            )
            commit = policy.select(state) & masked
            stalled = masked.any(-1) & ~commit.any(-1)  # safety net: every step makes progress
            commit |= top1_mask(state.masked_conf) & stalled.unsqueeze(-1)
            x[cur, bs:be] = torch.where(commit, state.x0, block_x)
            if config.eotp:
                is_end = commit & torch.isin(state.x0, end_ids)
                first = torch.where(is_end.any(-1), is_end.long().argmax(-1), BL)
                new_lim = torch.minimum(lim, torch.where(first < BL, bs + first + 1, T))
                # Everything after the cut is end-of-text, also tokens committed there in this same step.
                x[cur] = x[cur].masked_fill(arange_t >= new_lim.unsqueeze(1), special.eos)
                limit[cur] = new_lim
            step_counts = torch.full((bsz,), -1, dtype=torch.long, device=device)
            step_counts[cur] = commit.sum(-1)
            counts.append(step_counts)
            if on_step is not None:
                on_step(StepEvent(conf=conf, x0=state.x0, masked=masked, commit=commit, step=step, block=blk,
                                  rows=cur))
    _sync(device)
    wall = time.perf_counter() - t0

    answer = x[:, P:]
    is_end = torch.isin(answer, end_ids)
    num_tokens = torch.where(is_end.any(-1), is_end.long().argmax(-1), G)
    per_step = torch.stack(counts, 1).tolist() if counts else [[] for _ in range(bsz)]
    saved, ntok = (T - limit).tolist(), num_tokens.tolist()
    stats = []
    for i in range(bsz):
        row = [c for c in per_step[i] if c >= 0]
        stats.append(RowStats(nfe=len(row), committed_per_step=row, seconds=wall / bsz, latency=wall,
                              num_tokens=ntok[i], eotp_saved=saved[i], positions=int(positions[i])))
    return GenerationOutput(tokens=answer.cpu(), stats=stats, sequences=x.cpu())
