"""Semi-autoregressive masked-diffusion decoding over a batch: the one block loop every policy, cache and
EoTP setting goes through.

Layout: prompts are **left-padded** to a common length P, so every row's answer occupies the same
absolute slots ``[P, P + gen_length)`` and blocks line up across rows; padding is hidden from attention by
a key mask and rope positions count from each row's first real token, so a row decodes as it would alone.
A row that finishes its block early simply drops out of the forward passes until the next block.
Per step there is a single host sync (which rows still have masks, and how long the live sequence is).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.caches import ForwardStrategy, StepInput, cache_class
from l2pd_eval.caches import available as available_caches
from l2pd_eval.engine import rng
from l2pd_eval.engine.commit import StepCommit, check_remask_budget, post_edit, resolve
from l2pd_eval.engine.config import GenerationConfig
from l2pd_eval.engine.eotp import EotpRule, EotpStep, cut_at_predicted_end, eotp_rule
from l2pd_eval.engine.layout import block_grid, left_pad
from l2pd_eval.engine.predict import EndTokenKnobs, Predictor
from l2pd_eval.engine.schedule import dream_count, dream_times, linear_schedule
from l2pd_eval.engine.speed import SpeedConfig
from l2pd_eval.engine.state import BlockRows, DecodeState, GenerationOutput, RowStats, StepEvent
from l2pd_eval.engine.verify import copy_slots, verify_prob
from l2pd_eval.engine.views import answer_logits, logit_gap
from l2pd_eval.errors import ConfigError
from l2pd_eval.model.family import family_name
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies.base import AnswerView, Policy, RunSettings, StepState
from l2pd_eval.policies.scores import step_statistics

_GUMBEL = 0  # rng purpose ids; policies use others
_GUMBEL_AFTER = 3  # Gumbel draws for the positions after the block (EoTP ``true`` with ``logits_after``)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Run:
    """What stays fixed during one ``generate`` call."""

    config: GenerationConfig
    policy: Policy
    special: SpecialIds
    strategy: ForwardStrategy
    predict: Predictor
    eotp: EotpRule | None
    after: bool  # the EoTP rule searches after the block and the strategy can predict there
    on_step: Callable[[StepEvent], None] | None
    times: Tensor | None = None  # Dream's time grid for a policy on ``schedule = "dream"``
    ends: EndTokenKnobs | None = None  # logits_eos_inf / eos_conf_zero (None: both off)


def check_query_slots(policy: Policy, cache: str) -> bool:
    """Whether the bound ``policy`` needs query-only slots in its forwards (WINO's verification copy,
    Prophet's view of the answer); a cache that cannot serve them (``ForwardStrategy.query_slots``), a
    policy's horizons or its edits is refused before any decoding, never ignored."""
    needs = policy.needs_query_slots
    if needs and not cache_class(cache).query_slots:
        what = "its verification copy of the block" if policy.verifies else "its view of the answer after the block"
        able = ", ".join(n for n in available_caches() if cache_class(n).query_slots)
        raise ConfigError(f"policy={policy.name!r} needs query-only slots in every forward ({what}), which "
                          f"cache={cache!r} cannot serve; use cache={able}")
    if policy.horizons and not cache_class(cache).horizons:
        able = ", ".join(n for n in available_caches() if cache_class(n).horizons)
        raise ConfigError(f"policy={policy.name!r} cuts a row's next forward at a horizon, which cache={cache!r} "
                          f"cannot serve (its kept state was computed over the hidden positions); use cache={able}")
    if policy.edits and not cache_class(cache).edits:
        able = ", ".join(n for n in available_caches() if cache_class(n).edits)
        raise ConfigError(f"policy={policy.name!r} edits committed tokens from each step's predictions, which "
                          f"cache={cache!r} cannot serve (it reuses the predictions of committed positions); use "
                          f"cache={able}")
    return needs


def _prepare(model: DiffusionLM, batch: int, total: int, config: GenerationConfig, policy: Policy, special: SpecialIds,
             speed: SpeedConfig, on_step: Callable[[StepEvent], None] | None) -> _Run:
    """The one place the speed switches apply (compiled blocks and statistics, graphs, kernels), and the
    policy is bound to the run."""
    speed.prepare(model)
    policy = policy.bind(RunSettings(block_length=config.block_length, gen_length=config.gen_length,
                                     device=model.device, constraints=tuple(o for o, _ in config.constraints),
                                     family=family_name(model.config), temperature=config.temperature,
                                     steps_per_block=config.steps_per_block))
    check_remask_budget(policy)
    if policy.verifies and policy.finishes:
        raise ValueError(f"policy={policy.name!r}: verifies and finishes both need the step's query slots; "
                         f"a policy declares one of them")
    slots = check_query_slots(policy, config.cache)
    # query-only slots (caches.extra) keep their keys/values in scratch positions after the sequence
    scratch = policy.forward_extras(config.block_length, config.gen_length, model.logit_shift).slots if slots else 0
    strategy = speed.strategy(config.cache, model, batch, total + scratch, config.cache_params)
    rule = eotp_rule(config)
    ends = EndTokenKnobs.of(config.eos_conf_zero, config.eos_conf_rule, config.logits_eos_inf, special.eos,
                            tuple(i for i in special.end_ids if i != special.eos))
    if ends is not None and not ends.renormalise and {"margin", "neg_entropy"} & set(policy.needs):
        raise ConfigError(f"eos_conf_rule=zero sets a probability to 0, but policy={policy.name!r} ranks by "
                          f"{', '.join(sorted({'margin', 'neg_entropy'} & set(policy.needs)))}; use eos_conf_rule=code "
                          f"or fixed (the distribution without the end tokens)")
    dream = policy.scheduled and policy.schedule == "dream"
    times = dream_times(config.steps_per_block, model.device) if dream else None
    return _Run(config, policy, special, strategy, speed.predictor(policy.confidence), rule,
                rule is cut_at_predicted_end and strategy.logits_after, on_step, times=times, ends=ends)


def _start(model: DiffusionLM, prompts: Sequence[Sequence[int]], config: GenerationConfig, special: SpecialIds,
           reference: Tensor | Sequence[Sequence[int]] | None) -> DecodeState:
    """Validate the request and lay the batch out: left-padded prompts, then ``gen_length`` masks (and, for
    a block-causal network, the masks that complete its last block: ``engine.layout.block_grid``)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token")
    device, bsz, G = model.device, len(prompts), config.gen_length
    P = max(len(p) for p in prompts)
    grid = block_grid(P, len(prompts[0]), G, config.block_length, _grid_of(model) is not None)
    if grid.total > model.config.max_sequence_length:
        raise ValueError(f"prompt ({P} tokens) + gen_length ({G}) exceeds the model's max_sequence_length "
                         f"({model.config.max_sequence_length})")
    layout = left_pad(prompts, special.eos, device, tail=grid.total - P, tail_id=special.mask)
    seeds_host = [rng.row_seed(list(p), config.seed) for p in prompts]
    seeds = torch.tensor(seeds_host, device=device)
    ref = None
    if reference is not None:
        ref = torch.as_tensor(reference, dtype=torch.long).to(device)
        if ref.shape != (bsz, G):
            raise ValueError(f"reference must have shape [batch, gen_length] = [{bsz}, {G}], got {list(ref.shape)}")
        if grid.total != P + G:  # indexed by the grid's columns from P - shift
            ref = torch.nn.functional.pad(ref, (grid.shift, grid.total - P - G), value=special.mask)
    constrained = None
    if config.constraints:  # fixed answer tokens: never masked, so no schedule counts them
        offsets = torch.tensor([o for o, _ in config.constraints], device=device)
        layout.ids[:, P + offsets] = torch.tensor([t for _, t in config.constraints], device=device)
        constrained = torch.zeros(grid.total, dtype=torch.bool, device=device)
        constrained[P + offsets] = True
    return DecodeState(
        x=layout.ids, layout=layout, seeds=seeds, reference=ref,
        end_ids=torch.tensor(special.end_ids, device=device),
        limit=torch.full((bsz,), grid.total, dtype=torch.long, device=device),
        positions=torch.zeros(bsz, dtype=torch.long), arange=torch.arange(grid.total, device=device),
        seeds_host=seeds_host, forwards=torch.zeros(bsz, dtype=torch.long, device=device),
        constrained=constrained, grid_shift=grid.shift, answer_end=P + G, num_blocks=grid.num_blocks,
    )


def _block_rows(state: DecodeState, blk: int, config: GenerationConfig, policy: Policy,
                mask_id: int) -> BlockRows | None:
    """The rows with masks left in block ``blk`` (one host sync), with their schedule; None if none."""
    bsz = state.x.shape[0]
    bs = state.prompt_width - state.grid_shift + blk * config.block_length
    be = bs + config.block_length
    masked_all = state.x[:, bs:be] == mask_id
    state_host = torch.cat([masked_all.any(-1).long(), state.limit]).tolist()
    cur_host = [i for i in range(bsz) if state_host[i]]
    if not cur_host:
        return None
    cur = torch.tensor(cur_host, device=state.x.device)
    limits = [state_host[bsz + i] for i in cur_host]
    linear = policy.scheduled and policy.schedule == "linear"
    schedule = linear_schedule(masked_all[cur].sum(-1), config.steps_per_block) if linear else None
    return BlockRows(bs, be, cur, cur_host, max(limits), schedule, memory=policy.begin_block(blk, cur),
                     limits=limits, policy_state=policy.init_state(cur, blk))


def _narrow(state: DecodeState, rows: BlockRows, block_x: Tensor, masked: Tensor,
            strategy: ForwardStrategy) -> tuple[Tensor, Tensor] | None:
    """The step's one host sync: drop the rows whose block is done (no mask left, and no post-edit step
    asked for: ``rows.more``; also from the strategy's state). Returns the remaining rows' (block tokens,
    mask positions), or None when no row is left."""
    ends = rows.live_end(state.limit)
    extra = strategy.sync_values(masked, ends)  # the strategy's host values ride along
    going = masked.any(-1) if rows.more is None else masked.any(-1) | rows.more
    synced = torch.cat([going.long(), ends, *(() if extra is None else (extra.long(),))]).tolist()
    n = rows.idx.numel()
    keep_host = [j for j in range(n) if synced[j]]
    if not keep_host:
        return None
    rows.limits = [synced[n + j] for j in keep_host]
    rows.synced = [] if extra is None else [synced[2 * n + j] for j in keep_host]
    rows.max_limit = max(rows.limits)
    if len(keep_host) < n:
        idx = rows.keep(keep_host, state.x.device)
        block_x, masked = block_x[idx], masked[idx]
        strategy.keep(idx)
    return block_x, masked


@dataclass
class _Logits:
    """One forward's logits for the block's rows, by what they predict."""

    block: Tensor          # [n, L, V] the block
    after: Tensor | None   # [n, S, V] the positions after the block (``run.after``, or a ``finishes`` policy)
    copy: Tensor | None    # [n, L, V] the block from its verification copy (``policy.verifies``)
    view: tuple[int, Tensor] | None = None  # (absolute start, [n, W, V]): the answer view (``finishes``)


def _forward(state: DecodeState, rows: BlockRows, run: _Run, step: int, masked: Tensor) -> _Logits:
    """The block's logits for the current rows over the live sequence (hiding padding, cut tails and a
    policy's horizon); with ``run.after`` also those of the positions after the block, up to the live
    length; with a policy that ``verifies``, those of the block's verification copy (engine/verify.py);
    with one that ``finishes``, those of its view of the answer (engine/views.py)."""
    length = max(rows.max_limit, rows.end)
    key_mask = None
    if state.layout.padded or rows.max_limit < state.total or rows.horizon is not None:
        visible = state.arange[:length] < rows.live_end(state.limit).unsqueeze(1)
        key_mask = state.layout.valid[rows.idx, :length] & visible
    x, pos, block = state.x[rows.idx, :length], state.layout.positions[rows.idx, :length], (rows.start, rows.end)
    extra = None
    if run.policy.verifies:
        extra = copy_slots(x, pos, block, length, run.strategy.model.logit_shift, run.special.mask, state.total)
    s = StepInput(x, pos, key_mask, block, length, step=step, masked=masked, after=run.after, extra=extra,
                  first_committed=step > 0 and run.policy.refresh_commit,
                  rows=tuple(rows.host), seeds=tuple(state.seeds_host[r] for r in rows.host),
                  limits=tuple(rows.limits), prompt=state.prompt_width,
                  synced=tuple(rows.synced) if step > 0 else ())
    width = rows.end - rows.start
    start = run.policy.view_start(rows.start - state.prompt_width) if run.policy.finishes else None
    if start is not None:
        lo = state.prompt_width + start
        view = answer_logits(run.strategy, dataclasses.replace(s, after=False), lo, state.total)
        _count_positions(state, rows, run.strategy.positions)
        if run.ends is not None:  # the end-token knobs act on the whole view (the block's again in _predict)
            view = run.ends.logits(view)
        return _Logits(view[:, rows.start - lo:rows.end - lo], view[:, rows.end - lo:], None, (lo, view))
    logits = run.strategy.logits(s)
    _count_positions(state, rows, run.strategy.positions)
    copy = None
    if extra is not None:
        logits, copy = logits[:, :-extra.returned], logits[:, -extra.returned:]
        if run.ends is not None:  # logits_eos_inf: the copy never predicts end of text either (its softmax renormalises)
            copy = run.ends.logits(copy)
    after = logits[:, width:] if run.after and logits.shape[1] > width else None
    if after is not None and run.ends is not None:
        after = run.ends.logits(after)
    return _Logits(logits[:, :width], after, copy)


def _count_positions(state: DecodeState, rows: BlockRows, cost: int | list[int]) -> None:
    """Add a forward's query positions to its rows' counts: the strategy's total (shared evenly) or its
    per-row list."""
    if isinstance(cost, int):  # the same count for every row
        state.positions[rows.host] += cost // len(rows.host)
    else:
        state.positions[rows.host] += torch.tensor(cost, dtype=torch.long)


def _cut(state: DecodeState, rows: BlockRows, new_limit: Tensor, eos: int) -> None:
    """Apply an EoTP cut: everything after a row's live end is end-of-text, also tokens committed there
    in this same step."""
    state.x[rows.idx] = state.x[rows.idx].masked_fill(state.arange >= new_limit.unsqueeze(1), eos)
    state.limit[rows.idx] = new_limit


def _row_stats(state: DecodeState, wall: float) -> list[RowStats]:
    """Per-row statistics; the one host copy after the loop."""
    bsz, answer = state.x.shape[0], state.x[:, state.prompt_width:state.answer_end]
    is_end = torch.isin(answer, state.end_ids)
    num_tokens = torch.where(is_end.any(-1), is_end.long().argmax(-1), answer.shape[1])
    per_step = torch.stack(state.counts, 1).tolist() if state.counts else [[] for _ in range(bsz)]
    remasked = torch.stack(state.remasked, 1).tolist() if state.remasked else None
    edited = torch.stack(state.edited, 1).tolist() if state.edited else None
    saved, ntok = (state.answer_end - state.limit).clamp(min=0).tolist(), num_tokens.tolist()
    stats = []
    for i in range(bsz):
        row = [c for c in per_step[i] if c >= 0]
        undone = [0] * len(row) if remasked is None else [c for c in remasked[i] if c >= 0]
        changed = [0] * len(row) if edited is None else [c for c in edited[i] if c >= 0]
        stats.append(RowStats(nfe=len(row), committed_per_step=row, seconds=wall / bsz, latency=wall,
                              num_tokens=ntok[i], eotp_saved=saved[i], positions=int(state.positions[i]),
                              remasked_per_step=undone, edited_per_step=changed))
    return stats


def _predict(run: _Run, logits: Tensor, seeds: Tensor, blk: int, step: int) -> tuple[Tensor, Tensor, Tensor, dict]:
    """x0, the confidence the policy sees, the model's own probability of x0 (EoTP's), and the statistics
    the policy ``needs``, with the end-token knobs applied (``EndTokenKnobs``)."""
    temperature, needs = run.config.temperature, run.policy.needs
    if run.ends is not None:
        logits = run.ends.logits(logits)
    x0, conf = run.predict(logits, temperature, seeds, (blk, step, _GUMBEL))
    seen, scored, zero = conf, logits, None
    if run.ends is not None:
        seen, scored, zero = run.ends.confidence(logits, x0, conf, temperature, run.policy.confidence)
    stats = step_statistics(scored, needs, temperature, x0, run.policy.confidence) if needs else {}
    for name in stats:
        if name == "logits":
            stats[name] = logits  # the policy's own rescoring starts from what x0 was chosen from
        elif zero is not None and name.startswith("chosen_prob"):
            stats[name] = stats[name].masked_fill(zero, 0.0)
    return x0, seen, conf, stats


def _step_state(run: _Run, state: DecodeState, rows: BlockRows, blk: int, step: int, masked: Tensor,
                out: _Logits, block_x: Tensor) -> tuple[StepState, Tensor]:
    """Predict and what the policy sees; also the model's probability of x0 (EoTP ranks by it)."""
    BL, P, temperature = run.config.block_length, state.prompt_width, run.config.temperature
    ref_col = rows.start - P + state.grid_shift  # the reference is laid out on the grid's columns
    seeds = state.seeds[rows.idx]
    x0, conf, model_conf, stats = _predict(run, out.block, seeds, blk, step)
    if out.copy is not None:
        stats["verify_prob"] = verify_prob(out.copy, block_x)
    if rows.schedule is not None:
        k = torch.minimum(rows.schedule[:, step], masked.sum(-1))
    elif run.times is not None:
        k = dream_count(masked.sum(-1), run.times, step)
    else:
        k = torch.ones(len(rows.host), dtype=torch.long, device=state.x.device)
    answer = None
    if out.view is not None:
        lo, view = out.view
        live = state.arange[lo:lo + view.shape[1]] < state.limit[rows.idx].unsqueeze(1)
        answer = AnswerView(lo - P, logit_gap(view), live)
    return StepState(
        conf=conf, x0=x0, masked=masked, k=k, step=step, block=blk, block_start=rows.start - P, rows=rows.idx,
        reference=None if state.reference is None else state.reference[rows.idx, ref_col:ref_col + BL],
        uniform=lambda purpose, shape=(BL,), _s=seeds, _b=blk, _t=step: rng.uniform(_s, (_b, _t, purpose), shape),
        stats=stats, memory=rows.memory, mask_id=run.special.mask, temperature=temperature,
        forwards=state.forwards[rows.idx], state=rows.policy_state,
        global_step=blk * run.config.steps_per_block + step + 1, total_steps=run.config.total_steps, answer=answer,
        live=state.arange[rows.start:rows.end] < state.limit[rows.idx].unsqueeze(1),
        steps=run.config.steps_per_block, current=block_x,
    ), model_conf


def _remaskable(state: DecodeState, rows: BlockRows) -> Tensor:
    """[n, block] the positions a re-mask or an edit may touch: after the prompt (a block-causal network's
    first block holds the prompt's tail), before each row's live end, and for a row an EoTP cut ended,
    before the position the cut kept (the end it cut on stays; docs/conventions.md)."""
    limit = state.limit[rows.idx]
    cols = state.arange[rows.start:rows.end]
    live = (cols < (limit - (limit < state.total).long()).unsqueeze(1)) & (cols >= state.prompt_width)
    return live if state.constrained is None else live & ~state.constrained[rows.start:rows.end]


def _tail_x0(run: _Run, state: DecodeState, rows: BlockRows, logits: Tensor, salt: tuple[int, ...]) -> Tensor:
    """x0 after the block for a finishing policy's fill: the argmax (greedy), or the same Gumbel draws an
    EoTP search there would make."""
    if run.config.temperature <= 0:
        return logits.argmax(-1)
    return run.predict.chunked(logits, run.config.temperature, state.seeds[rows.idx], salt)[0]


def _finish(run: _Run, state: DecodeState, rows: BlockRows, c: StepCommit, tail_x0: Tensor) -> Tensor:
    """Rows that finish: every masked position after the block (before the row's live end) takes this
    forward's prediction ``tail_x0`` [n, S]. Returns how many positions each row filled there."""
    end = rows.end + tail_x0.shape[1]
    tail = state.x[rows.idx, rows.end:end]
    fill = (tail == run.special.mask) & c.finish.unsqueeze(1)
    fill &= state.arange[rows.end:end] < state.limit[rows.idx].unsqueeze(1)
    state.x[rows.idx, rows.end:end] = torch.where(fill, tail_x0, tail)
    return fill.sum(-1)


def _write(run: _Run, state: DecodeState, rows: BlockRows, block_x: Tensor, c: StepCommit,
           filled: Tensor | None = None) -> None:
    """Commit (edit, and re-mask) in the block, and count each per row (-1: the row sat this step out);
    ``filled`` [n]: what finishing rows committed after the block (``_finish``), counted as commits. An edit
    is counted as an edit, never as a commit."""
    block = torch.where(c.written, c.tokens, block_x)
    if c.remask is not None:
        block = block.masked_fill(c.remask, run.special.mask)
    state.x[rows.idx, rows.start:rows.end] = block
    for counts, per_row, extra in ((state.counts, c.commit, filled), (state.remasked, c.remask, None),
                                   (state.edited, c.edit, None)):
        if per_row is not None:
            step_counts = torch.full((state.x.shape[0],), -1, dtype=torch.long, device=state.x.device)
            step_counts[rows.idx] = per_row.sum(-1) if extra is None else per_row.sum(-1) + extra
            counts.append(step_counts)


def _step(run: _Run, state: DecodeState, rows: BlockRows, blk: int, step: int) -> bool:
    """One step of block ``blk``: predict -> select -> commit -> EoTP. False when every row is done."""
    block_x = state.x[rows.idx, rows.start:rows.end]
    masked = block_x == run.special.mask
    if step > 0:
        narrowed = _narrow(state, rows, block_x, masked, run.strategy)
        if narrowed is None:
            return False
        block_x, masked = narrowed
    seen_end = None if rows.horizon is None else rows.live_end(state.limit)
    out = _forward(state, rows, run, step, masked)
    st, model_conf = _step_state(run, state, rows, blk, step, masked, out, block_x)
    state.forwards[rows.idx] += 1
    c = resolve(run.policy, st, lambda: _remaskable(state, rows), rows.last_commits)
    if run.policy.remask_budget == "previous":
        rows.last_commits = c.commit.sum(-1)
    if run.policy.edits:
        rows.post_taken, rows.more = post_edit(run.policy, c, masked, rows.post_taken)
    rows.horizon = None if c.horizon is None else state.prompt_width + c.horizon
    after = None
    if run.after and out.after is not None and out.after.shape[1]:
        after = run.predict.chunked(out.after, run.config.temperature, state.seeds[rows.idx],
                                    (blk, step, _GUMBEL_AFTER))
    filled = None
    if c.finish is not None and out.after is not None and out.after.shape[1]:
        tail_x0 = after[0] if after is not None else _tail_x0(run, state, rows, out.after, (blk, step, _GUMBEL_AFTER))
        filled = _finish(run, state, rows, c, tail_x0)
    _write(run, state, rows, block_x, c, filled)
    if run.eotp is not None:
        eot = EotpStep(c.written, c.tokens, model_conf, masked, c.accepted, remask=c.remask, seen_end=seen_end,
                       more=rows.more)
        if after is not None:
            eot.after_x0, eot.after_conf = after
        _cut(state, rows, run.eotp(state, rows, eot), run.special.eos)
    if run.on_step is not None:
        run.on_step(StepEvent(conf=st.conf, x0=st.x0, masked=masked, commit=c.commit, step=step, block=blk,
                              rows=rows.idx, tokens=c.tokens, remask=c.remask, block_start=st.block_start,
                              edit=c.edit))
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
    speed: SpeedConfig | None = None,
) -> GenerationOutput:
    """Decode an answer of ``config.gen_length`` tokens for every prompt (token ids, no special tokens added).

    Prompts are left-padded with ``special.eos`` to the longest (``engine.layout``), the answer starts
    masked (``special.mask``) at the same column P in every row and is decoded block by block. Each step of
    a block: predict (the strategy's block logits -> x0 and its probability, greedy or Gumbel-max at
    ``config.temperature`` with per-prompt seeds, plus the statistics the policy ``needs``) -> select (the
    policy, bound to the run here; ``engine.commit`` applies its contract) -> commit (and re-mask) -> EoTP
    (``eotp_rule``: may cut a row's answer, filling the rest with ``special.eos``). Rows whose block has no
    masks left sit out until the next block; there is one host sync per step. ``reference`` [B, gen_length]
    is the target answer for policies that need one (oracle). ``on_step`` sees every step's prediction and
    commit (trajectory recording). ``speed``: how fast (``SpeedConfig``; never what is decoded).
    ``stats[i]`` counts the forward passes row i took part in, its commits and re-masks per step, its share
    of the wall time, answer tokens before the first end id, positions an EoTP cut spared, and query
    positions computed for it.
    """
    if not prompts:
        return GenerationOutput(torch.empty(0, config.gen_length, dtype=torch.long))
    if policy.needs_reference and reference is None:
        raise ValueError(f"policy={policy.name!r} needs a reference answer (reference= in generate)")
    check_network_settings(model, config)
    grid = _grid_of(model)
    if grid is not None:
        if len({len(p) % grid for p in prompts}) > 1:
            return _by_grid(model, prompts, config, policy, special, reference, on_step, speed, grid)
    state = _start(model, prompts, config, special, reference)
    run = _prepare(model, len(prompts), state.total, config, policy, special, speed or SpeedConfig(), on_step)
    max_steps = config.steps_per_block if run.policy.scheduled else config.block_length
    if run.policy.edits:
        max_steps += run.policy.max_post_edit_steps

    _sync(model.device)
    t0 = time.perf_counter()
    for blk in range(state.num_blocks):
        rows = _block_rows(state, blk, config, run.policy, special.mask)
        if rows is None:
            continue
        for step in range(max_steps):
            if not _step(run, state, rows, blk, step):
                break
    _sync(model.device)
    wall = time.perf_counter() - t0
    P, end = state.prompt_width, state.answer_end
    return GenerationOutput(tokens=state.x[:, P:end].cpu(), stats=_row_stats(state, wall),
                            sequences=state.x[:, :end].cpu())


def _grid_of(model: DiffusionLM) -> int | None:
    """The block length a block-causal network's attention grid has (its ``block_size``); None otherwise."""
    return getattr(model, "block_size", None)


def check_network_settings(model: DiffusionLM, config: GenerationConfig) -> None:
    """Refuse settings the network's attention cannot serve, in one line: a block-causal network decodes only
    blocks of its grid, and only through strategies that declare ``block_causal`` (exact with its mask); a
    strategy for block-causal networks only (``requires_block_causal``) is refused on the others."""
    name, grid = type(model).__name__, _grid_of(model)
    if grid is None:
        if cache_class(config.cache).requires_block_causal:
            raise ConfigError(f"cache={config.cache!r} is for block-causal networks; {name} attends "
                              f"bidirectionally (use none, prefix or dual)")
        return
    if config.block_length != grid:
        raise ConfigError(f"block_length={config.block_length}: {name} attends block-causally over blocks of {grid}, "
                          f"the block length it was trained with; pass block_length={grid}")
    if not cache_class(config.cache).block_causal:
        from l2pd_eval.caches import available

        valid = [c for c in available() if cache_class(c).block_causal]
        raise ConfigError(f"cache={config.cache!r} cannot decode the block-causal {name} exactly; valid choices: "
                          f"{', '.join(valid)}")


def _by_grid(model: DiffusionLM, prompts: Sequence[Sequence[int]], config: GenerationConfig, policy: Policy,
             special: SpecialIds, reference: Tensor | Sequence[Sequence[int]] | None,
             on_step: Callable[[StepEvent], None] | None, speed: SpeedConfig | None, grid: int) -> GenerationOutput:
    """Decode a batch whose prompts lie on different block grids (lengths that differ mod ``grid``) as one
    batch per grid, and join the answers in the prompts' order: each row decodes as it would alone."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p) % grid, []).append(i)
    tokens = torch.empty(len(prompts), config.gen_length, dtype=torch.long)
    stats: list[RowStats | None] = [None] * len(prompts)
    seqs: list[Tensor | None] = [None] * len(prompts)
    for rows in groups.values():
        ref = None if reference is None else [list(map(int, reference[i])) for i in rows]
        seen = None
        if on_step is not None:
            index = torch.tensor(rows)
            seen = lambda e, _i=index: on_step(dataclasses.replace(e, rows=_i.to(e.rows.device)[e.rows]))  # noqa: E731
        out = generate(model, [prompts[i] for i in rows], config, policy, special, ref, seen, speed)
        tokens[rows] = out.tokens
        for j, i in enumerate(rows):
            stats[i], seqs[i] = out.stats[j], out.sequences[j]
    width = max(len(q) for q in seqs)
    padded = torch.full((len(prompts), width), special.eos, dtype=torch.long)
    for i, q in enumerate(seqs):
        padded[i, width - len(q):] = q
    return GenerationOutput(tokens=tokens, stats=stats, sequences=padded)
