"""dLLM-Cache (``cache=dllm_cache``) against its authors' rule: the refresh schedule and V-verify's pick
(``fixtures/caches_dllm_cache.json``, made by running their ``dllm_cache`` package), the positions every
layer computes in each case, one cached step redone by hand from the layer parts, the settings under which
it is ``none``, rows whose schedules disagree within a step, and its parameters' errors. Batch invariance
over every policy, EoTP rule and family is in the tests that cover every registered cache
(test_policies.py, test_dream_engine.py, test_llada_moe_engine.py, test_eos_knobs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from policy_cases import assert_batched_equals_alone
from test_vicinity import ByPrediction

from l2pd_eval.caches import StepInput, make_strategy
from l2pd_eval.caches.dllm_cache import DLLMCache, DLLMCacheParams, verify
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.errors import ConfigError
from l2pd_eval.policies import get_policy

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "caches_dllm_cache.json").read_text())
FLAGS = {"full": [True, True], "gen": [False, True], "prompt": [True, False], "neither": [False, False]}


@pytest.mark.parametrize("case", VECTORS["schedules"], ids=lambda c: f"Kp{c['prompt_interval_steps']}-Kr{c['gen_interval_steps']}")
def test_the_schedule_is_their_counter_s(case):
    """Their per-layer (prompt, gen) refresh flags at each forward (1-based ``current_step``): ours by the
    row's 0-based forward count, layer 0 always full; their -1 ("no cache") is our 1."""
    kp, kr = (max(case[k], 1) for k in ("prompt_interval_steps", "gen_interval_steps"))
    p = DLLMCacheParams(dllm_cache_prompt_interval=kp, dllm_cache_gen_interval=kr)
    for f in case["forwards"]:
        ours = [[True, True]] + [FLAGS[p.case(f["forward"] - 1)]] * (case["n_layers"] - 1)
        assert ours == f["layers_prompt_gen_refresh"], f["forward"]


@pytest.mark.parametrize("ratio", ["0.125", "0.25", "0.5"])
def test_v_verify_picks_their_positions(ratio):
    """Their ``refresh_index`` on a hand-built V (fresh = kept rotated and scaled, no ties): the positions of
    lowest cosine similarity, over every head's values of a position (here the 4 features as 2 heads x 2);
    position 3 of row 0 is only scaled (similarity 1) and is never picked."""
    sel = VECTORS["selection"]
    theirs = sel["by_ratio"][ratio]
    fresh, kept = (torch.tensor(sel[k], dtype=torch.float64).view(2, 8, 2, 2).transpose(1, 2) for k in ("new_V", "cached_V"))
    k = int(8 * float(ratio))
    assert k == theirs["num_replace"]
    picked = verify(fresh, kept, k)
    assert sorted(map(sorted, picked.tolist())) == sorted(theirs["index_sorted"]) and 3 not in picked[0].tolist()
    live = torch.ones(2, 8, dtype=torch.bool)
    live[0, 7] = live[1, 4] = False  # cut by EoTP: never picked while live positions remain
    assert 7 not in verify(fresh, kept, k, live)[0].tolist() and 4 not in verify(fresh, kept, k, live)[1].tolist()


def expected_calls(case: str, L: int, P: int, k: int) -> list[tuple[str, int]]:
    """What one layer >= 1 computes, per row, in each case (``"v"``: V-verify's value-only probe)."""
    return {"full": [("qkv", L), ("mlp", L)], "gen": [("qkv", L - P), ("mlp", L - P)],
            "prompt": [("qkv", P), ("v", L - P), ("qk", k), ("mlp", P + k)],
            "neither": [("v", L - P), ("qk", k), ("mlp", k)]}[case]


def test_every_layer_computes_the_positions_of_its_case(family, monkeypatch):
    """One prompt, one token per step (16 forwards), Kp 5, Kr 2, ratio 0.25 (k = 4 of 16): each layer's
    projections and MLP rows, forward by forward, as the rule says; ``positions`` is the running sum of
    layer-positions over the layers, ``probes`` the value-only projections, in the same units."""
    model, (prompt, *_) = family.model, family.prompts
    calls: list[tuple[int, str, int]] = []
    for i, layer in enumerate(model.blocks):
        project, mlp = layer.project, layer.mlp_delta

        def spy_project(h, cos, sin, parts="qkv", _i=i, _f=project):
            calls.append((_i, parts, h.shape[1]))
            return _f(h, cos, sin, parts)

        def spy_mlp(x, _i=i, _f=mlp):
            calls.append((_i, "mlp", x.shape[1]))
            return _f(x)

        monkeypatch.setattr(layer, "project", spy_project)
        monkeypatch.setattr(layer, "mlp_delta", spy_mlp)
    probes, logits = [], DLLMCache.logits

    def spy_logits(self, s):
        out = logits(self, s)
        probes.append(self.probes[0])
        return out

    monkeypatch.setattr(DLLMCache, "logits", spy_logits)
    params = dict(dllm_cache_prompt_interval=5, dllm_cache_gen_interval=2, dllm_cache_transfer_ratio=0.25)
    cfg = GenerationConfig(gen_length=16, block_length=8, cache="dllm_cache", cache_params=params)
    out = generate(model, [prompt], cfg, get_policy("low_confidence"), family.special)
    P, N, L, k = len(prompt), model.config.n_layers, len(prompt) + 16, 4
    rule = DLLMCacheParams(**params)
    cases = [rule.case(f) for f in range(16)]
    assert cases[:11] == ["full", "neither", "gen", "neither", "gen", "prompt", "gen", "neither", "gen", "neither",
                          "full"]
    want = [(i, *call) for c in cases for i in range(N) for call in expected_calls("full" if i == 0 else c, L, P, k)]
    assert calls == want
    layer_positions = sum(L + (N - 1) * {"full": L, "gen": L - P, "prompt": P + k, "neither": k}[c] for c in cases)
    assert out.stats[0].nfe == 16 and out.stats[0].positions == layer_positions // N
    assert probes == [(N - 1) * (L - P) // N if c in ("prompt", "neither") else 0 for c in cases]


def test_a_step_between_refreshes_is_their_rule_redone_by_hand(tiny):
    """Tiny LLaDA (2 layers): a full step over ``x``; then the tokens at answer positions 1 and 12 change, and
    the kept layer-1 values of positions 3 and 9 are hand-set to their negatives, so V-verify (ratio 2/16)
    must pick those two (similarity near -1). The next step is ``neither`` (Kp = Kr = 100), redone here from
    the layer parts over whole-sequence tensors: layer 0 fresh; at layer 1 the picked positions get fresh
    queries and keys, every answer position its fresh value, every other delta is read as the full step
    left it (the changed tokens' own positions included)."""
    model = tiny[0]
    T, P, block = 24, 8, (8, 16)
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, model.config.vocab_size - 8, (1, T), generator=gen)
    x2 = x.clone()
    x2[0, [P + 1, P + 12]] = (x[0, [P + 1, P + 12]] + 5) % (model.config.vocab_size - 8)
    pos = torch.arange(T).unsqueeze(0)
    strat = make_strategy("dllm_cache", model, 1, T, params=dict(
        dllm_cache_prompt_interval=100, dllm_cache_gen_interval=100, dllm_cache_transfer_ratio=0.125))
    step = {"rows": (0,), "seeds": (0,), "limits": (T,), "prompt": P}
    strat.logits(StepInput(x, pos, None, block, T, step=0, **step))
    picked = [P + 3, P + 9]
    strat._buffer.v[1][:, :, picked] *= -1  # hand-built kept features: these two moved most
    out = strat.logits(StepInput(x2, pos, None, block, T, step=1, **step))
    assert strat.cases == ["neither"]

    first, second = model.blocks
    cos, sin = model.rotary.tables(pos, model.dtype)
    # what the full step kept at layer 1: its keys, values (two of them negated) and deltas over x
    h1_old = first(model.token_embedding(x), cos, sin, None, None, 0, T)
    q, k_old, v_old = second.project(second.attn_input(h1_old), cos, sin)
    a_old = second.attn_output(F.scaled_dot_product_attention(q, k_old, v_old))
    m_old = second.mlp_delta(h1_old + a_old)
    v_old[:, :, picked] *= -1
    # the cached step over x2
    h1 = first(model.token_embedding(x2), cos, sin, None, None, 0, T)
    q, k_new, v_new = second.project(second.attn_input(h1), cos, sin)
    sim = F.cosine_similarity(v_new[0, :, P:].transpose(0, 1).flatten(1), v_old[0, :, P:].transpose(0, 1).flatten(1))
    assert sorted((sim.argsort()[:2] + P).tolist()) == picked and sim.sort().values[1] < 0 < sim.sort().values[2]
    keys, values = k_old.clone(), torch.cat([v_old[:, :, :P], v_new[:, :, P:]], 2)
    keys[:, :, picked] = k_new[:, :, picked]
    att = second.attn_output(F.scaled_dot_product_attention(q[:, :, picked], keys, values))
    a = a_old.clone()
    a[:, picked] = att
    h2 = h1 + a
    m = m_old.clone()
    m[:, picked] = second.mlp_delta(h2[:, picked])
    want = model.head((h2 + m)[:, 8:16])
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, model(x2, pos, logits_slice=slice(*block)))  # not what a full step computes
    assert strat.positions == [(2 * T + T + 2) // 2 - (2 * T) // 2]  # layer 0: T; layer 1: the 2 picked
    torch.testing.assert_close(strat._buffer.v[1][:, :, P:], v_new[:, :, P:], rtol=0, atol=1e-12)  # kept: fresh


@pytest.mark.parametrize("policy, eotp", [("low_confidence", "false"), ("threshold", "true"), ("learn2pd", "committed"),
                                          ("threshold", "block_end")])
def test_refreshing_every_forward_decodes_exactly_as_no_cache(family, filter_path, policy, eotp):
    """Kp = Kr = 1 (their -1): every layer of every forward is computed in full through the layer parts,
    bit-identical to ``none``'s forward, at ``none``'s cost."""
    cfg = [GenerationConfig(gen_length=16, block_length=8, cache=c, eotp=eotp, cache_params=p) for c, p in (
        ("none", {}), ("dllm_cache", dict(dllm_cache_prompt_interval=1, dllm_cache_gen_interval=1)))]
    plain, every = (assert_batched_equals_alone(family.model, family.prompts, c, policy, family.special, filter_path)
                    for c in cfg)
    assert torch.equal(plain.sequences, every.sequences)
    assert [s.positions for s in plain.stats] == [s.positions for s in every.stats]


def test_recomputing_the_whole_answer_at_each_prompt_refresh_is_a_full_step(tiny):
    """Kp 1 with ratio 1: every forward refreshes the prompt and V-verify picks every answer position, so a
    step computes what a full step does (positions in another order: equal to rounding)."""
    model = tiny[0]
    T, P, block = 24, 8, (8, 16)
    x = torch.randint(0, model.config.vocab_size - 8, (1, T), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(T).unsqueeze(0)
    strat = make_strategy("dllm_cache", model, 1, T, params=dict(dllm_cache_prompt_interval=1,
                                                                 dllm_cache_gen_interval=100, dllm_cache_transfer_ratio=1))
    step = {"rows": (0,), "seeds": (0,), "limits": (T,), "prompt": P}
    strat.logits(StepInput(x, pos, None, block, T, step=0, **step))
    x[0, P + 2] = 3
    out = strat.logits(StepInput(x, pos, None, block, T, step=1, **step))
    assert strat.cases == ["prompt"]
    torch.testing.assert_close(out, model(x, pos, logits_slice=slice(*block)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eotp", ["false", "true"])
def test_rows_whose_schedules_disagree_run_one_loop_per_case_and_decode_as_alone(family, monkeypatch, eotp):
    """Rows leave blocks after different numbers of steps, so their forward counts drift apart and a step
    holds rows of several cases (one layer loop each, on their own rows' state); each row decodes as alone."""
    seen = []
    layers = DLLMCache._layers

    def spy(self, x, *args):
        seen.append((args[3], x.shape[0]))
        return layers(self, x, *args)

    monkeypatch.setattr(DLLMCache, "_layers", spy)
    cfg = GenerationConfig(gen_length=24, block_length=8, cache="dllm_cache", eotp=eotp,
                           cache_params=dict(dllm_cache_prompt_interval=3, dllm_cache_gen_interval=2))
    batched = generate(family.model, family.prompts, cfg, ByPrediction(), family.special)
    assert any(n < len(family.prompts) for _, n in seen) and len({c for c, _ in seen}) == 4
    for row, prompt in enumerate(family.prompts):
        alone = generate(family.model, [prompt], cfg, ByPrediction(), family.special)
        assert torch.equal(batched.tokens[row], alone.tokens[0])
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step


def test_parameters_and_errors(tiny, tiny_dir):
    from l2pd_eval.harness.model_args import parse_model_args

    assert GenerationConfig(cache="dllm_cache").cache_params == dict(
        dllm_cache_prompt_interval=50, dllm_cache_gen_interval=7, dllm_cache_transfer_ratio=0.25)
    for bad, message in ((dict(dllm_cache_prompt_interval=0), "dllm_cache_prompt_interval=0 must be >= 1"),
                         (dict(dllm_cache_gen_interval=-1), "dllm_cache_gen_interval=-1 must be >= 1"),
                         (dict(dllm_cache_transfer_ratio=1.5), "dllm_cache_transfer_ratio=1.5 must be in \\[0, 1\\]")):
        with pytest.raises(ConfigError, match=message):
            GenerationConfig(cache="dllm_cache", cache_params=bad)
    with pytest.raises(ConfigError, match="dllm_cache_gen_interval=0 must be >= 1"):
        parse_model_args(dict(pretrained=str(tiny_dir), cache="dllm_cache", dllm_cache_gen_interval="0"))
    with pytest.raises(ValueError, match="dllm_cache_gen_interval='often' is not an integer"):
        GenerationConfig(cache="dllm_cache", cache_params={"dllm_cache_gen_interval": "often"})
    strat = make_strategy("dllm_cache", tiny[0], 1, 24)
    x = torch.zeros(1, 24, dtype=torch.long)
    with pytest.raises(ValueError, match="StepInput.prompt must be in"):
        strat.logits(StepInput(x, x, None, (8, 16), 24, step=0, rows=(0,)))


def test_a_network_without_layer_parts_is_refused_in_one_line():
    from scripted_model import ScriptedModel

    with pytest.raises(ConfigError, match="cache='dllm_cache' runs its own layer loop: it needs a network whose "
                                          "layers expose their parts"):
        make_strategy("dllm_cache", ScriptedModel(4, [(3, 0.5)] * 8), 1, 12)


@pytest.mark.parametrize("policy, eotp", [("threshold", "true"), ("learn2pd", "committed"), ("low_confidence", "block_end")])
def test_a_float32_batch_decodes_as_each_prompt_alone(family, filter_path, policy, eotp):
    """The engine's batch invariance in float32 too (the other tests run float64): padded, ragged rows whose
    forward counts drift apart (Kp 3, Kr 2) decode the same tokens batched and alone."""
    from l2pd_eval.model import load_model

    model = load_model(str(family.directory), dtype="float32")
    cfg = GenerationConfig(gen_length=24, block_length=8, cache="dllm_cache", eotp=eotp,
                           cache_params=dict(dllm_cache_prompt_interval=3, dllm_cache_gen_interval=2))
    assert_batched_equals_alone(model, family.prompts, cfg, policy, family.special, filter_path)


def test_without_v_verify_a_step_between_refreshes_moves_only_through_layer_0(tiny):
    """Ratio 0, a ``neither`` step: layer 0 is computed afresh over the new tokens, layer 1 adds the deltas
    the full step kept, and nothing else is computed (positions: layer 0's alone)."""
    model = tiny[0]
    T, P, block = 24, 8, (8, 16)
    x = torch.randint(0, model.config.vocab_size - 8, (1, T), generator=torch.Generator().manual_seed(6))
    pos = torch.arange(T).unsqueeze(0)
    strat = make_strategy("dllm_cache", model, 1, T, params=dict(dllm_cache_transfer_ratio=0))
    step = {"rows": (0,), "seeds": (0,), "limits": (T,), "prompt": P}
    strat.logits(StepInput(x, pos, None, block, T, step=0, **step))
    x2 = x.clone()
    x2[0, P + 4] = (x[0, P + 4] + 1) % (model.config.vocab_size - 8)
    out = strat.logits(StepInput(x2, pos, None, block, T, step=1, **step))
    first, second = model.blocks
    cos, sin = model.rotary.tables(pos, model.dtype)
    h1_old = first(model.token_embedding(x), cos, sin, None, None, 0, T)
    q, k, v = second.project(second.attn_input(h1_old), cos, sin)
    a_old = second.attn_output(F.scaled_dot_product_attention(q, k, v))
    m_old = second.mlp_delta(h1_old + a_old)
    h1 = first(model.token_embedding(x2), cos, sin, None, None, 0, T)
    torch.testing.assert_close(out, model.head((h1 + a_old + m_old)[:, 8:16]), rtol=1e-10, atol=1e-10)
    assert strat.cases == ["neither"] and strat.positions == [(2 * T + T) // 2 - T] and strat.probes == [0]
