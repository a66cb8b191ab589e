"""dInfer's decoding rules (threshold, hierarchy, credit) on the step sequences its own functions produced
(tests/fixtures/rules/dinfer.json: hand-built logits run through inclusionAI/dInfer's parallel_strategy.py
at fce4e32, V=6, mask id 5), then through ``generate``: regions, ties, values exactly at a threshold,
nothing passing, the last token, predicted masks, and credit's state per row and block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scripted_model import ScriptedModel

from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import StepState, get_policy
from l2pd_eval.policies.dinfer_credit import CreditMemory
from l2pd_eval.policies.dinfer_threshold import dinfer_commit
from l2pd_eval.policies.scores import step_statistics

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "rules" / "dinfer.json").read_text())
MASK = VECTORS["mask_id"]


def cases(*rules: str) -> list[dict]:
    return [c for c in VECTORS["cases"] if c["rule"] in rules]


def ids(rule_cases: list[dict]) -> list[str]:
    return [c["name"] for c in rule_cases]


def step_state(x0, masked, conf=None, stats=None, memory=None, step=0, temperature=0.0) -> StepState:
    x0, masked = torch.as_tensor(x0), torch.as_tensor(masked)
    conf = torch.zeros(x0.shape) if conf is None else conf
    n = x0.shape[0]
    return StepState(conf=conf, x0=x0, masked=masked, k=torch.ones(n, dtype=torch.long), step=step, block=0,
                     block_start=0, rows=torch.arange(n), stats=stats or {}, memory=memory, mask_id=MASK,
                     temperature=temperature)


def policy_for(case: dict):
    name = {"threshold": "dinfer_threshold", "hierarchy": "dinfer_hierarchy",
            "hierarchy_fast_v2": "dinfer_hierarchy", "credit_threshold": "dinfer_credit"}[case["rule"]]
    params = dict(case["params"])
    if case["rule"] == "hierarchy_fast_v2":
        params["hierarchy_rule"] = "fast_v2"
    return get_policy(name, **params)


@pytest.mark.parametrize("case", cases("threshold"), ids=ids(cases("threshold")))
def test_dinfer_threshold_commits_what_its_code_commits(case):
    conf = torch.tensor(case["conf"], dtype=torch.float32)
    got = policy_for(case).select(step_state(case["x0"], case["masked"], conf))
    assert got.tolist() == case["commit"], case["note"]


@pytest.mark.parametrize("case", cases("threshold"), ids=ids(cases("threshold")))
def test_the_engine_confidence_is_the_float32_softmax_dinfer_thresholds(case):
    """The recorded confidences are dInfer's float32 softmax at x0; the engine's, by the rule's default
    confidence (float32), agree to rounding."""
    from l2pd_eval.engine.predict import Predictor

    logits = torch.tensor(case["logits"], dtype=torch.float32)
    rule = get_policy("dinfer_threshold").confidence
    assert rule == "float32"
    x0, conf = Predictor(rule)(logits, 0.0, torch.zeros(logits.shape[0], dtype=torch.long), (0, 0, 0))
    masked = torch.tensor(case["masked"])
    assert x0[masked].tolist() == torch.tensor(case["x0"])[masked].tolist()
    assert torch.allclose(conf[masked], torch.tensor(case["conf"])[masked], rtol=0, atol=2e-7)


HIERARCHY = cases("hierarchy", "hierarchy_fast_v2")


@pytest.mark.parametrize("case", HIERARCHY, ids=ids(HIERARCHY))
def test_dinfer_hierarchy_commits_what_its_code_commits(case):
    policy = policy_for(case)
    dtype = getattr(torch, case["logits_dtype"])
    logits = torch.tensor(case["logits"], dtype=torch.float32).to(dtype)
    x0, masked = torch.tensor(case["x0"]), torch.tensor(case["masked"])
    assert torch.equal(logits.argmax(-1)[masked], x0[masked])
    stats = step_statistics(logits, policy.needs, 0.0, x0)
    conf = torch.tensor(case["conf"], dtype=torch.float32)
    if case["rule"] == "hierarchy":  # the class's confidence, in the logits' dtype, bit for bit
        assert stats["chosen_prob_model"].dtype == dtype
        assert torch.equal(stats["chosen_prob_model"][masked].float(), conf[masked])
    else:
        stats = {}
    got = policy.select(step_state(x0, masked, conf, stats))
    assert got.tolist() == case["commit"], case["note"]


def test_bf16_confidences_tie_where_float32_ones_do_not():
    """.690 and .691 are one bf16 value: both are the region's maximum. In float32 (confidence=float32,
    the engine's) only .691 is."""
    tie = next(c for c in HIERARCHY if c["name"] == "bf16_confidence_ties")
    logits = torch.tensor(tie["logits"]).bfloat16()
    x0, masked = torch.tensor(tie["x0"]), torch.tensor(tie["masked"])
    commits = {}
    for confidence in ("model", "float32"):
        policy = get_policy("dinfer_hierarchy", confidence=confidence, **tie["params"])
        stats = step_statistics(logits, policy.needs, 0.0, x0)
        f32 = torch.softmax(logits.float(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        commits[confidence] = policy.select(step_state(x0, masked, f32, stats)).tolist()
    assert commits["model"] == tie["commit"] == [[True, True, False, False, False]]
    f32_case = next(c for c in HIERARCHY if c["name"] == "bf16_confidence_ties_f32_reference")
    assert commits["float32"] == f32_case["commit"] == [[False, True, False, False, False]]


def test_the_hierarchy_is_per_row_in_a_batch():
    """Rows of different cases stacked (padded with committed positions) decide as each alone."""
    chosen = [c for c in cases("hierarchy") if c["params"] == {"threshold": 0.92, "low_threshold": 0.62}
              and c["logits_dtype"] == "float32"]
    width = max(len(c["x0"][0]) for c in chosen)

    def pad(row, value):
        return row + [value] * (width - len(row))

    x0 = torch.tensor([pad(c["x0"][0], 0) for c in chosen])
    masked = torch.tensor([pad(c["masked"][0], False) for c in chosen])
    conf = torch.tensor([pad(c["conf"][0], float("-inf")) for c in chosen])
    got = get_policy("dinfer_hierarchy").select(step_state(x0, masked, conf, {"chosen_prob_model": conf}))
    assert got.tolist() == [pad(c["commit"][0], False) for c in chosen]


CREDIT = cases("credit_threshold")


@pytest.mark.parametrize("store", ["sparse", "dense"])
@pytest.mark.parametrize("case", CREDIT, ids=ids(CREDIT))
def test_dinfer_credit_follows_its_code_step_by_step(case, store):
    """Per call: the commits, the fused argmax and its confidence, and the credit's non-zero entries.
    Calls on a block that is already full (the authors' unrolled loop) are never made by our engine."""
    policy = get_policy("dinfer_credit", credit_store=store, **case["params"])
    memory, current, step = None, None, 0
    for i, s in enumerate(case["steps"]):
        bs, be = s["block"]
        x = torch.tensor(s["x_before"])[:, bs:be]
        masked = x == case["mask_id"]
        if not masked.any():
            continue
        if s["block"] != current:
            memory, current, step = policy.begin_block(0, torch.arange(1)), s["block"], 0
        logits = torch.tensor(s["logits"], dtype=torch.float32)
        state = step_state(logits.argmax(-1), masked, stats={"logits": logits}, memory=memory, step=step)
        x0, conf = policy.fuse(state)
        where = f"{case['name']} call {i}"
        assert x0[masked].tolist() == torch.tensor(s["fused_x0"])[masked].tolist(), where
        assert conf[masked].tolist() == pytest.approx(torch.tensor(s["fused_conf"])[masked].tolist(), abs=1e-6), where
        commit = dinfer_commit(conf, x0, masked, MASK, policy.threshold)
        assert commit.tolist() == [row[bs:be] for row in s["commit"]], where
        if s["credit_after"] is not None:
            got_credit, want = credit_entries(memory), sorted(map(tuple, s["credit_after"]))
            assert [e[:2] for e in got_credit] == [tuple(e[:2]) for e in want], where
            assert [e[2] for e in got_credit] == pytest.approx([e[2] for e in want], abs=1e-6), where
        step += 1


def credit_entries(memory: CreditMemory) -> list[tuple[int, int, float]]:
    """The credit's non-zero (position, token, value) of row 0, sorted, from either store."""
    if memory.credit is not None:
        nz = memory.credit[0].nonzero().tolist()
        return sorted((p, t, memory.credit[0, p, t].item()) for p, t in nz)
    out = []
    for p in range(memory.used.shape[1]):
        for s in range(int(memory.used[0, p])):
            if memory.values[0, p, s] > 0:
                out.append((p, int(memory.ids[0, p, s]), memory.values[0, p, s].item()))
    return sorted(out)


def test_credit_state_is_per_row_and_narrowed_with_the_rows():
    """Two rows decoded together keep separate credit; dropping row 0 keeps row 1's exactly."""
    case = next(c for c in CREDIT if c["name"] == "credit_flips_argmax")
    policy = get_policy("dinfer_credit", **case["params"])
    steps = [s for s in case["steps"] if (torch.tensor(s["x_before"]) == MASK).any()]
    alone = policy.begin_block(0, torch.arange(1))
    pair = policy.begin_block(0, torch.arange(2))
    for step, s in enumerate(steps[:2]):
        x = torch.tensor(s["x_before"])
        masked = x == MASK
        logits = torch.tensor(s["logits"], dtype=torch.float32)
        other = logits.flip(-1)  # a different row: its own top-1 tokens
        one = policy.select(step_state(logits.argmax(-1), masked, stats={"logits": logits}, memory=alone, step=step))
        two = policy.select(step_state(torch.cat([other, logits]).argmax(-1), masked.repeat(2, 1),
                                       stats={"logits": torch.cat([other, logits])}, memory=pair, step=step))
        assert torch.equal(two.commit[1], one.commit[0]) and torch.equal(two.tokens[1], one.tokens[0])
    assert not torch.equal(pair.ids[0], pair.ids[1])
    pair.keep(torch.tensor([1]))
    assert torch.equal(pair.ids, alone.ids) and torch.equal(pair.values, alone.values)


# --- through generate ------------------------------------------------------------------------------------
V_MASK, EOS, EOT = 15, 14, 13
SPECIAL = SpecialIds(mask=V_MASK, eos=EOS, eot=(EOT,))


def test_dinfer_threshold_never_commits_a_predicted_mask_and_does_not_stall_into_one():
    """Position 2 predicts the mask id with p .99: dInfer skips it; when it is the last one left, the row
    commits nothing (no top-1 fallback onto a mask) and the block ends at the step budget, masked."""
    table = [(3, 0.95), (4, 0.5), (V_MASK, 0.99), (5, 0.3)]
    out = generate(ScriptedModel(2, table), [[1, 2]], GenerationConfig(gen_length=4, block_length=4),
                   get_policy("dinfer_threshold"), SPECIAL)
    assert out.tokens[0].tolist() == [3, 4, V_MASK, 5]
    assert out.stats[0].committed_per_step == [1, 1, 1, 0]  # .95; then .5 (max); then .3; then nothing
    assert out.stats[0].nfe == 4  # block_length steps at most


def test_dinfer_threshold_through_generate_commits_near_ties_together():
    """.95 passes .9 alone; then each step's maximum passes with whatever lies within 1e-5 of it."""
    table = [(3, 0.6), (4, 0.599996), (5, 0.5), (6, 0.95), (7, 0.4), (8, 0.7)]
    out = generate(ScriptedModel(2, table), [[1, 2]], GenerationConfig(gen_length=6, block_length=6),
                   get_policy("dinfer_threshold"), SPECIAL)
    assert out.stats[0].committed_per_step == [1, 1, 2, 1, 1]
    assert out.tokens[0].tolist() == [3, 4, 5, 6, 7, 8]


def test_dinfer_hierarchy_through_generate_commits_one_per_region():
    """Committing .95 splits the block into two regions; each then commits its maximum above .62."""
    table = [(3, 0.7), (4, 0.65), (5, 0.95), (6, 0.8), (7, 0.75), (8, 0.63)]
    out = generate(ScriptedModel(2, table), [[1, 2]], GenerationConfig(gen_length=6, block_length=6),
                   get_policy("dinfer_hierarchy"), SPECIAL)
    assert out.stats[0].committed_per_step == [1, 2, 2, 1]
    assert out.tokens[0].tolist() == [3, 4, 5, 6, 7, 8]


class PerCallModel(ScriptedModel):
    """``ScriptedModel`` whose table changes with each forward (the last one repeats)."""

    def __init__(self, prompt_length: int, tables: list[list[tuple[int, float]]]):
        super().__init__(prompt_length, tables[0])
        self.tables = [ScriptedModel(prompt_length, t).table for t in tables]

    def forward(self, *args, **kwargs):
        self.table = self.tables[min(len(self.lengths), len(self.tables) - 1)]
        return super().forward(*args, **kwargs)


def test_the_hierarchy_takes_the_authors_useful_forwards():
    """rules_dinfer_loop.json ``unroll_hierarchy``: 16 masks at .5 (under .62) commit the first top-1, the
    next forward (every position .95) the other 15: two forwards, as the authors count them."""
    words = [1, 2, 3, 4] * 4
    tables = [[(w, 0.5) for w in words], [(w, 0.95) for w in words]]
    out = generate(PerCallModel(1, tables), [[9]], GenerationConfig(gen_length=16, block_length=16),
                   get_policy("dinfer_hierarchy"), SPECIAL)
    assert out.tokens[0].tolist() == words
    assert out.stats[0].committed_per_step == [1, 15]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sparse_credit_decodes_as_the_authors_dense_matrix(tiny, prompts, temperature):
    model, _, special = tiny
    cfg = GenerationConfig(gen_length=16, block_length=8, temperature=temperature)
    sparse, dense = (generate(model, prompts, cfg, get_policy("dinfer_credit", credit_store=store), special)
                     for store in ("sparse", "dense"))
    assert torch.equal(sparse.tokens, dense.tokens)
    assert [s.committed_per_step for s in sparse.stats] == [s.committed_per_step for s in dense.stats]
    plain = generate(model, prompts, cfg, get_policy("dinfer_threshold", threshold=0.8), special)
    assert [s.committed_per_step for s in plain.stats] != [s.committed_per_step for s in sparse.stats]


@pytest.mark.parametrize("name, params, message", [
    ("dinfer_threshold", {"threshold": 1.5}, r"threshold=1.5 must lie in \[0, 1\]"),
    ("dinfer_hierarchy", {"low_threshold": 1.5}, r"low_threshold=1.5 must lie in \[0, 1\] \(or be none\)"),
    ("dinfer_hierarchy", {"hierarchy_rule": "v3"}, "hierarchy_rule='v3'; valid choices: class, fast_v2"),
    ("dinfer_credit", {"decay_beta": 2}, r"decay_beta=2.0 must lie in \[0, 1\]"),
    ("dinfer_credit", {"credit_alpha": -1}, "credit_alpha=-1.0 must be >= 0"),
    ("dinfer_credit", {"credit_store": "disk"}, "credit_store='disk'; valid choices: sparse, dense"),
])
def test_bad_parameters_name_the_field(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_policy(name, **params)
