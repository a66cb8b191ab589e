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
from typing import Literal

import torch
from torch import Tensor

from l2pd_eval.caches import CACHES, ForwardStrategy, StepInput, exact_rows, make_strategy, row_bucket
from l2pd_eval.engine import rng
from l2pd_eval.engine.layout import LeftPadded, left_pad
from l2pd_eval.model.compiling import compile_dynamic
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies.base import Policy, StepState, top1_mask
from l2pd_eval.policies.scores import step_statistics

_GUMBEL = 0  # rng purpose ids; policies use others
_GUMBEL_AFTER = 3  # Gumbel draws for the positions after the block (EoTP ``true`` without a cache)
AFTER_CHUNK = 64  # positions after the block whose predictions are computed at once (bounds memory)

# EoTP rules (docs/conventions.md): "true" = Learn2PD's reference code (cut after a *predicted* end),
# "committed" = cut after a *committed* end token, "false" = none.
EotpMode = Literal["false", "true", "committed"]
EOTP_MODES: tuple[str, ...] = ("false", "true", "committed")


def eotp_mode(value: str | bool) -> str:
    """``GenerationConfig.eotp`` from a mode name or a bool (True = the reference rule ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in EOTP_MODES:
        raise ValueError(f"eotp={value!r} is unknown; valid choices: {', '.join(EOTP_MODES)} (or a bool)")
    return text


@dataclass
class GenerationConfig:
    """Decoding settings. ``steps`` (total, default ``gen_length``) drives the linear schedule of the
    scheduled policies (low_confidence, random, learn2pd); threshold/factor/oracle ignore it."""

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    temperature: float = 0.0
    cache: str = "none"
    eotp: EotpMode | bool = "false"  # normalised to a mode name (``eotp_mode``); True means "true"
    seed: int = 0
    cuda_graph: bool = False  # replay the cached steps of prefix/dual as CUDA graphs (CUDA only)
    # Speed switches, chosen at the edge (none changes what is decoded beyond float rounding):
    compile: bool = False  # fused (torch.compile) confidence statistics; the model's blocks are compiled
    #                        separately, by LLaDA.compile_blocks
    compile_autotune: bool = False  # let inductor time reduction configs (model.compiling.compile_dynamic)
    split_keys: bool = True  # let batch-1 attention use the key-splitting flash kernel (model.attention)
    graph_row_buckets: bool = True  # CUDA graphs for row buckets (caches.row_bucket), not per row count
    graph_width_bucket: int = 128  # prefix cache + CUDA graphs at batch 1: chunks padded to a multiple of
    #                                this, so a graph serves several blocks (caches.PrefixCache); 0: exact

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
        if self.graph_width_bucket < 0:
            raise ValueError(f"graph_width_bucket={self.graph_width_bucket} must be >= 0 (0: exact widths)")
        eotp_mode(self.eotp)


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
def _greedy_compiled(autotune: bool = False) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``_greedy`` as fused reductions: one pass over the bf16 logits instead of a float32 copy plus three
    passes over it (measured in docs/benchmarks.md)."""
    return compile_dynamic(_greedy, autotune)


def _predict(logits: Tensor, temperature: float, seeds: Tensor, salt: tuple[int, ...],
             fused: bool = False, autotune: bool = False) -> tuple[Tensor, Tensor]:
    """x0 (argmax, or a Gumbel-max sample at ``temperature``) and its probability under the model.
    ``fused`` runs the greedy statistics through ``torch.compile`` (``GenerationConfig.compile``)."""
    if temperature <= 0:
        return (_greedy_compiled(autotune) if fused else _greedy)(logits)
    logits = _work(logits)
    u = rng.uniform(seeds, salt, tuple(logits.shape[1:])).to(logits.dtype)
    x0 = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
    return x0, _confidence(logits, x0)


@dataclass
class DecodeState:
    """The batch being decoded, on the device except ``positions`` (host counters, read once at the end)."""

    x: Tensor                 # [B, T] left-padded prompts then the answer; mask id where not yet decoded
    layout: LeftPadded        # valid keys and rope positions of ``x`` (prompt width P = layout.width)
    seeds: Tensor             # [B] per-prompt rng seeds
    reference: Tensor | None  # [B, gen_length] target answers for policies that need one
    end_ids: Tensor           # ids that end an answer
    limit: Tensor             # [B] live sequence end per row (EoTP cuts; T when uncut)
    positions: Tensor         # [B] host: query positions the network computed per row
    arange: Tensor            # [T] column indices, on the device
    counts: list[Tensor] = field(default_factory=list)  # per step: committed count per row, -1 sat out

    @property
    def prompt_width(self) -> int:
        return self.layout.width

    @property
    def total(self) -> int:
        return self.x.shape[1]


@dataclass
class BlockRows:
    """The rows still decoding the current block (shrinks as rows finish it)."""

    start: int                # absolute [start, end) of the block
    end: int
    idx: Tensor               # [n] row indices into the batch, on the device
    host: list[int]           # the same on the host
    max_limit: int            # largest live sequence end among them
    schedule: Tensor | None   # [n, steps_per_block] commits per step (scheduled policies)

    def keep(self, keep_host: list[int], device: torch.device) -> Tensor:
        idx = torch.tensor(keep_host, device=device)
        self.idx = self.idx[idx]
        self.schedule = None if self.schedule is None else self.schedule[idx]
        self.host = [self.host[j] for j in keep_host]
        return idx


@dataclass
class EotpStep:
    """What an EoTP rule sees of one step, for the block's rows (``[n, block]`` unless noted)."""

    commit: Tensor            # positions committed this step
    x0: Tensor                # predicted tokens (the committed ones where ``commit``)
    conf: Tensor              # probability of x0 under the model
    masked: Tensor            # masked before this step's commit
    accepted: Tensor | None   # masked positions the policy accepted on its own merit, before any schedule
    #                           fill (Learn2PD's filter); None for policies without such a notion
    after_x0: Tensor | None = None    # [n, S] predictions for positions [end, end + S) (EoTP "true", no cache)
    after_conf: Tensor | None = None  # [n, S] their probabilities


# An EoTP rule: from the state after the step's commit (``state.x``, ``state.limit``) and the step, the new
# live sequence ends [n] of the block's rows (never later than ``state.limit[rows.idx]``). The engine then
# fills everything past a row's end with end-of-text.
EotpRule = Callable[[DecodeState, BlockRows, EotpStep], Tensor]


def cut_at_first_committed_end(state: DecodeState, rows: BlockRows, step: EotpStep) -> Tensor:
    """EoTP ``committed``: once an end-of-text/turn token is committed, the answer ends there."""
    width = step.commit.shape[-1]
    is_end = step.commit & torch.isin(step.x0, state.end_ids)
    first = torch.where(is_end.any(-1), is_end.long().argmax(-1), width)
    return torch.minimum(state.limit[rows.idx], torch.where(first < width, rows.start + first + 1, state.total))


def cut_at_predicted_end(state: DecodeState, rows: BlockRows, step: EotpStep) -> Tensor:
    """EoTP ``true``, Learn2PD's reference rule: among the positions still masked before this step, the
    first one the policy accepted (its filter, before the schedule's top-k) whose prediction is an end id;
    else the most confident one predicting an end id (first on ties). The answer is cut right after it:
    the position itself stays, still to be decoded. Without a cache the search also covers the positions
    after the block (``step.after_x0``); with one only the block (docs/conventions.md)."""
    ends = block_ends = step.masked & torch.isin(step.x0, state.end_ids)
    conf = step.conf
    if step.after_x0 is not None:
        live = state.arange[rows.end:rows.end + step.after_x0.shape[1]] < state.limit[rows.idx].unsqueeze(1)
        ends = torch.cat([ends, live & torch.isin(step.after_x0, state.end_ids)], -1)
        conf = torch.cat([conf, step.after_conf.to(conf.dtype)], -1)
    where = conf.masked_fill(~ends, float("-inf")).argmax(-1)
    if step.accepted is not None:
        accepted_end = step.accepted & block_ends
        where = torch.where(accepted_end.any(-1), accepted_end.long().argmax(-1), where)
    cut = torch.where(ends.any(-1), rows.start + where + 1, state.total)
    return torch.minimum(state.limit[rows.idx], cut)


EOTP_RULES: dict[str, EotpRule] = {"true": cut_at_predicted_end, "committed": cut_at_first_committed_end}


def eotp_rule(config: GenerationConfig) -> EotpRule | None:
    """The EoTP rule the config selects (None: answers always run to ``gen_length``)."""
    return EOTP_RULES.get(eotp_mode(config.eotp))


def _predict_after(logits: Tensor, temperature: float, seeds: Tensor, salt: tuple[int, ...],
                   fused: bool, autotune: bool = False) -> tuple[Tensor, Tensor]:
    """x0 and its probability for the positions after the block, ``AFTER_CHUNK`` positions at a time, so
    the float32 statistics (and Gumbel draws) never cover the whole tail at once. Draws are salted by the
    chunk, whose origin is the block end for every row: a row draws the same alone or batched."""
    x0s, confs = [], []
    for c in range(0, logits.shape[1], AFTER_CHUNK):
        x0, conf = _predict(logits[:, c:c + AFTER_CHUNK], temperature, seeds, (*salt, c), fused, autotune)
        x0s.append(x0)
        confs.append(conf)
    return torch.cat(x0s, -1), torch.cat(confs, -1)


def _start(model: DiffusionLM, prompts: Sequence[Sequence[int]], config: GenerationConfig, special: SpecialIds,
           reference: Tensor | Sequence[Sequence[int]] | None) -> DecodeState:
    """Validate the request and lay the batch out: left-padded prompts, then ``gen_length`` masks."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token")
    device, bsz, G = model.device, len(prompts), config.gen_length
    P = max(len(p) for p in prompts)
    if P + G > model.config.max_sequence_length:
        raise ValueError(f"prompt ({P} tokens) + gen_length ({G}) exceeds the model's max_sequence_length "
                         f"({model.config.max_sequence_length})")
    layout = left_pad(prompts, special.eos, device, tail=G, tail_id=special.mask)
    seeds = torch.tensor([rng.row_seed(list(p), config.seed) for p in prompts], device=device)
    ref = None
    if reference is not None:
        ref = torch.as_tensor(reference, dtype=torch.long).to(device)
        if ref.shape != (bsz, G):
            raise ValueError(f"reference must have shape [batch, gen_length] = [{bsz}, {G}], got {list(ref.shape)}")
    return DecodeState(
        x=layout.ids, layout=layout, seeds=seeds, reference=ref,
        end_ids=torch.tensor(special.end_ids, device=device),
        limit=torch.full((bsz,), P + G, dtype=torch.long, device=device),
        positions=torch.zeros(bsz, dtype=torch.long), arange=torch.arange(P + G, device=device),
    )


def _block_rows(state: DecodeState, blk: int, config: GenerationConfig, policy: Policy,
                mask_id: int) -> BlockRows | None:
    """The rows with masks left in block ``blk`` (one host sync), with their schedule; None if none."""
    bsz = state.x.shape[0]
    bs = state.prompt_width + blk * config.block_length
    be = bs + config.block_length
    masked_all = state.x[:, bs:be] == mask_id
    state_host = torch.cat([masked_all.any(-1).long(), state.limit]).tolist()
    cur_host = [i for i in range(bsz) if state_host[i]]
    if not cur_host:
        return None
    cur = torch.tensor(cur_host, device=state.x.device)
    max_limit = max(state_host[bsz + i] for i in cur_host)
    schedule = linear_schedule(masked_all[cur].sum(-1), config.steps_per_block) if policy.scheduled else None
    return BlockRows(bs, be, cur, cur_host, max_limit, schedule)


def _narrow(state: DecodeState, rows: BlockRows, block_x: Tensor, masked: Tensor,
            strategy: ForwardStrategy) -> tuple[Tensor, Tensor] | None:
    """The step's one host sync: drop the rows whose block is done (also from the strategy's state).
    Returns the remaining rows' (block tokens, mask positions), or None when no row is left."""
    synced = torch.cat([masked.any(-1).long(), state.limit[rows.idx]]).tolist()
    n = rows.idx.numel()
    keep_host = [j for j in range(n) if synced[j]]
    if not keep_host:
        return None
    rows.max_limit = max(synced[n + j] for j in keep_host)
    if len(keep_host) < n:
        idx = rows.keep(keep_host, state.x.device)
        block_x, masked = block_x[idx], masked[idx]
        strategy.keep(idx)
    return block_x, masked


def _forward(state: DecodeState, rows: BlockRows, strategy: ForwardStrategy, refresh: bool,
             after: bool = False) -> Tensor:
    """The block's logits for the current rows over the live sequence (hiding padding and cut tails);
    ``after``: also those of the positions after the block, up to the live length."""
    length = max(rows.max_limit, rows.end)
    key_mask = None
    if state.layout.padded or rows.max_limit < state.total:
        visible = state.arange[:length] < state.limit[rows.idx].unsqueeze(1)
        key_mask = state.layout.valid[rows.idx, :length] & visible
    logits = strategy.logits(StepInput(state.x[rows.idx, :length], state.layout.positions[rows.idx, :length],
                                       key_mask, (rows.start, rows.end), length, refresh=refresh, after=after))
    state.positions[rows.host] += strategy.positions // len(rows.host)
    return logits


def _select(policy: Policy, step: StepState) -> tuple[Tensor, Tensor | None]:
    """The policy's commit, restricted to masked positions (a row that would stall commits its top-1),
    and the masked positions it accepted on their own merit (``Policy.select_with_accepted``)."""
    chosen, accepted = policy.select_with_accepted(step)
    commit = chosen & step.masked
    stalled = step.masked.any(-1) & ~commit.any(-1)  # safety net: every step makes progress
    commit = commit | (top1_mask(step.masked_conf) & stalled.unsqueeze(-1))
    return commit, None if accepted is None else accepted & step.masked


def _cut(state: DecodeState, rows: BlockRows, new_limit: Tensor, eos: int) -> None:
    """Apply an EoTP cut: everything after a row's live end is end-of-text, also tokens committed there
    in this same step."""
    state.x[rows.idx] = state.x[rows.idx].masked_fill(state.arange >= new_limit.unsqueeze(1), eos)
    state.limit[rows.idx] = new_limit


def _row_stats(state: DecodeState, wall: float) -> list[RowStats]:
    """Per-row statistics; the one host copy after the loop."""
    bsz, answer = state.x.shape[0], state.x[:, state.prompt_width:]
    is_end = torch.isin(answer, state.end_ids)
    num_tokens = torch.where(is_end.any(-1), is_end.long().argmax(-1), answer.shape[1])
    per_step = torch.stack(state.counts, 1).tolist() if state.counts else [[] for _ in range(bsz)]
    saved, ntok = (state.total - state.limit).tolist(), num_tokens.tolist()
    stats = []
    for i in range(bsz):
        row = [c for c in per_step[i] if c >= 0]
        stats.append(RowStats(nfe=len(row), committed_per_step=row, seconds=wall / bsz, latency=wall,
                              num_tokens=ntok[i], eotp_saved=saved[i], positions=int(state.positions[i])))
    return stats


@dataclass
class _Run:
    """What stays fixed during one ``generate`` call."""

    model: DiffusionLM
    config: GenerationConfig
    policy: Policy
    special: SpecialIds
    strategy: ForwardStrategy
    eotp: EotpRule | None
    on_step: Callable[[StepEvent], None] | None


def _step(run: _Run, state: DecodeState, rows: BlockRows, blk: int, step: int) -> bool:
    """One step of block ``blk``: predict -> select -> commit -> EoTP. False when every row is done."""
    mask_id, BL, P = run.special.mask, run.config.block_length, state.prompt_width
    block_x = state.x[rows.idx, rows.start:rows.end]
    masked = block_x == mask_id
    if step > 0:
        narrowed = _narrow(state, rows, block_x, masked, run.strategy)
        if narrowed is None:
            return False
        block_x, masked = narrowed
    # predict
    after = run.eotp is cut_at_predicted_end and run.config.cache == "none"
    logits = _forward(state, rows, run.strategy, refresh=step == 0, after=after)
    logits, after_logits = logits[:, :BL], logits[:, BL:]
    seeds = state.seeds[rows.idx]
    x0, conf = _predict(logits, run.config.temperature, seeds, (blk, step, _GUMBEL), fused=run.config.compile,
                       autotune=run.config.compile_autotune)
    needs = run.policy.needs
    stats = step_statistics(logits, needs, run.config.temperature, x0) if needs else {}
    # select
    if rows.schedule is not None:
        k = torch.minimum(rows.schedule[:, step], masked.sum(-1))
    else:
        k = torch.ones(len(rows.host), dtype=torch.long, device=state.x.device)
    st = StepState(
        conf=conf, x0=x0, masked=masked, k=k, step=step, block=blk, block_start=rows.start - P, rows=rows.idx,
        reference=None if state.reference is None else state.reference[rows.idx, rows.start - P:rows.end - P],
        uniform=lambda purpose, _s=seeds, _b=blk, _t=step: rng.uniform(_s, (_b, _t, purpose), (BL,)),
        stats=stats,
    )
    commit, accepted = _select(run.policy, st)
    # commit
    state.x[rows.idx, rows.start:rows.end] = torch.where(commit, st.x0, block_x)
    # EoTP
    if run.eotp is not None:
        eot = EotpStep(commit, st.x0, conf, masked, accepted)
        if after and after_logits.shape[1]:
            eot.after_x0, eot.after_conf = _predict_after(after_logits, run.config.temperature, seeds,
                                                          (blk, step, _GUMBEL_AFTER), run.config.compile,
                                                          run.config.compile_autotune)
        _cut(state, rows, run.eotp(state, rows, eot), run.special.eos)
    step_counts = torch.full((state.x.shape[0],), -1, dtype=torch.long, device=state.x.device)
    step_counts[rows.idx] = commit.sum(-1)
    state.counts.append(step_counts)
    if run.on_step is not None:
        run.on_step(StepEvent(conf=conf, x0=st.x0, masked=masked, commit=commit, step=step, block=blk,
                              rows=rows.idx))
    return True


@torch.no_grad()
def generate(
    model: DiffusionLM,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    policy: Policy,
    special: SpecialIds,
    reference: Tensor | Sequence[Sequence[int]] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
) -> GenerationOutput:
    """Decode an answer of ``config.gen_length`` tokens for every prompt (token ids, no special tokens added).

    Prompts are left-padded with ``special.eos`` to the longest (``engine.layout``), the answer starts
    masked (``special.mask``) at the same column P in every row and is decoded block by block. Each step of
    a block: predict (the strategy's block logits -> x0 and its probability, greedy or Gumbel-max at
    ``config.temperature`` with per-prompt seeds, plus the statistics the policy ``needs``) -> select (the policy; a row that would stall commits its
    most confident position) -> commit -> EoTP (``eotp_rule``: may cut a row's answer, filling the rest with
    ``special.eos``). Rows whose block has no masks left sit out until the next block; there is one host
    sync per step. ``reference`` [B, gen_length] is the target answer for policies that need one (oracle).
    ``on_step`` sees every step's prediction and commit (trajectory recording). ``stats[i]`` counts the
    forward passes row i took part in, its commits per step, its share of the wall time, answer tokens
    before the first end id, positions an EoTP cut spared, and query positions computed for it.
    """
    if not prompts:
        return GenerationOutput(torch.empty(0, config.gen_length, dtype=torch.long))
    state = _start(model, prompts, config, special, reference)
    policy.to(model.device)
    graphed_single = config.cuda_graph and model.device.type == "cuda" and len(prompts) == 1
    strategy = make_strategy(config.cache, model, len(prompts), state.total, cuda_graph=config.cuda_graph,
                             split_keys=config.split_keys,
                             graph_rows=row_bucket if config.graph_row_buckets else exact_rows,
                             width_bucket=config.graph_width_bucket if graphed_single else 0)
    run = _Run(model, config, policy, special, strategy, eotp_rule(config), on_step)
    max_steps = config.steps_per_block if policy.scheduled else config.block_length

    _sync(model.device)
    t0 = time.perf_counter()
    for blk in range(config.num_blocks):
        rows = _block_rows(state, blk, config, policy, special.mask)
        if rows is None:
            continue
        for step in range(max_steps):
            if not _step(run, state, rows, blk, step):
                break
    _sync(model.device)
    wall = time.perf_counter() - t0
    P = state.prompt_width
    return GenerationOutput(tokens=state.x[:, P:].cpu(), stats=_row_stats(state, wall), sequences=state.x.cpu())
