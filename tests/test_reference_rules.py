"""The reference codes' decoding rules, on hand-built step sequences: EoTP as in the Learn2PD code
(``eotp=true``) beside the committed-token cut (``eotp=committed``), Fast-dLLM's factor rule as in its
code (``factor_rule=code``) beside the paper's formula, and its threshold comparison."""

from __future__ import annotations

import math

import pytest
import torch
from policy_cases import cache_names
from scripted_model import ScriptedModel

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import GenerationConfig, eotp_mode, generate
from l2pd_eval.engine.eotp import EotpStep, cut_at_predicted_end
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import StepState, get_policy
from l2pd_eval.policies.factor import factor_count

MASK, EOS, EOT, WORD = 15, 14, 13, 3
SPECIAL = SpecialIds(mask=MASK, eos=EOS, eot=(EOT,))
P, G, BL = 4, 16, 8
PROMPT = [1, 2, 1, 2]
# the strategies that run on the scripted model (not their own layer loop over a network's parts)
SCRIPTED = [c for c in cache_names() if not cache_class(c).layer_parts]
CACHED = [c for c in SCRIPTED if not cache_class(c).logits_after]  # strategies that predict the block only


def script(ends: dict[int, float]) -> list[tuple[int, float]]:
    """Every answer position predicts WORD with probability 0.5, except ``ends``: end-of-turn at that p."""
    return [(EOT, ends[j]) if j in ends else (WORD, 0.5) for j in range(G)]


def decode(table, policy, cache="none", eotp="true", **kw):
    model = ScriptedModel(P, table)
    cfg = GenerationConfig(gen_length=G, block_length=BL, cache=cache, eotp=eotp, **kw)
    out = generate(model, [PROMPT], cfg, policy, SPECIAL)  # generate binds the policy (the filter's block length)
    return out, model.lengths


def cut_after(out) -> int:
    """The answer position the run was cut after (from the positions EoTP filled)."""
    return G - 1 - out.stats[0].eotp_saved


# Block 0 predicts an end at 5 (p 0.99), block 1 one at 12 (p 0.999).
ENDS = {5: 0.99, 12: 0.999}
# ... and ends at 2 (p 0.6, the filter accepts it) and 3 (p 0.4, it does not).
MORE_ENDS = {2: 0.6, 3: 0.4, **ENDS}


def test_no_cache_cuts_after_the_most_confident_end_anywhere_in_the_answer():
    out, lengths = decode(script(ENDS), get_policy("low_confidence"))
    assert cut_after(out) == 12  # beyond the block, at the first step
    assert lengths[0] == P + G and max(lengths[1:]) == P + 13  # the tail is gone from every later forward
    tokens = out.tokens[0].tolist()
    assert tokens[12] == EOT  # the cut position stayed and was decoded in its own block
    assert tokens[13:] == [EOS] * 3


@pytest.mark.parametrize("cache", CACHED)
def test_with_a_cache_the_search_covers_only_the_block(cache):
    out, _ = decode(script(ENDS), get_policy("low_confidence"), cache=cache)
    assert cut_after(out) == 5  # the most confident end of block 0; position 12 is never looked at there
    assert out.tokens[0, 6:].tolist() == [EOS] * 10


@pytest.mark.parametrize("cache", SCRIPTED)
def test_an_end_the_filter_accepts_comes_first(filter_path, cache):
    out, _ = decode(script(MORE_ENDS), get_policy("learn2pd", filter=str(filter_path)), cache=cache)
    assert cut_after(out) == 2  # the first accepted end, not the more confident ones at 5 and 12
    assert out.tokens[0, 2] == EOT


def test_without_an_accepted_end_learn2pd_falls_back_to_the_most_confident(filter_path):
    ends = {3: 0.4, 6: 0.45, 11: 0.5}  # none above the filter's ~0.57
    out, _ = decode(script(ends), get_policy("learn2pd", filter=str(filter_path)))
    assert cut_after(out) == 11


def test_ties_go_to_the_first_position_and_no_end_means_no_cut():
    out, _ = decode(script({4: 0.7, 9: 0.7}), get_policy("low_confidence"))
    assert cut_after(out) == 4
    out, lengths = decode(script({}), get_policy("low_confidence"))
    assert out.stats[0].eotp_saved == 0 and set(lengths) == {P + G}


def test_committed_rule_waits_for_the_end_to_be_committed():
    # low_confidence commits one token per step, most confident first: 5 (p 0.99) at block 0's first step
    # -> cut after 5, where "true" cut after 12 (predicted, not committed) at once.
    out, lengths = decode(script(ENDS), get_policy("low_confidence"), eotp="committed")
    assert cut_after(out) == 5
    assert lengths[0] == P + G


def test_a_cut_only_shortens_and_rows_are_cut_independently():
    # Two rows with different scripts decode in one batch exactly as alone (per-row cuts, one forward).
    model = ScriptedModel(P, script(ENDS))
    cfg = GenerationConfig(gen_length=G, block_length=BL, eotp="true", temperature=1.0, seed=3)
    batched = generate(model, [PROMPT, [2, 1, 2, 1]], cfg, get_policy("threshold", threshold=0.9), SPECIAL)
    for row, prompt in enumerate([PROMPT, [2, 1, 2, 1]]):
        alone = generate(ScriptedModel(P, script(ENDS)), [prompt], cfg, get_policy("threshold", threshold=0.9),
                         SPECIAL)
        assert torch.equal(batched.tokens[row], alone.tokens[0])


def test_rule_on_a_hand_built_step():
    """The rule itself: accepted end first, else the most confident end among the block's masked positions
    and the live positions after it; the cut never moves a row's end later."""
    from l2pd_eval.engine.layout import left_pad
    from l2pd_eval.engine.state import BlockRows, DecodeState

    layout = left_pad([PROMPT] * 3, EOS, torch.device("cpu"), tail=G, tail_id=MASK)
    T = P + G
    state = DecodeState(x=layout.ids, layout=layout, seeds=torch.zeros(3, dtype=torch.long), reference=None,
                        end_ids=torch.tensor([EOS, EOT]), limit=torch.tensor([T, T, P + 10]),
                        positions=torch.zeros(3, dtype=torch.long), arange=torch.arange(T))
    rows = BlockRows(P, P + BL, torch.arange(3), [0, 1, 2], T, None)
    x0 = torch.full((3, BL), WORD)
    x0[:, 1], x0[:, 4] = EOT, EOS
    conf = torch.full((3, BL), 0.5)
    conf[:, 1], conf[:, 4] = 0.7, 0.8
    masked = torch.ones(3, BL, dtype=torch.bool)
    masked[1, 4] = False  # row 1: the confident end at 4 is already committed, so it does not count
    accepted = torch.zeros(3, BL, dtype=torch.bool)
    accepted[0, 1] = True  # row 0: the filter accepted the end at 1
    after_x0 = torch.full((3, G - BL), WORD)
    after_x0[:, 5] = EOT  # answer position 13: beyond row 2's live end (10), so not a candidate there
    after_conf = torch.full((3, G - BL), 0.95)
    step = EotpStep(torch.zeros(3, BL, dtype=torch.bool), x0, conf, masked, accepted, after_x0, after_conf)
    ends = cut_at_predicted_end(state, rows, step) - P
    assert ends.tolist() == [2, 14, 5]


def test_eotp_modes_and_bools():
    assert [eotp_mode(v) for v in (True, False, "TRUE", "committed", "false")] == [
        "true", "false", "true", "committed", "false"]
    with pytest.raises(ValueError, match="eotp='cut' is unknown; valid choices: false, true, committed, block_end"):
        GenerationConfig(eotp="cut")
    assert GenerationConfig(eotp=True).eotp == "true"


def test_factor_code_rule_commits_the_last_token_when_only_it_fails():
    conf = torch.tensor([[0.99, 0.95, 0.90, 0.50, 0.2, float("-inf")]])
    # ranks n=1..5 need c_n >= 1 - f/(n+1); with f=3: -, 0.0, 0.25, 0.4, 0.5 -> only the last (0.2) fails
    assert factor_count(conf, 3.0, "code").tolist() == [5]
    assert factor_count(conf, 3.0, "formula").tolist() == [4]
    # a failure before the last: both stop there (f=0.5: n=4 needs 0.9)
    assert factor_count(conf, 0.5, "code").tolist() == factor_count(conf, 0.5, "formula").tolist() == [3]
    two = torch.tensor([[0.9, 0.1, float("-inf")]])  # two masked: the code always commits both
    assert factor_count(two, 0.1, "code").tolist() == [2] and factor_count(two, 0.1, "formula").tolist() == [1]
    one = torch.tensor([[0.1, float("-inf")]])
    assert factor_count(one, 0.1, "code").tolist() == factor_count(one, 0.1, "formula").tolist() == [1]
    # the code walks to the first failure: a later rank that would pass again does not count (cannot happen
    # with sorted confidences and a growing threshold, so the two rules agree everywhere else)
    rows = torch.rand(256, 12).sort(-1, descending=True).values
    for f in (0.5, 1.0, 2.0):
        code, formula = factor_count(rows, f, "code"), factor_count(rows, f, "formula")
        assert ((code == formula) | ((code == 12) & (formula == 11))).all()


def test_factor_rule_is_a_policy_parameter():
    conf = torch.tensor([[0.99, 0.95, 0.90, 0.50, 0.2]])
    state = StepState(conf=conf, x0=torch.zeros(1, 5, dtype=torch.long), masked=torch.ones(1, 5, dtype=torch.bool),
                      k=torch.ones(1, dtype=torch.long), step=0, block=0, block_start=0,
                      rows=torch.zeros(1, dtype=torch.long))
    assert get_policy("factor", factor=3.0).select(state).sum() == 5
    assert get_policy("factor", factor=3.0, factor_rule="formula").select(state).sum() == 4
    assert get_policy("factor").params() == {"factor": 1.0, "factor_rule": "code", "confidence": "float64"}
    with pytest.raises(ValueError, match="factor_rule='paper'; valid choices: code, formula"):
        get_policy("factor", factor_rule="paper")


def test_batch_sizing_counts_the_tail_logits_of_eotp_true_without_a_cache(tiny):
    from l2pd_eval.engine.memory import bytes_per_row

    model = tiny[0]
    size = {(e, c): bytes_per_row(model, GenerationConfig(gen_length=64, block_length=32, cache=c, eotp=e), 100)
            for e in ("true", "committed") for c in ("none", "dual")}
    assert size["true", "none"] > size["committed", "none"]
    assert size["true", "dual"] == size["committed", "dual"]


def test_threshold_keeps_a_confidence_exactly_at_the_threshold():
    """Fast-dLLM's get_transfer_index drops a ranked token only when ``confidence < threshold`` (float64 there):
    a confidence of exactly 0.9 is committed, the next float64 below it is not (the top-1 always is)."""
    below = math.nextafter(0.9, 0.0)
    conf = torch.tensor([[0.2, 0.9, below, 0.95, 0.9]], dtype=torch.float64)
    masked = torch.tensor([[True, True, True, True, False]])  # the last one is committed already
    state = StepState(conf=conf, x0=torch.zeros(1, 5, dtype=torch.long), masked=masked,
                      k=torch.ones(1, dtype=torch.long), step=0, block=0, block_start=0,
                      rows=torch.zeros(1, dtype=torch.long))
    assert get_policy("threshold", threshold=0.9).select(state).tolist() == [[False, True, False, True, False]]
    assert get_policy("threshold", threshold=below).select(state).tolist() == [[False, True, True, True, False]]
    nothing = StepState(conf=conf.clamp(max=0.5), x0=state.x0, masked=masked, k=state.k, step=0, block=0,
                        block_start=0, rows=state.rows)
    assert get_policy("threshold", threshold=0.9).select(nothing).tolist() == [[False, True, False, False, False]]


def _reads_position_6_as_zero(path) -> str:
    """A raw single-layer filter for block 8 that accepts position 1 exactly when its input at position 6 is
    about zero (logit 5 - 10 * x_6) and nothing else: it tells whether the filter saw past an EoTP cut."""
    from l2pd_eval.filters import FilterConfig, L2PFilter, save_filter

    filt = L2PFilter(FilterConfig(block_length=8, hidden_sizes=(), accept_threshold=0.5, committed_conf="raw"))
    with torch.no_grad():
        filt.linears[0].weight.zero_()
        filt.linears[0].bias.fill_(-10.0)
        filt.linears[0].weight[1, 6] = -10.0
        filt.linears[0].bias[1] = 5.0
    return str(save_filter(path, filt))


@pytest.mark.parametrize("cache", SCRIPTED)
def test_a_raw_filter_reads_zeros_past_a_cut_inside_the_block(tmp_path, cache):
    """Learn2PD's code cuts the sequence after an accepted or predicted end, so in the next steps its filter
    gets the block's confidences only up to the cut, zero-padded. Block 0 predicts an end at 3 (p .99), words
    elsewhere (p .9 at 4-7): the first step commits 3 and cuts after it; the next one the filter sees 0 at
    position 6 (past the cut), where the model still reports .9, and accepts position 1 beside the schedule's
    top-1 (position 0): 3 forwards, not the 4 of a filter reading the raw .9 there."""
    table = [(WORD, 0.6), (WORD, 0.3), (WORD, 0.5), (EOT, 0.99)] + [(WORD, 0.9)] * 4 + [(WORD, 0.5)] * 8
    policy = get_policy("learn2pd", filter=_reads_position_6_as_zero(tmp_path / "f"))
    out, _ = decode(table, policy, cache=cache, eotp="true", steps=G)
    assert out.stats[0].committed_per_step == [1, 2, 1] and cut_after(out) == 3
    assert out.tokens[0, :4].tolist() == [WORD, WORD, WORD, EOT]


def test_the_filter_input_past_the_cut_is_zero_and_before_it_raw(tmp_path):
    """The rule on a hand-built step: ``live`` False past a cut zeroes the input there (the reference's shorter,
    zero-padded vector); without it the filter reads the raw confidence, as before issue 22."""
    from l2pd_eval.filters import load_filter

    filt = load_filter(_reads_position_6_as_zero(tmp_path / "f"))
    conf = torch.tensor([[0.6, 0.3, 0.5, 0.99, 0.9, 0.9, 0.9, 0.9]])
    masked = torch.tensor([[True, True, True, False, False, False, False, False]])
    live = torch.tensor([[True] * 4 + [False] * 4])
    assert torch.equal(filt.prepare_input(conf, masked, live), torch.tensor([[0.6, 0.3, 0.5, 0.99, 0, 0, 0, 0]]))
    assert torch.equal(filt.prepare_input(conf, masked), conf)  # raw: committed positions and all
    assert filt.accept(conf, masked, live).tolist() == [[False, True] + [False] * 6]
    assert not filt.accept(conf, masked).any()
def test_block_end_rule_stops_after_the_finished_block_that_holds_an_end():
    """DPad's ``-e`` and dInfer's ``early_stop``: block 0 predicts an end at 5, which low_confidence commits
    first; the block is still decoded to its end (positions 6, 7 too), then everything after it is EOS and
    block 1 never runs. The committed rule cuts right after 5 instead."""
    out, lengths = decode(script(ENDS), get_policy("low_confidence"), eotp="block_end")
    tokens = out.tokens[0].tolist()
    assert tokens[5] == EOT and tokens[:BL].count(WORD) == BL - 1  # the block decoded in full
    assert tokens[BL:] == [EOS] * (G - BL) and out.stats[0].eotp_saved == G - BL
    assert out.stats[0].nfe == BL and set(lengths) == {P + G}  # the cut comes when the block ends
    committed, _ = decode(script(ENDS), get_policy("low_confidence"), eotp="committed")
    assert cut_after(committed) == 5 and committed.tokens[0, 6:].tolist() == [EOS] * 10
    plain, _ = decode(script({12: 0.999}), get_policy("low_confidence"), eotp="block_end")
    assert plain.stats[0].nfe == G and plain.stats[0].eotp_saved == 0  # the last block: nothing after it


def test_block_end_rule_on_hand_built_steps():
    """Only a block with no mask left after the step (re-masks count as masks) and an end id in it is cut,
    at its end; the cut never moves a row's end later."""
    from l2pd_eval.engine.eotp import cut_after_a_finished_block_with_an_end
    from l2pd_eval.engine.layout import left_pad
    from l2pd_eval.engine.state import BlockRows, DecodeState

    layout = left_pad([PROMPT] * 4, EOS, torch.device("cpu"), tail=G, tail_id=MASK)
    T = P + G
    x = layout.ids.clone()
    x[:, P:P + BL] = WORD
    x[:3, P + 3] = EOT  # rows 0-2 hold an end in the block; row 3 none
    state = DecodeState(x=x, layout=layout, seeds=torch.zeros(4, dtype=torch.long), reference=None,
                        end_ids=torch.tensor([EOS, EOT]), limit=torch.tensor([T, T, P + 5, T]),
                        positions=torch.zeros(4, dtype=torch.long), arange=torch.arange(T))
    rows = BlockRows(P, P + BL, torch.arange(4), [0, 1, 2, 3], T, None)
    masked = torch.zeros(4, BL, dtype=torch.bool)
    masked[:, 6] = True
    commit = masked.clone()
    commit[1, 6] = False  # row 1 leaves position 6 masked: its block is not finished
    remask = torch.zeros(4, BL, dtype=torch.bool)
    step = EotpStep(commit, x[:, P:P + BL], torch.ones(4, BL), masked, None, remask=remask)
    assert (cut_after_a_finished_block_with_an_end(state, rows, step) - P).tolist() == [BL, G, 5, G]
    remask[0, 2] = True  # a re-masked position: row 0's block has a mask again
    assert (cut_after_a_finished_block_with_an_end(state, rows, step) - P).tolist() == [G, G, 5, G]
