"""dInfer's vicinity refresh (``cache=vicinity``) and iteration smoothing (``vicinity_smooth``) against their
code: the kind and query range of every forward (``fixtures/caches_dinfer.json``, made by running their
``generate_uniform.py`` with a recording stub network and a scripted decoder), the double refresh, the
smoothing weights, the smoothed inputs, and the settings under which it is exactly ``dual`` or ``none``.
Batch invariance over every policy, EoTP rule and family is in the tests that cover every registered cache
(test_policies.py, test_dream_engine.py); here also rows that disagree within a step (warm-up beside
windows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scripted_model import ScriptedModel

from l2pd_eval.caches import StepInput, make_strategy
from l2pd_eval.caches.vicinity import RowSchedule, VicinityCache, VicinityParams
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import Policy, get_policy

CASES = {c["name"]: c for c in json.loads((Path(__file__).parent / "fixtures" / "caches_dinfer.json").read_text())["cases"]}
KINDS = {"full_no_cache": "warmup", "full+write_cache": "refresh", "window_over_cache": "window"}
MASK, EOS = 15, 14


def params_of(case) -> dict:
    p = case["params"]
    return dict(vicinity_prefix=p["prefix_look"], vicinity_after=p["after_look"], vicinity_warmup=p["warmup_steps"])


class Leftmost(Policy):
    """Commits the leftmost ``counts[(block, step)]`` masked positions (their scripted decoder)."""

    name = "_leftmost"
    scheduled = False

    def __init__(self, counts: dict[tuple[int, int], int]):
        self.counts = counts

    def select(self, state):
        k = self.counts[(state.block, state.step)]
        return state.masked & (state.masked.long().cumsum(-1) <= k)


class ByPrediction(Policy):
    """Commits 1 to 3 of the leftmost masked positions, by the first one's prediction: rows go at their own
    pace (and would alone), so they leave a block after different numbers of steps."""

    name = "_by_prediction"
    scheduled = False

    def select(self, state):
        first = state.masked.long().argmax(-1, keepdim=True)
        k = 1 + state.x0.gather(1, first) % 3
        return state.masked & (state.masked.long().cumsum(-1) <= k)


class Recording(ScriptedModel):
    """Records each forward's absolute query range."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.queries: list[list[int]] = []

    def forward(self, input_ids, position_ids, key_mask=None, *, cache=None, start=0, **kw):
        self.queries.append([start, start + input_ids.shape[1]])
        return super().forward(input_ids, position_ids, key_mask, cache=cache, start=start, **kw)


def decode_as_their_script(case, **extra):
    """Decode the case's prompt with their per-forward commits (the forwards that commit nothing, which
    their unrolled loop spends after a block is done, are not ours); returns (our kinds, query ranges)."""
    P, G, BL = case["prompt_len"], case["gen_length"], case["block_length"]
    steps, counts = {}, {}
    for f in case["forwards"]:
        if f["committed"]:
            b = (f["block"][0] - P) // BL
            counts[(b, steps.setdefault(b, 0))] = f["committed"]
            steps[b] += 1
    model = Recording(P, [(3, 0.5)] * G)
    kinds = []
    logits = VicinityCache.logits

    def spy(self, s):
        out = logits(self, s)
        kinds.append(self.kinds[0])
        return out

    cfg = GenerationConfig(gen_length=G, block_length=BL, cache="vicinity", cache_params={**params_of(case), **extra})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VicinityCache, "logits", spy)
        generate(model, [[1] * P], cfg, Leftmost(counts), SpecialIds(mask=MASK, eos=EOS))
    return kinds, model.queries


def test_each_forward_is_the_kind_and_window_their_code_runs():
    """vicinity_small (prompt 20, gen 48, block 16, look 4/4, warm-up 2): two full forwards, the fill in
    block 0 (the cache is empty), windows [bs - 4, be + 4), then a refresh at each new block."""
    case = CASES["vicinity_small"]
    theirs = [(KINDS[f["kind"]], f["queries"]) for f in case["forwards"] if f["committed"]]
    kinds, queries = decode_as_their_script(case)
    assert list(zip(kinds, queries, strict=True)) == theirs


@pytest.mark.parametrize("name", ["vicinity_small", "vicinity_block0_in_warmup", "vicinity_aligned_eval_defaults",
                                  "itersmooth_vicinity_eval_defaults"])
def test_every_window_of_their_runs_is_our_chunk(name):
    """Their window for each block (aligned blocks too, which our engine does not lay out): our chunk."""
    case = CASES[name]
    p = VicinityParams(**params_of(case))
    T = case["prompt_len"] + case["gen_length"]
    windows = [f for f in case["forwards"] if f["kind"] == "window_over_cache"]
    assert windows and all(list(VicinityCache.chunk(tuple(f["block"]), T, 0, p)) == f["queries"] for f in windows)


@pytest.mark.parametrize("mode, block1", [("code", ["refresh", "window", "refresh", "window", "window"]),
                                          ("off", ["refresh", "window", "window", "window", "window"])])
def test_a_first_fill_after_block_zero_refreshes_twice_as_their_code_does(mode, block1):
    """Their vicinity_block0_in_warmup: block 0 ends during warm-up, the cache is first filled in block 1
    without ``require_update`` being asked, so the next call refreshes again (forwards 2-5: fill, window,
    fill, window). ``vicinity_double_refresh=off`` refreshes once."""
    case = CASES["vicinity_block0_in_warmup"]
    assert [KINDS[f["kind"]] for f in case["forwards"][2:6]] == ["refresh", "window", "refresh", "window"]
    schedule = RowSchedule(1, VicinityParams(vicinity_warmup=1, vicinity_double_refresh=mode))
    assert schedule.next(0, 20) == "warmup"  # block 0, done in one forward
    assert [schedule.next(0, 36) for _ in block1] == block1
    assert [schedule.next(0, 52) for _ in range(3)] == ["refresh", "window", "window"]


def test_smoothing_weights_are_theirs():
    case = CASES["itersmooth_vicinity_eval_defaults"]
    p = VicinityParams(vicinity_smooth=case["params"]["cont_weight"])
    assert [p.smooth_weight(k) for k in range(len(case["smoothing_weights"]))] == pytest.approx(
        case["smoothing_weights"], abs=1e-12)


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_no_look_and_no_warmup_is_dual_and_endless_warmup_is_none(family, policy):
    """prefix_look = after_look = warmup = 0 is their ``BlockWiseDiffusionLLM`` with the dual cache; a warm-up
    longer than the answer runs every step as a full forward without a cache: ``none``."""
    def run(cache, **params):
        cfg = GenerationConfig(gen_length=24, block_length=8, cache=cache, cache_params=params)
        return generate(family.model, family.prompts, cfg, get_policy(policy), family.special)

    dual, vic = run("dual"), run("vicinity", vicinity_prefix=0, vicinity_after=0, vicinity_warmup=0)
    assert torch.equal(dual.sequences, vic.sequences)
    assert [s.positions for s in dual.stats] == [s.positions for s in vic.stats]
    none, warm = run("none"), run("vicinity", vicinity_warmup=1000)
    assert torch.equal(none.sequences, warm.sequences)
    assert [s.positions for s in none.stats] == [s.positions for s in warm.stats]


def test_positions_follow_each_row_s_schedule(tiny, prompts):
    """Full forwards cost the live length, windows their clipped width, row by row."""
    model, _, special = tiny
    cfg = GenerationConfig(gen_length=16, block_length=8, cache="vicinity",
                           cache_params=dict(vicinity_prefix=2, vicinity_after=3, vicinity_warmup=1))
    out = generate(model, [prompts[0]], cfg, get_policy("low_confidence"), special)
    P, T = len(prompts[0]), len(prompts[0]) + 16
    # block 0: warm-up, refresh, 6 windows [P - 2, P + 11); block 1: refresh, 7 windows [P + 6, T)
    assert out.stats[0].positions == 2 * T + 6 * 13 + T + 7 * (T - (P + 6))


def test_rows_that_disagree_run_one_forward_per_group(tiny, prompts, monkeypatch):
    """Rows leave block 0 after different numbers of steps, so in block 1 some are still warming up while
    others read their windows: two forwards in one step, and each row decodes as it would alone."""
    model, _, special = tiny
    groups = []
    on_rows = VicinityCache._on_rows

    def spy(self, s, group, chunk):
        groups.append((len(group), s.x.shape[0]))
        return on_rows(self, s, group, chunk)

    monkeypatch.setattr(VicinityCache, "_on_rows", spy)
    cfg = GenerationConfig(gen_length=32, block_length=8, cache="vicinity", cache_params=dict(vicinity_warmup=8))
    batched = generate(model, prompts, cfg, ByPrediction(), special)
    assert any(g < n for g, n in groups)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], cfg, ByPrediction(), special)
        assert torch.equal(batched.tokens[row], alone.tokens[0])
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step


def test_smoothing_feeds_each_masked_position_its_last_expected_embedding(tiny):
    """After a full forward, a still-masked position's next input is E[mask] + w0 * softmax(logits) @ E,
    computed here from the first forward's own full logits; committed positions get E[token] alone."""
    model, _, _ = tiny
    T, P, block = 24, 8, (8, 16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size - 1, (1, T), generator=gen)
    x[:, P:] = model.config.vocab_size - 1  # masks
    mask_id = model.config.vocab_size - 1
    pos = torch.arange(T).unsqueeze(0)
    params = dict(vicinity_warmup=5, vicinity_smooth=0.3, vicinity_smooth_init=0.1, vicinity_smooth_growth=0.05)
    strat = make_strategy("vicinity", model, 1, T, params=params)
    masked = (x[:, P:16] == mask_id)
    strat.logits(StepInput(x, pos, None, block, T, step=0, masked=masked, rows=(0,), seeds=(0,), limits=(T,)))
    full = model(x, pos)  # the first forward's logits, every position
    x2 = x.clone()
    x2[0, 9] = 5  # committed at the first step
    masked2 = x2[:, P:16] == mask_id
    second = strat.logits(StepInput(x2, pos, None, block, T, step=1, masked=masked2, rows=(0,), seeds=(0,),
                                    limits=(T,)))
    table = model.token_embedding.weight[:model.config.vocab_size]
    soft = 0.1 * full.softmax(-1) @ table  # weight of forward 0
    delta = soft * (x2 == mask_id).unsqueeze(-1)
    delta[:, :P] = 0
    want = model(x2, pos, logits_slice=slice(8, 16), embed_delta=delta)
    torch.testing.assert_close(second, want, rtol=1e-10, atol=1e-10)
    plain = model(x2, pos, logits_slice=slice(8, 16))
    assert not torch.allclose(second, plain)  # it does change what the network computes


def test_zero_smoothing_weights_change_nothing(tiny, prompts):
    """Smoothing on with every weight 0: the eager smoothing path adds zeros, so it decodes as plain vicinity."""
    model, _, special = tiny
    base = dict(vicinity_warmup=2)
    cfg = {k: GenerationConfig(gen_length=16, block_length=8, cache="vicinity", cache_params=p) for k, p in (
        ("plain", base), ("zero", dict(base, vicinity_smooth=0.3, vicinity_smooth_init=0, vicinity_smooth_growth=0)))}
    outs = {k: generate(model, prompts, c, get_policy("threshold", threshold=0.5), special) for k, c in cfg.items()}
    assert torch.equal(outs["plain"].sequences, outs["zero"].sequences)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="vicinity_prefix=-1 must be >= 0"):
        GenerationConfig(cache="vicinity", cache_params={"vicinity_prefix": -1})
    with pytest.raises(ValueError, match="vicinity_double_refresh='twice'; valid choices: code, off"):
        GenerationConfig(cache="vicinity", cache_params={"vicinity_double_refresh": "twice"})
    assert GenerationConfig(cache="vicinity").cache_params == dict(
        vicinity_prefix=16, vicinity_after=16, vicinity_warmup=4, vicinity_double_refresh="code", vicinity_smooth=0.0,
        vicinity_smooth_init=0.15, vicinity_smooth_growth=0.02)


@pytest.mark.parametrize("eotp", ["false", "true", "block_end"])
def test_smoothing_decodes_a_batch_as_each_prompt_alone(family, eotp):
    """The soft embeddings are kept by batch row: a padded batch, rows leaving blocks early, EoTP cuts."""
    cfg = GenerationConfig(gen_length=24, block_length=8, cache="vicinity", eotp=eotp,
                           cache_params=dict(vicinity_warmup=3, vicinity_smooth=0.3))
    batched = generate(family.model, family.prompts, cfg, ByPrediction(), family.special)
    for row, prompt in enumerate(family.prompts):
        alone = generate(family.model, [prompt], cfg, ByPrediction(), family.special)
        assert torch.equal(batched.tokens[row], alone.tokens[0])
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step


def test_threshold_decay_is_their_iteration_threshold():
    """IterationSmooth's decoder threshold at forward k: max(1 - decay * k, threshold) (their vector: 1.0,
    0.98, ..., 0.92, then 0.9), as policy threshold's ``threshold_decay``, per row."""
    from l2pd_eval.policies import StepState

    case = CASES["itersmooth_vicinity_eval_defaults"]
    theirs = torch.tensor([f["iter_threshold"] for f in case["forwards"]], dtype=torch.float64)
    k = torch.arange(len(theirs))
    # per row (forward k): one confidence just above its limit (or 1.0), one just below
    conf = torch.stack([(theirs + 1e-6).clamp(max=1.0), theirs - 1e-6], -1)
    state = StepState(conf=conf, x0=torch.zeros(len(k), 2, dtype=torch.long), masked=torch.ones(len(k), 2, dtype=torch.bool),
                      k=torch.ones(len(k), dtype=torch.long), step=0, block=0, block_start=0, rows=k, forwards=k)
    decayed = get_policy("threshold", threshold=0.9, threshold_decay=0.02).select(state)
    assert decayed[:, 0].all() and not decayed[:, 1].any()  # the limit is theirs at every forward
    fixed = get_policy("threshold", threshold=0.9).select(state)
    assert torch.equal(fixed[:, 1], theirs - 1e-6 > 0.9)  # without the decay: Fast-dLLM's fixed threshold
    with pytest.raises(ValueError, match="threshold_decay=-1.0 must be >= 0"):
        get_policy("threshold", threshold_decay=-1)


def test_policies_see_each_row_s_forward_count(tiny, prompts):
    """StepState.forwards counts the forwards a row took part in before this one; rows that sat a step out
    (their block done) do not count it."""
    model, _, special = tiny
    seen = []

    class Watch(ByPrediction):
        def select(self, state):
            seen.append((state.rows.tolist(), state.forwards.tolist()))
            return super().select(state)

    out = generate(model, prompts, GenerationConfig(gen_length=16, block_length=8), Watch(), special)
    count = [0] * len(prompts)
    for rows, forwards in seen:
        assert forwards == [count[r] for r in rows]
        for r in rows:
            count[r] += 1
    assert count == [s.nfe for s in out.stats] and len(set(count)) > 1
