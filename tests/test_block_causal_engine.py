"""Block-causal families (LLaDA2.0, SDAR) through the shared engine: the authors' own decodes reproduced on
their fixtures' weights through every cache that declares ``block_causal``; blocks on the grid of rope
positions from 0 (the first block holds the prompt's tail); every registered policy x cache x EoTP rule
decoding a ragged batch (prompt lengths that differ mod the block) exactly as each prompt alone; and the
settings these networks cannot serve refused in one line."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from policy_cases import POLICIES, assert_batched_equals_alone
from safetensors.torch import load_file

from l2pd_eval.caches import available, cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.harness.tasks_support import DATA_DIR_ENV
from l2pd_eval.model.loading import SpecialIds, load_model
from l2pd_eval.policies import Policy, StepState, get_policy, policy_class, policy_params
from l2pd_eval.policies.base import top1_mask

BLOCK_CACHES = [c for c in available() if cache_class(c).block_causal]
FAMILIES = ("llada2_moe", "sdar")
FIXTURES = "tests/fixtures"
# (family, policy, reference key, threshold, eotp): the tokens the authors' generate returned
AUTHORS = [("llada2_moe", "llada2_threshold", "gen10_thr0.5.output", 0.5, "false"),
           ("llada2_moe", "llada2_threshold", "gen10_thr0.95_eosstop.output", 0.95, "block_end"),
           ("sdar", "sdar_threshold", "gen_thr0.5.output", 0.5, "false"),
           ("sdar", "sdar_threshold", "gen_thr0.95.output", 0.95, "false")]


@pytest.fixture(scope="module")
def fixture_models():
    out = {}
    for fam in FAMILIES:
        model = load_model(f"{FIXTURES}/{fam}", dtype="float32")  # the authors decoded on float32 weights
        out[fam] = model, load_file(f"{FIXTURES}/{fam}/reference.safetensors"), SpecialIds.resolve(None, model.config)
    return out


@pytest.mark.parametrize("cache", BLOCK_CACHES)
@pytest.mark.parametrize("family, policy, key, threshold, eotp", AUTHORS)
def test_the_authors_decodes_on_their_weights(fixture_models, family, policy, key, threshold, eotp, cache):
    """Their canvas: prompt 6 + 10 answer tokens on blocks of 4 from position 0 (the first block holds 2
    prompt tokens), 4 steps a block. Ours decodes 12 (a whole number of blocks); a block-causal block never
    sees the ones after it, so the first 10 are theirs. SDAR returns the canvas, prompt included."""
    model, ref, special = fixture_models[family]
    prompt = ref["prompt"][0].tolist()
    cfg = GenerationConfig(gen_length=12, block_length=4, steps=12, cache=cache, eotp=eotp)
    out = generate(model, [prompt], cfg, get_policy(policy, threshold=threshold), special)
    want = ref[key][0].tolist()[len(prompt) if family == "sdar" else 0:]
    assert out.tokens[0, :len(want)].tolist() == want
    assert out.sequences[0, :len(prompt)].tolist() == prompt  # the prompt's tail in the first block stays


def test_eotp_stops_at_the_block_where_the_end_is_committed(fixture_models):
    model, ref, special = fixture_models["llada2_moe"]
    prompt = ref["prompt"][0].tolist()
    run = {e: generate(model, [prompt], GenerationConfig(gen_length=16, block_length=4, steps=16, eotp=e),
                       get_policy("llada2_threshold", threshold=0.95), special) for e in ("false", "block_end")}
    cut, full = run["block_end"], run["false"]
    end = cut.tokens[0].tolist().index(special.eos)  # answer position 6: block 3 holds answer 6..9
    assert end == 6 and cut.tokens[0, :10].tolist() == full.tokens[0, :10].tolist()
    assert (cut.tokens[0, 10:] == special.eos).all() and cut.stats[0].eotp_saved == 6
    assert cut.stats[0].nfe < full.stats[0].nfe


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_bc(request, tmp_path_factory):
    from conftest import _loaded

    from l2pd_eval.model.tiny import write_tiny

    model, tok, special = _loaded(write_tiny(request.param, tmp_path_factory.mktemp(request.param), seed=1))
    gen = torch.Generator().manual_seed(3)
    # lengths 5, 13 (one grid), 11, 8: three grids of blocks of 8, so the batch is decoded per grid
    prompts = [torch.randint(10, model.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 13, 11, 8)]
    return model, special, prompts


@pytest.mark.parametrize("policy, cache, eotp", [  # a rule a cache cannot serve is refused: tests/test_field_policies.py
    (p, c, e) for p, c, e in itertools.product(POLICIES, ["none", "block"], EOTP_MODES)
    if not ((policy_class(p).verifies or policy_class(p).finishes) and not cache_class(c).query_slots)
    and not (policy_class(p).horizons and not cache_class(c).horizons)
    and not (policy_class(p).edits and not cache_class(c).edits)])
def test_every_combination_batched_equals_unbatched(tiny_bc, filter_path, policy, cache, eotp):
    """Every policy and EoTP rule over the full forward and the block cache (the other exact caches: below;
    all of them x every policy passed too, 18 minutes on this machine's CPU: not worth every run)."""
    model, special, prompts = tiny_bc
    assert model.block_size == 8
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp)
    batched = assert_batched_equals_alone(model, prompts, cfg, policy, special, filter_path)
    assert batched.tokens.shape == (len(prompts), 16)


@pytest.mark.parametrize("cache", BLOCK_CACHES)
@pytest.mark.parametrize("policy", ["low_confidence", "threshold", "llada2_threshold"])
def test_sampling_batched_equals_unbatched_and_every_exact_cache_decodes_as_none(tiny_bc, cache, policy):
    model, special, prompts = tiny_bc
    for temperature, eotp in ((0.0, "block_end"), (0.7, "committed")):  # "true" searches after the block with none only
        cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, temperature=temperature, eotp=eotp)
        out = assert_batched_equals_alone(model, prompts, cfg, policy, special)
        plain = GenerationConfig(gen_length=16, block_length=8, temperature=temperature, eotp=eotp)
        none = generate(model, prompts, plain, get_policy(policy), special)
        assert torch.equal(out.tokens, none.tokens)


def test_the_first_block_starts_on_the_grid_and_nothing_after_the_block_is_computed(tiny_bc):
    """A 13-token prompt on blocks of 8: its first block holds prompt positions 8..12 and answer 0..2. The
    block cache computes the prompt + first block at its first step, the block alone after, and the finished
    block with the next one at the next block's first step."""
    model, special, prompts = tiny_bc
    seen = []

    class Record(Policy):
        name = "_record"

        def select(self, state: StepState) -> torch.Tensor:
            seen.append((state.block_start, int(state.masked.sum())))
            return top1_mask(state.masked_conf)

    out = generate(model, [prompts[1]], GenerationConfig(gen_length=16, block_length=8, cache="block"),
                   Record(), special)
    assert seen[0] == (-5, 3) and seen[3] == (3, 8)  # 3 answer slots in block 0, then whole blocks
    assert out.stats[0].nfe == 3 + 8 + 8  # 16 answer tokens + 3 masks completing the last block, top-1 each
    per_step = [16] + [8] * 2 + [16] + [8] * 7 + [16] + [8] * 7  # the finished block rides with the next
    assert out.stats[0].positions == sum(per_step)


def test_settings_a_block_causal_network_cannot_serve_are_refused_in_one_line(tiny_bc, tiny):
    model, special, prompts = tiny_bc
    name = type(model).__name__
    with pytest.raises(ValueError, match=f"^block_length=16: {name} attends block-causally over blocks of 8, the "
                                         "block length it was trained with; pass block_length=8$"):
        generate(model, prompts, GenerationConfig(gen_length=16, block_length=16), get_policy("low_confidence"),
                 special)
    refused = [c for c in available() if not cache_class(c).block_causal]
    assert refused and "block" not in refused
    for cache in refused:
        with pytest.raises(ValueError, match=f"^cache='{cache}' cannot decode the block-causal {name} exactly; "
                                             f"valid choices: {', '.join(BLOCK_CACHES)}$"):
            generate(model, prompts, GenerationConfig(gen_length=16, block_length=8, cache=cache),
                     get_policy("low_confidence"), special)
    llada, _, llada_special = tiny
    with pytest.raises(ValueError, match="^cache='block' is for block-causal networks; LLaDA attends"):
        generate(llada, [[10, 11]], GenerationConfig(gen_length=16, block_length=8, cache="block"),
                 get_policy("low_confidence"), llada_special)


def _state(conf, masked, step=0, k=None):
    conf, masked = torch.tensor(conf), torch.tensor(masked)
    k = masked.sum(-1) if k is None else torch.tensor(k)
    return StepState(conf=conf, x0=torch.zeros_like(masked, dtype=torch.long), masked=masked, k=k, step=step,
                     block=0, block_start=0, rows=torch.arange(len(conf)))


def test_the_rule_commits_all_above_the_threshold_when_they_are_enough_else_the_top_count():
    from l2pd_eval.policies.base import RunSettings

    rule = get_policy("llada2_threshold", threshold=0.5).bind(RunSettings(block_length=4, steps_per_block=2))
    conf = [[0.9, 0.6, 0.2, 0.55], [0.9, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]
    masked = [[True] * 4, [True] * 4, [False, True, True, True]]
    # 2 per step (block 4, 2 steps): row 0 has 3 above 0.5 -> all 3; row 1 one above -> the top 2; row 2
    # (only 3 masked) none above -> its top 2 masked
    got = rule.select(_state(conf, masked))
    assert got.tolist() == [[True, True, False, True], [True, True, False, False], [False, True, True, False]]
    # strictly above: a probability equal to the threshold does not count
    assert rule.select(_state([[0.5, 0.5, 0.1, 0.1]], [[True] * 4])).tolist() == [[True, True, False, False]]
    # the counts come from the block length: block 4 over 3 steps asks 2, 1, 1, whatever is masked
    three = get_policy("llada2_threshold", threshold=0.99).bind(RunSettings(block_length=4, steps_per_block=3))
    state = _state([[0.9, 0.8, 0.7, 0.6]], [[False, True, True, True]], step=0, k=[1])
    assert three.select(state).tolist() == [[False, True, True, False]]
    assert three.select(_state([[0.9, 0.8, 0.7, 0.6]], [[False, True, True, True]], step=1)).sum() == 1


def test_sdar_static_rule_is_top_count_only():
    from l2pd_eval.policies.base import RunSettings

    static = get_policy("sdar_threshold").bind(RunSettings(block_length=4, steps_per_block=4))
    assert static.threshold == 1.0 and "threshold" in policy_params("sdar_threshold")
    assert static.select(_state([[0.999, 0.998, 0.2, 0.1]], [[True] * 4])).tolist() == [[True, False, False, False]]


@pytest.mark.slow
@pytest.mark.parametrize("family, policy", [("llada2_moe", "llada2_threshold"), ("sdar", "sdar_threshold")])
def test_stock_lm_eval_cli_runs_gsm8k_on_a_tiny_checkpoint(tmp_path, family, policy):
    from l2pd_eval.model.tiny import write_tiny

    root = Path(__file__).resolve().parents[1]
    tiny = write_tiny(family, tmp_path / "tiny", seed=0)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
           f"pretrained={tiny},block_length=8,policy={policy},cache=block,eotp=block_end,batch_size=2",
           "--tasks", "gsm8k_l2pd_256", "--limit", "2", "--output_path", str(tmp_path / "out")]
    env = {**os.environ, DATA_DIR_ENV: str(root / "tests" / "fixtures" / "tasks")}
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    man = json.loads(next((tmp_path / "out").rglob("l2pd_*.json")).read_text())["manifest"]
    assert (man["family"], man["policy"], man["cache"], man["attention"]) == (family, policy, "block", "block_causal")
    at = cmd.index("--model_args") + 1
    bad = subprocess.run([*cmd[:at], cmd[at].replace("block_length=8", "block_length=16"), *cmd[at + 1:]], cwd=root,
                         capture_output=True, text=True, timeout=900, env=env)
    assert bad.returncode != 0 and "block_length=16: " in bad.stderr and "pass block_length=8" in bad.stderr


def test_the_adapter_batches_prompts_of_one_grid_together():
    from l2pd_eval.harness.lm_eval_model import plan_batches

    keys, lengths = [(256, 0.0)] * 6, [13, 8, 5, 16, 21, 10]
    assert plan_batches(keys, lengths, lambda key: 2) == [[4, 3], [0, 5], [1, 2]]  # by length only
    by_grid = plan_batches(keys, lengths, lambda key: 2, grid=8)  # 13, 5, 21 = 5 mod 8; 8, 16 = 0; 10 = 2
    assert by_grid == [[3, 1], [5], [4, 0], [2]]
    assert all(len({lengths[i] % 8 for i in batch}) == 1 for batch in by_grid)
