"""LLaDA2.1's joint threshold rule (``llada21_joint``): M2T commits and T2T edits on hand-built step states;
the engine's edits and post-edit steps on scripted step sequences (when a block stops, what is counted as a
commit and what as an edit, EoTP beside edits); batched == alone on the tiny LLaDA2.0 checkpoint with the
full forward and the block cache under every EoTP rule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from policy_cases import assert_batched_equals_alone
from scripted_model import ScriptedModel

from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.errors import ConfigError
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import Policy, Selection, StepState, get_policy, policy_class, policy_params

MASK, EOS, A, B = 15, 14, 5, 6
SPECIAL = SpecialIds(mask=MASK, eos=EOS)
PROMPT = [1, 2, 1, 2]


def _state(conf, masked, x0, current, step=0):
    conf, masked = torch.tensor(conf, dtype=torch.float64), torch.tensor(masked)
    return StepState(conf=conf, x0=torch.tensor(x0), masked=masked, k=torch.ones(len(conf), dtype=torch.long),
                     step=step, block=0, block_start=0, rows=torch.arange(len(conf)), current=torch.tensor(current),
                     mask_id=MASK)


def test_the_parameters_and_their_defaults_are_the_hub_generates():
    rule = get_policy("llada21_joint")
    assert (rule.threshold, rule.edit_threshold, rule.max_post_edit_steps, rule.num_to_transfer) == (0.95, 0.9, 16, 1)
    assert policy_params("llada21_joint") == ["threshold", "edit_threshold", "max_post_edit_steps", "num_to_transfer",
                                              "confidence"]
    cls = policy_class("llada21_joint")
    assert cls.edits and not cls.scheduled and not cls.remasks
    assert not any(policy_class(p).edits for p in ("llada2_threshold", "wino", "threshold", "low_confidence"))
    for bad, message in ((dict(edit_threshold=1.5), "edit_threshold=1.5 must lie in"),
                         (dict(max_post_edit_steps=-1), "max_post_edit_steps=-1 must be >= 0"),
                         (dict(num_to_transfer=0), "num_to_transfer=0 must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            get_policy("llada21_joint", **bad)


def test_m2t_commits_all_above_the_threshold_else_the_most_confident_masked_first_on_ties():
    rule = get_policy("llada21_joint", threshold=0.5)
    M, C = True, False
    st = _state([[0.9, 0.6, 0.5, 0.1], [0.4, 0.3, 0.4, 0.1], [0.9, 0.2, 0.3, 0.3]],
                [[M, M, M, M], [M, M, M, M], [C, M, M, M]], [[A] * 4] * 3, [[MASK] * 4, [MASK] * 4, [A] + [MASK] * 3])
    got = rule.select(st).commit
    # strictly above (0.5 is not); none above: the top one, the first of a tie; a committed 0.9 is not a candidate
    assert got.tolist() == [[True, True, False, False], [True, False, False, False], [False, False, True, False]]


def test_the_last_masked_token_commits_whatever_its_probability():
    rule = get_policy("llada21_joint")
    got = rule.select(_state([[0.99, 0.99, 0.01]], [[False, False, True]], [[A, A, B]], [[A, A, MASK]]))
    assert got.commit.tolist() == [[False, False, True]] and not got.edit.any()


def test_num_to_transfer_asks_that_many_before_the_threshold_counts():
    rule = get_policy("llada21_joint", threshold=0.5, num_to_transfer=2)
    st = _state([[0.9, 0.4, 0.3, 0.2], [0.9, 0.8, 0.1, 0.1], [0.2, 0.1, 0.3, 0.3]],
                [[True] * 4, [True] * 4, [False, False, False, True]], [[A] * 4] * 3,
                [[MASK] * 4, [MASK] * 4, [A, A, A, MASK]])
    # one above: the top 2; two above: both; one mask left: it alone
    assert rule.select(st).commit.tolist() == [[True, True, False, False], [True, True, False, False],
                                               [False, False, False, True]]


def test_t2t_edits_a_committed_token_only_above_the_edit_threshold_and_only_where_the_prediction_differs():
    rule = get_policy("llada21_joint", threshold=0.95, edit_threshold=0.5)
    # committed A A A A, a mask at 4; the model now says B B A B B at 0.9 0.5 0.9 0.4 0.99
    st = _state([[0.9, 0.5, 0.9, 0.4, 0.99]], [[False, False, False, False, True]], [[B, B, A, B, B]],
                [[A, A, A, A, MASK]])
    got = rule.select(st)
    # 0: differs, above; 1: at the threshold (strict); 2: the same token; 3: below; 4: a mask (M2T's, not an edit)
    assert got.edit.tolist() == [[True, False, False, False, False]]
    assert got.commit.tolist() == [[False, False, False, False, True]]
    zero = get_policy("llada21_joint", edit_threshold=0.0).select(st)  # S mode: every differing committed token
    assert zero.edit.tolist() == [[True, True, False, True, False]]


class StepScripted(ScriptedModel):
    """Answer position j predicts ``scripts[f][j]`` (token, probability) at the f-th forward (the last script
    from then on), whatever the context: a step sequence written by hand."""

    def __init__(self, scripts: list[list[tuple[int, float]]], prompt_length: int = len(PROMPT), vocab: int = 16):
        super().__init__(prompt_length, scripts[0], vocab_size=vocab)
        tables = torch.zeros(len(scripts), len(scripts[0]), vocab, dtype=torch.float64)
        for f, script in enumerate(scripts):
            for j, (token, p) in enumerate(script):
                tables[f, j] = math.log((1 - p) / (vocab - 1))
                tables[f, j, token] = math.log(p)
        self.register_buffer("tables", tables)

    def forward(self, input_ids, position_ids, key_mask=None, **kw):
        self.table = self.tables[min(len(self.lengths), len(self.tables) - 1)]
        return super().forward(input_ids, position_ids, key_mask, **kw)


def run(scripts, cache="none", eotp="false", gen=4, **params):
    model = StepScripted(scripts)
    cfg = GenerationConfig(gen_length=gen, block_length=4, cache=cache, eotp=eotp)
    events = []
    out = generate(model, [PROMPT], cfg, get_policy("llada21_joint", **params), SPECIAL, on_step=events.append)
    return out.tokens[0].tolist(), out.stats[0], events


SURE_A = [(A, 0.99)] * 4
B_AT_2 = [(A, 0.99), (A, 0.99), (B, 0.95), (A, 0.99)]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_a_block_steps_on_after_its_masks_until_a_step_changes_nothing(cache):
    """All four commit at the first forward; the second edits position 2 (B at 0.95 > 0.9); the third sees
    nothing to change and ends the block: 3 forwards, 4 commits, 1 edit (never counted as a commit)."""
    tokens, st, events = run([SURE_A, B_AT_2], cache=cache)
    assert tokens == [A, A, B, A]
    assert st.nfe == 3 and st.committed_per_step == [4, 0, 0] and st.edited_per_step == [0, 1, 0]
    assert st.remasked_per_step == [0, 0, 0] and st.tokens_per_forward == pytest.approx(4 / 3)
    assert [e.edit[0].nonzero().flatten().tolist() for e in events] == [[], [2], []]
    assert not any(e.commit[0].any() for e in events[1:])


def test_the_post_edit_steps_stop_at_max_post_edit_steps():
    """Position 0 flips between A and B at every forward: each post-edit step edits, so only the budget
    ends the block (no forward after the last one it allows)."""
    flip = [[(B, 0.99)] + SURE_A[1:], SURE_A]
    for budget, nfe in ((0, 1), (1, 2), (2, 3), (5, 6)):
        tokens, st, _ = run([SURE_A, *flip * 3], max_post_edit_steps=budget)
        assert st.nfe == nfe and st.committed_per_step == [4] + [0] * budget, budget
        assert st.edited_per_step == [0] + [1] * budget
        assert tokens[0] == (B if budget % 2 else A)


def test_edits_also_run_while_masks_are_left_and_a_commit_is_not_edited_by_its_own_forward():
    """First forward: 0 and 1 commit (0.99), 2 and 3 stay masked (0.5, 0.4). Second: 2 commits (B at 0.99)
    and 0, now B at 0.95, is edited; 2's B is no edit of its own forward. Third: 3 commits as the fallback."""
    first = [(A, 0.99), (A, 0.99), (A, 0.5), (A, 0.4)]
    second = [(B, 0.95), (A, 0.99), (B, 0.99), (A, 0.4)]
    tokens, st, events = run([first, second, second])
    assert [e.commit[0].nonzero().flatten().tolist() for e in events][:2] == [[0, 1], [2]]
    assert [e.edit[0].nonzero().flatten().tolist() for e in events][:2] == [[], [0]]
    assert tokens == [B, A, B, A] and st.committed_per_step[:3] == [2, 1, 1]
    assert sum(st.committed_per_step) == 4 and sum(st.edited_per_step) == 1


def test_an_edit_never_writes_the_mask_id():
    tokens, st, _ = run([SURE_A, [(MASK, 0.99)] * 4])  # the model predicts the mask id itself: no edit
    assert tokens == [A] * 4 and st.edited_per_step == [0, 0]


def test_block_end_waits_for_the_block_to_finish_its_post_edit_steps():
    """Block 0 fills as A EOS A A; a post-edit step then edits the end away, so the finished block holds no
    end and decoding goes on into block 1 (the authors stop after a block only once its loop is done)."""
    with_end = [(A, 0.99), (EOS, 0.99), (A, 0.99), (A, 0.99)] + SURE_A
    no_end = SURE_A * 2
    tokens, st, _ = run([with_end, no_end], eotp="block_end", gen=8)
    assert tokens == [A] * 8 and st.eotp_saved == 0
    kept, st, _ = run([with_end], eotp="block_end", gen=8)  # the end stays: cut after block 0
    assert kept == [A, EOS, A, A] + [EOS] * 4 and st.eotp_saved == 4 and st.nfe == 2


def test_an_edit_that_writes_an_end_commits_it_for_the_committed_cut_and_the_end_stays():
    to_end = [(A, 0.99), (A, 0.99), (EOS, 0.99), (A, 0.99)]
    back = SURE_A  # the next forward would edit the end back to A: the cut kept it, so it stays
    tokens, st, _ = run([SURE_A, to_end, back, back], eotp="committed")
    assert tokens == [A, A, EOS, EOS] and st.edited_per_step[:2] == [0, 1]
    assert st.eotp_saved == 1


def test_a_scheduled_policy_with_post_edit_steps_is_refused():
    class Scheduled(Policy):
        name = "_scheduled_editor"
        edits = True
        max_post_edit_steps = 2

        def select(self, state: StepState) -> Selection:
            return Selection(state.masked)

    with pytest.raises(ValueError, match="post-edit steps run past the schedule's steps"):
        generate(StepScripted([SURE_A]), [PROMPT], GenerationConfig(gen_length=4, block_length=4), Scheduled(),
                 SPECIAL)


def test_only_a_policy_that_declares_edits_may_edit():
    class Undeclared(Policy):
        name = "_undeclared_editor"

        def select(self, state: StepState) -> Selection:
            return Selection(state.masked, edit=~state.masked)

    with pytest.raises(ValueError, match="returned Selection.edit but does not declare edits = True"):
        generate(StepScripted([SURE_A]), [PROMPT], GenerationConfig(gen_length=4, block_length=4), Undeclared(),
                 SPECIAL)


@pytest.fixture(scope="module")
def tiny_llada2(tmp_path_factory):
    from conftest import _loaded

    from l2pd_eval.model.tiny import write_tiny

    model, _, special = _loaded(write_tiny("llada2_moe", tmp_path_factory.mktemp("llada2_moe"), seed=1))
    gen = torch.Generator().manual_seed(3)
    # lengths 5, 13 (one grid), 11, 8: three grids of blocks of 8; 5 and 13 start in a block holding the prompt
    prompts = [torch.randint(10, model.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 13, 11, 8)]
    return model, special, prompts


# the hub's defaults (few edits on random weights) and S mode (threshold 0.5, edit_threshold 0: many)
MODES = {"hub": {}, "speedy": dict(threshold=0.5, edit_threshold=0.0)}


@pytest.mark.parametrize("mode, cache, eotp", list(itertools.product(MODES, ["none", "block"], EOTP_MODES)))
def test_batched_equals_alone_on_the_tiny_llada2_checkpoint(tiny_llada2, mode, cache, eotp):
    model, special, prompts = tiny_llada2
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp)
    out = assert_batched_equals_alone(model, prompts, cfg, "llada21_joint", special, **MODES[mode])
    for row, prompt in enumerate(prompts):
        events = []
        alone = generate(model, [prompt], cfg, get_policy("llada21_joint", **MODES[mode]), special,
                         on_step=events.append)
        assert out.stats[row].edited_per_step == alone.stats[0].edited_per_step
        assert out.sequences[row, -16 - len(prompt):-16].tolist() == prompt  # the prompt's tail is never edited
        st = out.stats[row]
        assert len(st.committed_per_step) == len(st.edited_per_step) == st.nfe
        assert st.edited_per_step == [int(e.edit.sum()) for e in events]
        if eotp == "false":  # every mask on the grid's blocks committed (a commit of the mask id leaves a mask)
            again = sum(int((e.commit & (e.tokens == special.mask)).sum()) for e in events)
            assert sum(st.committed_per_step) == -(-(len(prompt) + 16) // 8) * 8 - len(prompt) + again
    if mode == "speedy":
        assert any(sum(st.edited_per_step) for st in out.stats)  # the edits this test is about happen


@pytest.mark.parametrize("eotp", [e for e in EOTP_MODES if e != "true"])  # "true" searches after the block with none
def test_the_block_cache_decodes_as_the_full_forward(tiny_llada2, eotp):
    model, special, prompts = tiny_llada2
    got = {c: generate(model, prompts, GenerationConfig(gen_length=16, block_length=8, cache=c, eotp=eotp),
                       get_policy("llada21_joint", **MODES["speedy"]), special) for c in ("none", "block")}
    assert torch.equal(got["none"].tokens, got["block"].tokens)
    assert [s.edited_per_step for s in got["none"].stats] == [s.edited_per_step for s in got["block"].stats]


def test_a_cache_that_reuses_committed_positions_predictions_is_refused_in_one_line():
    """dKV-Cache's cached steps recompute only positions masked at the last step: an edit would read a stale
    prediction and a post-edit step would compute nothing, so the pair is refused before any decoding."""
    from l2pd_eval.caches import available, cache_class

    refused = [c for c in available() if not cache_class(c).edits]
    assert refused == ["dkv_decode"]
    able = ", ".join(c for c in available() if cache_class(c).edits)
    with pytest.raises(ConfigError) as err:
        generate(StepScripted([SURE_A]), [PROMPT], GenerationConfig(gen_length=4, block_length=4, cache="dkv_decode"),
                 get_policy("llada21_joint"), SPECIAL)
    message = str(err.value)
    assert "\n" not in message and message.startswith("policy='llada21_joint' edits committed tokens")
    assert message.endswith(f"cache='dkv_decode' cannot serve (it reuses the predictions of committed positions); "
                            f"use cache={able}")


@pytest.mark.parametrize("cache", ["none", "dual"])  # block refuses WINO's query slots
def test_wino_never_remasks_the_prompts_tail_in_a_block_causal_first_block(tiny_llada2, cache):
    """The engine's contract holds for re-masks as for edits: the first block of a block-causal network holds
    the prompt's tail, and WINO's narrow-out once re-masked (and rewrote) it there."""
    model, special, prompts = tiny_llada2
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache)
    events = []
    out = generate(model, prompts, cfg, get_policy("wino"), special, on_step=events.append)
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, -16 - len(prompt):-16].tolist() == prompt
    assert any(e.remask is not None and e.remask.any() for e in events)  # WINO re-masks in these decodes
