"""The policy contract as the engine keeps it: ``generate`` binds the policy, the step state is read-only (a
policy commits other tokens through its ``Selection``), ``select`` is documented once, and a policy that
declares ``remasks`` can mask committed tokens of the current block again, counted honestly, without ever
touching the prompt or another block, and every block still finishes."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from dataclasses import dataclass

import pytest
import torch
from policy_cases import POLICIES, cache_names

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.policies import (
    Policy,
    RowState,
    RunSettings,
    Selection,
    StepState,
    get_policy,
    policy_class,
    top1_mask,
    topk_mask,
)

CFG = dict(gen_length=16, block_length=8)


@dataclass
class Revoke(Policy):
    """Test-only revocable rule: commit the two most confident masked positions, and mask again the committed
    position of the block the model is now least sure of (``every``: ask to re-mask the whole block). Where
    the (random) model predicts the mask id itself it commits ``stand_in`` instead, so every commit it makes
    lowers the mask count and what is counted is the engine's bookkeeping alone."""

    every: bool = False
    mask: int = -1
    stand_in: int = 0

    name = "_revoke"
    scheduled = False
    remasks = True

    def select(self, state: StepState) -> Selection:
        commit = topk_mask(state.masked_conf, state.k + 1)
        tokens = state.x0.masked_fill(state.x0 == self.mask, self.stand_in)
        if self.every:
            return Selection(commit, tokens, remask=torch.ones_like(state.masked))
        committed = ~state.masked
        least = top1_mask(-state.conf.masked_fill(state.masked, float("inf"))) & committed.any(-1, keepdim=True)
        return Selection(commit, tokens, remask=least)


@dataclass
class ScheduledRevoke(Revoke):
    """The same on the linear schedule: one commit beyond the schedule's count, one re-mask."""

    scheduled = True


class Undeclared(Revoke):
    remasks = False


def revoke(family, cls: type[Revoke] = Revoke, **params) -> Revoke:
    """``cls`` for ``family``'s tiny model: its mask id replaced by end-of-text where predicted."""
    return cls(mask=family.special.mask, stand_in=family.special.eos, **params)


def test_generate_binds_the_policy_to_the_run(family, filter_path):
    """A filter trained for block 8 is refused at block 16 by a bare ``generate`` call (smoke, trajectories)."""
    model, special, prompts = family.model, family.special, family.prompts
    with pytest.raises(ValueError, match="trained for block_length=8, but this run uses block_length=16"):
        generate(model, prompts, GenerationConfig(gen_length=16, block_length=16),
                 get_policy("learn2pd", filter=str(filter_path)), special)
    seen = []

    class Recording(Policy):
        name = "_recording"

        def bind(self, run: RunSettings) -> Policy:
            seen.append(run)
            return get_policy("low_confidence").bind(run)  # bind may return the policy the run uses

    generate(model, prompts, GenerationConfig(**CFG), Recording(), special)
    assert seen == [RunSettings(block_length=8, gen_length=16, device=model.device, family=family.name,
                                steps_per_block=8)]
    bound = get_policy("learn2pd", filter=str(filter_path)).bind(seen[0])
    assert bound.bind(seen[0]) is bound  # idempotent: the adapter binds once, generate again


def test_the_step_state_is_read_only_and_the_oracle_commits_its_tokens_through_the_selection(family):
    model, special, prompts = family.model, family.special, family.prompts
    events = []
    reference = torch.randint(10, 200, (len(prompts), 16), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompts, GenerationConfig(**CFG), get_policy("oracle"), special, reference=reference,
                   on_step=events.append)
    assert torch.equal(out.tokens, reference)  # random targets: reached only through the fallback tokens
    forced = [ev.commit & (ev.tokens != ev.x0) for ev in events]
    assert any(f.any() for f in forced)  # the events keep the model's own prediction beside what was committed
    st = StepState(conf=torch.zeros(1, 2), x0=torch.zeros(1, 2, dtype=torch.long), masked=torch.ones(1, 2).bool(),
                   k=torch.ones(1, dtype=torch.long), step=0, block=0, block_start=0, rows=torch.zeros(1).long())
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.x0 = torch.ones(1, 2, dtype=torch.long)


def test_select_is_documented_once_on_the_base_class():
    contract = inspect.getdoc(Policy.select)
    assert "Args:" in contract and "Returns:" in contract
    for name in POLICIES:
        assert inspect.getdoc(policy_class(name).select) == contract, name


def test_only_a_policy_that_declares_remasks_may_remask(family):
    model, special, prompts = family.model, family.special, family.prompts
    with pytest.raises(ValueError, match="policy='_revoke' returned Selection.remask but does not declare remasks"):
        generate(model, prompts, GenerationConfig(**CFG), Undeclared(), special)


@pytest.mark.parametrize("cls, params", [(Revoke, {}), (Revoke, {"every": True}), (ScheduledRevoke, {})],
                         ids=["one", "every", "sched"])
def test_remasking_terminates_and_counts_net_commits(family, cls, params):
    """Without EoTP every answer position ends committed, so net commits (commits - re-masks) are the answer
    length; a re-mask never undoes more than the step's commits beyond ``max(k, 1)``."""
    model, special, prompts = family.model, family.special, family.prompts
    policy = revoke(family, cls, **params)
    cfg = GenerationConfig(steps=8, **CFG)  # scheduled: 4 steps per block, k = 2
    out = generate(model, prompts, cfg, policy, special)
    assert not (out.tokens == special.mask).any()
    budget_k = 2 if policy.scheduled else 1
    for st in out.stats:
        assert len(st.remasked_per_step) == len(st.committed_per_step) == st.nfe <= 2 * 8
        assert sum(st.committed_per_step) - sum(st.remasked_per_step) == 16
        assert st.tokens_per_forward == pytest.approx(16 / st.nfe)
        assert sum(st.remasked_per_step) > 0
        assert all(r <= c - budget_k for c, r in zip(st.committed_per_step, st.remasked_per_step, strict=True) if r)
    if policy.scheduled:
        assert {st.nfe for st in out.stats} == {8}  # the schedule's net count each step: the blocks end on time


def test_remasking_never_touches_the_prompt_or_another_block(family):
    """What the network is fed at each forward (no cache: the whole sequence): blocks before the current
    one never change again, later ones stay masked, the prompt stays, and the current block's mask count
    falls every step even when the policy asks to re-mask everything."""
    model, special, prompts = family.model, family.special, family.prompts
    for prompt in prompts:
        fed: list[torch.Tensor] = []
        hook = model.register_forward_pre_hook(lambda _m, args, fed=fed: fed.append(args[0][0].clone()))
        try:
            out = generate(model, [prompt], GenerationConfig(**CFG), revoke(family, every=True), special)
        finally:
            hook.remove()
        final, P = out.sequences[0], len(prompt)
        masks_before = {0: 9, 1: 9}
        for x in fed:
            blk = int((x[P:] == special.mask).nonzero()[0, 0]) // 8  # the first block with a mask left
            assert torch.equal(x[:P + 8 * blk], final[:P + 8 * blk])
            assert (x[P + 8 * (blk + 1):] == special.mask).all()
            left = int((x[P + 8 * blk:P + 8 * (blk + 1)] == special.mask).sum())
            assert left < masks_before[blk]
            masks_before[blk] = left


@pytest.mark.parametrize("cache, eotp", list(itertools.product(cache_names(), EOTP_MODES)))
def test_remasking_decodes_a_batch_as_each_prompt_alone(family, cache, eotp):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(cache=cache, eotp=eotp, **CFG)
    batched = generate(model, prompts, cfg, revoke(family), special)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], cfg, revoke(family), special)
        assert torch.equal(batched.tokens[row], alone.tokens[0])
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step
        assert batched.stats[row].remasked_per_step == alone.stats[0].remasked_per_step
    assert not (batched.tokens == special.mask).any()


def test_a_policy_without_remasks_reports_zero_remasks(family):
    model, special, prompts = family.model, family.special, family.prompts
    out = generate(model, prompts, GenerationConfig(**CFG), get_policy("threshold"), special)
    assert all(st.remasked_per_step == [0] * st.nfe for st in out.stats)


@dataclass
class StepsSeen(RowState):
    """Test-only per-row state: the batch row it belongs to, and how many steps of the block it took."""

    rows: torch.Tensor
    steps: torch.Tensor


@dataclass
class Counting(Policy):
    """Commits (row mod 3) + 1 tokens per step, so rows leave a block at different steps, and checks at every
    step that its per-row state still belongs to the rows the step has (the engine narrowed it)."""

    name = "_counting"
    scheduled = False

    def __post_init__(self) -> None:
        self.blocks: list[tuple[int, list[int]]] = []
        self.finished: list[tuple[int, int, int]] = []  # (block, batch row, steps taken)

    def init_state(self, rows: torch.Tensor, block: int) -> StepsSeen:
        self.blocks.append((block, rows.tolist()))
        return StepsSeen(rows.clone(), torch.zeros_like(rows))

    def select(self, state: StepState) -> torch.Tensor:
        assert torch.equal(state.state.rows, state.rows)  # narrowed alongside the rows
        assert (state.state.steps == state.step).all()  # created at the block's first step, kept since
        state.state.steps += 1
        commit = topk_mask(state.masked_conf, state.rows % 3 + 1)
        for row in (state.masked.sum(-1) <= state.rows % 3 + 1).nonzero().flatten().tolist():
            self.finished.append((state.block, int(state.rows[row]), state.step + 1))
        return commit


def test_per_row_policy_state_lives_for_a_block_and_follows_its_rows(tiny, prompts):
    model, _, special = tiny
    policy = Counting()
    out = generate(model, prompts, GenerationConfig(**CFG), policy, special)
    assert policy.blocks == [(0, [0, 1, 2]), (1, [0, 1, 2])]  # one state per block, for the block's rows
    assert sorted(policy.finished) == [(b, r, -(-8 // (r % 3 + 1))) for b in (0, 1) for r in range(3)]
    assert [st.nfe for st in out.stats] == [16, 8, 6]  # rows 0, 1, 2 left each block after 8, 4, 3 steps


def test_the_default_policy_keeps_no_state():
    assert get_policy("threshold").init_state(torch.arange(3), 0) is None


class _Undeclared(Policy):
    """Returns a field it does not declare (``field``)."""

    name = "_undeclared"
    scheduled = False

    def __init__(self, field: str):
        self.field = field

    def select(self, state: StepState) -> Selection:
        rows = state.masked.shape[0]
        value = torch.zeros(rows, dtype=torch.bool) if self.field == "finish" else torch.zeros(rows).long()
        return Selection(top1_mask(state.masked_conf), **{self.field: value})


@pytest.mark.parametrize("field, flag", [("finish", "finishes"), ("horizon", "horizons")])
def test_finish_and_horizon_need_their_capability(tiny, prompts, field, flag):
    model, _, special = tiny
    with pytest.raises(ValueError, match=f"policy='_undeclared' returned Selection.{field} but does not declare "
                                         f"{flag} = True"):
        generate(model, prompts, GenerationConfig(**CFG), _Undeclared(field), special)


class _CutOnce(Policy):
    """Test-only: commits one token a step and, at each block's first step, cuts the next forward two
    positions into the block."""

    name = "_cut_once"
    scheduled = False
    horizons = True

    def select(self, state: StepState) -> Selection:
        cut = torch.full_like(state.rows, state.block_start + 2 if state.step == 0 else 1 << 30)
        return Selection(top1_mask(state.masked_conf), horizon=cut)


class _NeverCut(_CutOnce):
    name = "_never_cut"

    def select(self, state: StepState) -> Selection:
        return Selection(top1_mask(state.masked_conf), horizon=torch.full_like(state.rows, 1 << 30))


@pytest.mark.parametrize("cache", [c for c in cache_names() if cache_class(c).horizons])  # the others refuse
def test_a_horizon_cuts_the_next_forward_only(cache):
    """What the network sees per forward (keys visible): what it sees without a horizon (the full sequence;
    DPad's caches: the block's kept sequence), except the forward after the cut, which sees the sequence up
    to the horizon only; on every cache."""
    from scripted_model import ScriptedModel

    from l2pd_eval.model.loading import SpecialIds

    P, G = 4, 8
    seen = {}
    for policy in (_NeverCut(), _CutOnce()):
        model = ScriptedModel(P, [(3, 0.5)] * G)
        out = generate(model, [[1, 2, 1, 2]], GenerationConfig(gen_length=G, block_length=4, cache=cache), policy,
                       SpecialIds(mask=15, eos=14))
        assert out.stats[0].nfe == 8
        seen[policy.name] = model.lengths
    if cache_class(cache).inner is None:
        assert seen["_never_cut"] == [P + G] * 8
    cut = list(seen["_never_cut"])
    cut[1], cut[5] = P + 2, P + 4 + 2
    assert seen["_cut_once"] == cut
