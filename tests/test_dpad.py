"""DPad's suffix dropout (``cache=dpad``, ``dpad_prefix``, ``dpad_dual``) against the authors' rule: their
sampler's keep probabilities and kept sets (``fixtures/caches_dpad.json``, made by running their
``sampler.py`` and ``suffix_dropout`` on CPU), the positions each forward computes and caches per step
(their three ``generate*`` functions), the gathered layout (rope positions, padding hidden), the per-prompt
draws that batching never changes, and exactness against the inner strategy when every position is kept.
Batch invariance over every policy, EoTP rule and family is in the tests that cover every registered cache
(test_policies.py, test_dream_engine.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from policy_cases import skip_unless_it_takes
from scripted_model import ScriptedModel

from l2pd_eval.caches import StepInput, make_strategy
from l2pd_eval.caches.dpad import SuffixDropout, gaussian_distances, gaussian_pdf, uniform_distances
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import get_policy

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "caches_dpad.json").read_text())["cases"]
CASES = {c["name"]: c for c in VECTORS}
GAUSSIAN = [c for c in VECTORS if c["dropout"] == "gaussian"]
KEEP_ALL = dict(dpad_window=4096, dpad_sigma=1e-3, dpad_scale=2.6)  # every keep probability >= 1
DPADS = {"none": "dpad", "prefix": "dpad_prefix", "dual": "dpad_dual"}


@pytest.mark.parametrize("case", GAUSSIAN, ids=lambda c: c["name"])
def test_keep_probabilities_are_the_authors_pdf(case):
    p = case["params"]
    ours = gaussian_pdf(p["sigma"], p["scale"], p["window"], case["gen_length"])
    torch.testing.assert_close(ours, torch.tensor(case["pdf"], dtype=torch.float64), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["llada_instruct_gsm8k", "tiny_gaussian"])
def test_their_draws_keep_exactly_their_positions(name):
    """The rule apart from the generator: fed the uniforms their sampler drew, ours keeps the same set."""
    case = CASES[name]
    p = case["params"]
    pdf = gaussian_pdf(p["sigma"], p["scale"], p["window"], case["gen_length"])
    for b in case["blocks"]:
        u = torch.tensor(b["u"], dtype=torch.float64)
        assert gaussian_distances(u, pdf, b["suffix_len"]) == b["kept_distance"]
        assert [b["block_end"] + d for d in b["kept_distance"]] == b["kept"]


def test_uniform_sampler_keeps_a_number_within_the_window_or_every_position():
    u = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.05, 0.7, 0.2, 0.01])
    assert uniform_distances(u, 3, 6, 8) == [1, 3, 4]  # the 3 smallest among distances 0..5
    assert uniform_distances(u, 3, 8, 8) == [1, 4, 7]
    assert uniform_distances(u, 8, 4, 8) == list(range(8))  # number >= suffix: all of it, past the window too
    assert uniform_distances(u, 3, 6, 2) == [0, 1]
    for case in (CASES["tiny_uniform"], CASES["uniform_256"]):
        number, window = case["params"]["number"], case["params"]["window"]
        for b in case["blocks"]:  # their randperm as uniforms (distance perm[i] gets i): the same kept set
            perm = b.get("randperm_window")
            u = torch.empty(b["suffix_len"])
            if perm is not None:
                u[torch.tensor(perm)] = torch.arange(len(perm), dtype=u.dtype)
            assert uniform_distances(u, number, window, b["suffix_len"]) == b["kept_distance"]
            assert b["n_kept"] == (number if number < b["suffix_len"] else b["suffix_len"])


def test_our_draws_keep_with_the_same_probabilities():
    """The named deviation keeps the keep probabilities: over 4000 prompts the kept share per distance is
    the pdf (within 4 standard errors) and the mean kept count the pdf's sum."""
    case = CASES["llada15_gsm8k"]
    p = case["params"]
    pdf = gaussian_pdf(p["sigma"], p["scale"], p["window"], 224)
    u = SuffixDropout.uniforms(tuple(range(4000)), 224)
    share = (u < pdf).double().mean(0)
    assert ((share - pdf).abs() <= 4 * (pdf * (1 - pdf) / 4000).sqrt() + 1e-9).all()
    assert abs((u < pdf).sum(-1).double().mean() - pdf.sum()) < 1.0  # ~68 kept of 224


class Recording(ScriptedModel):
    """The scripted model, recording per forward the chunk's rope positions and the visible keys per row."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls: list[tuple[list[list[int]], list[int], int]] = []

    def forward(self, input_ids, position_ids, key_mask=None, *, cache=None, start=0, kv_len=None, **kw):
        kv = start + input_ids.shape[1] if kv_len is None else kv_len
        visible = [kv] * input_ids.shape[0] if key_mask is None else key_mask[:, :kv].sum(-1).tolist()
        self.calls.append((position_ids.tolist(), visible, start))
        return super().forward(input_ids, position_ids, key_mask, cache=cache, start=start, kv_len=kv_len, **kw)


def their_draws(case, monkeypatch):
    """Make our strategy draw the case's uniforms (keyed by the suffix length, as ours are)."""
    by_suffix = {b["suffix_len"]: torch.tensor(b["u"], dtype=torch.float64) for b in case["blocks"] if b["suffix_len"]}
    monkeypatch.setattr(SuffixDropout, "uniforms", staticmethod(lambda seeds, n: by_suffix[n].expand(len(seeds), n)))


@pytest.mark.parametrize("inner", ["none", "prefix", "dual"])
def test_each_forward_computes_and_caches_what_their_generate_does(inner, monkeypatch):
    """tiny_gaussian (prompt 5, gen 64, block 16), one token per step: a block's first forward runs over
    [0, be) + its kept positions at their own rope positions (their ``q_indices``); later forwards run the
    whole kept sequence again (``generate``), block + kept suffix over the cached prefix
    (``generate_with_prefix_cache``), or the block over everything cached (``generate_with_dual_cache``)."""
    case = CASES["tiny_gaussian"]
    their_draws(case, monkeypatch)
    P, G, BL = case["prompt_len"], case["gen_length"], case["block_length"]
    model = Recording(P, [(3, 0.5)] * G)
    cfg = GenerationConfig(gen_length=G, block_length=BL, cache=DPADS[inner], cache_params=dict(
        dpad_sigma=case["params"]["sigma"], dpad_scale=case["params"]["scale"], dpad_window=case["params"]["window"]))
    out = generate(model, [[1, 2, 1, 2, 1]], cfg, get_policy("low_confidence"), SpecialIds(mask=15, eos=14))
    assert len(model.calls) == out.stats[0].nfe == G  # 16 steps per block
    expected_cost = 0
    for b, blk in enumerate(case["blocks"]):
        bs, be, kept = blk["block_start"], blk["block_end"], blk["kept"]
        seq = list(range(be)) + kept
        for step in range(BL):
            positions, visible, _ = model.calls[b * BL + step]
            if step == 0 or inner == "none":
                want, cost = seq, blk["forward_positions_nocache"]
            elif inner == "prefix":
                want, cost = list(range(bs, be)) + kept, blk["cached_step_positions_prefix"]
            else:
                want, cost = list(range(bs, be)), blk["cached_step_positions_dual"]
            assert positions == [want] and visible == [len(seq)], (b, step)
            assert len(want) == cost
            expected_cost += cost
    assert out.stats[0].positions == expected_cost


def test_padding_columns_are_hidden_and_cost_no_row(monkeypatch):
    """Two rows with different kept counts share one gathered width: the shorter row's padding columns are
    masked keys and not in its positions; its own forwards see exactly its kept sequence."""
    drawn = {0: [0, 2, 5], 1: [1]}  # distances kept by row 0 and row 1, every block

    def uniforms(seeds, n):
        u = torch.ones(len(seeds), n)
        for r, seed in enumerate(seeds):
            u[r, [d for d in drawn[seed] if d < n]] = 0.0
        return u

    monkeypatch.setattr(SuffixDropout, "uniforms", staticmethod(uniforms))
    model = Recording(4, [(3, 0.5)] * 16)
    strat = make_strategy("dpad_prefix", model, 2, 20)
    x = torch.full((2, 20), 15)
    pos = torch.arange(20).expand(2, 20)
    for step in range(2):
        strat.logits(StepInput(x, pos, None, (4, 12), 20, step=step, rows=(0, 1), seeds=(0, 1), limits=(20, 20)))
        positions, visible, _ = model.calls[-1]
        assert visible == [12 + 3, 12 + 1]
        assert positions[0][-3:] == [12, 14, 17] and positions[1][-3:] == [13, 13, 13]  # padding: its last column
    assert strat.positions == [8 + 3, 8 + 1]  # block + own kept suffix per row (prefix cached step)
    # an EoTP cut before column 14 hides row 0's later kept columns and stops counting them
    strat.logits(StepInput(x[:, :14], pos[:, :14], torch.ones(2, 14, dtype=torch.bool), (4, 12), 14, step=2,
                           rows=(0, 1), seeds=(0, 1), limits=(14, 20)))
    assert model.calls[-1][1] == [12 + 1, 12 + 1] and strat.positions == [8 + 1, 8 + 1]


@pytest.mark.parametrize("inner", ["none", "prefix", "dual"])
@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_keeping_every_position_decodes_exactly_as_the_inner_strategy(family, inner, policy):
    """Every keep probability >= 1: the gathered sequence is the whole sequence, so tokens and positions
    equal the inner strategy's on every family (padded batch included): the layout and its rope are right."""
    skip_unless_it_takes(family.model, DPADS[inner])
    G = 24
    plain = generate(family.model, family.prompts, GenerationConfig(gen_length=G, block_length=8, cache=inner),
                     get_policy(policy), family.special)
    kept = generate(family.model, family.prompts, GenerationConfig(gen_length=G, block_length=8, cache=DPADS[inner],
                                                                    cache_params=KEEP_ALL),
                    get_policy(policy), family.special)
    assert torch.equal(plain.sequences, kept.sequences)
    assert [s.positions for s in plain.stats] == [s.positions for s in kept.stats]


def test_a_window_of_one_keeps_the_first_position_after_each_block(tiny, prompts, monkeypatch):
    model, _, special = tiny
    seen = []
    draw = SuffixDropout.draw

    def spy(self, be, seeds, limits):
        kept = draw(self, be, seeds, limits)
        seen.append((be, kept))
        return kept

    monkeypatch.setattr(SuffixDropout, "draw", spy)
    cfg = GenerationConfig(gen_length=24, block_length=8, cache="dpad", cache_params=dict(dpad_window=1, dpad_scale=2.6))
    generate(model, prompts, cfg, get_policy("threshold"), special)
    assert seen and all(kept == [[be]] * 3 for be, kept in seen if be < max(map(len, prompts)) + 24)


def test_kept_sets_depend_on_the_prompt_and_seed_only(tiny, prompts, monkeypatch):
    """Per-prompt counter-based draws: a prompt keeps the same positions alone, batched, after other prompts
    and in another order; another seed draws other sets."""
    model, _, special = tiny
    seen: dict[tuple[int, int], list[int]] = {}
    draw = SuffixDropout.draw

    def spy(self, be, seeds, limits):
        kept = draw(self, be, seeds, limits)
        for seed, k in zip(seeds, kept, strict=True):
            key = (seed, self.total - be)
            assert seen.setdefault(key, [c - be for c in k]) == [c - be for c in k]
        return kept

    monkeypatch.setattr(SuffixDropout, "draw", spy)
    cfg = GenerationConfig(gen_length=64, block_length=8, cache="dpad_dual", cache_params=dict(dpad_window=32))
    for batch in (prompts, prompts[::-1], prompts[1:], [prompts[0]]):
        generate(model, batch, cfg, get_policy("threshold"), special)
    sets = dict(seen)
    seen.clear()
    generate(model, prompts, GenerationConfig(gen_length=64, block_length=8, cache="dpad_dual", seed=1,
                                              cache_params=dict(dpad_window=32)), get_policy("threshold"), special)
    assert set(sets) != set(seen)  # other seeds: other streams


def test_parameters_are_checked_and_the_wrapper_needs_its_inner(tiny):
    with pytest.raises(ValueError, match="dpad_window=0 must be >= 1"):
        GenerationConfig(cache="dpad", cache_params={"dpad_window": 0})
    with pytest.raises(ValueError, match="dpad_dropout='random'; valid choices: gaussian, uniform"):
        GenerationConfig(cache="dpad", cache_params={"dpad_dropout": "random"})
    with pytest.raises(ValueError, match="dpad_sigma=0.0 must be > 0"):
        GenerationConfig(cache="dpad_dual", cache_params={"dpad_sigma": "0"})
    assert GenerationConfig(cache="dpad").cache_params == dict(
        dpad_dropout="gaussian", dpad_sigma=4.0, dpad_scale=2.0, dpad_window=256, dpad_preserved=0)
    from l2pd_eval.caches.dpad import DPadDual

    with pytest.raises(ValueError, match="cache='dpad_dual' wraps cache='dual': build it with caches.make_strategy"):
        DPadDual(tiny[0], 1, 32)
    strat = make_strategy("dpad_dual", tiny[0], 1, 32, params={"dpad_window": "8"})
    assert strat.params.dpad_window == 8 and strat.wrapped.name == "dual"


def test_model_args_reach_the_strategy_and_the_report_tells_settings_apart(tiny_dir):
    """``cache=dpad_dual,dpad_window=8`` through the lm-eval adapter: the decode uses it, the sidecar
    records every DPad parameter, and two runs that differ in one are two rows of a report."""
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM
    from l2pd_eval.results.runs import Run
    from l2pd_eval.results.sidecar import Sidecar

    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, policy="threshold", cache="dpad_dual",
                    dpad_window="8", eotp="block_end", progress=False)
    assert lm.config.cache_params["dpad_window"] == 8 and lm.config.eotp == "block_end"
    manifest = lm.recorder.sidecar.manifest
    assert manifest["cache"] == "dpad_dual" and manifest["cache_params"] == lm.config.cache_params
    methods = [Run(sidecar=Sidecar({**manifest, "cache_params": {**manifest["cache_params"], "dpad_window": w}})).method
               for w in (8, 16)]
    assert methods[0] != methods[1] and ("dpad_window", "8") in methods[0].params
    assert methods[0].cache == "dpad_dual" and methods[0].eotp == "block_end"
