"""LLaDA-MoE's own: its forward against the hub modeling code's logits, its checkpoint's key names and
``config.json`` keys, its routing, the grouped-GEMM experts against the dense layer, and what its config
refuses (what every family shares is in tests/test_families.py; decoding in test_llada_moe_engine.py).

``tests/fixtures/llada_moe/{released_like,all_switches}``: ``config.json`` with the hub's key names,
``model.safetensors`` with its checkpoint key names (seeded random float64 weights) and
``reference.safetensors``, the logits and routing of the hub's ``modeling_lladamoe.py`` (dllm's copy, eager
attention) on them, float64; README there says how they were made.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import l2pd_eval.model.attention as attention
from l2pd_eval.family_facts import family_name_of_config_json
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.family import family_of
from l2pd_eval.model.llada_moe import PRESETS, LLaDAMoE, LLaDAMoEConfig, SparseMoE
from l2pd_eval.model.moe import Experts, _padded_grouped, grouped_mm_runs
from l2pd_eval.model.tokenizer import chat_user_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "llada_moe"
ROOT = Path(__file__).resolve().parents[1]
CASES = ("released_like", "all_switches")


def _reference(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / case / "reference.safetensors"))


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_hub_modeling_code(case):
    model = load_model(str(FIXTURES / case), dtype="float64")
    ref = _reference(case)
    torch.testing.assert_close(model(ref["input_ids"]), ref["logits"], rtol=0, atol=1e-6)


def _eager_float32_softmax(q, k, v, mask, enable_gqa=False, split_keys=True):
    """The hub's eager attention: scores in the model dtype, softmax in float32."""
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype) @ v


@pytest.mark.parametrize("case", CASES)
def test_with_the_hubs_float32_attention_softmax_the_logits_are_identical(case, monkeypatch):
    """The remaining 1e-6 is the hub's float32 attention softmax (ours is float64 in a float64 model):
    with it, every other step (rotary tables, norms, routing, expert bias, sums) gives the same bits."""
    monkeypatch.setattr(attention, "cache_attention", _eager_float32_softmax)
    model = load_model(str(FIXTURES / case), dtype="float64")
    ref = _reference(case)
    assert torch.equal(model(ref["input_ids"]), ref["logits"])


@pytest.mark.parametrize("case", CASES)
def test_routing_chooses_the_hubs_experts_with_the_hubs_weights(case, monkeypatch):
    monkeypatch.setattr(attention, "cache_attention", _eager_float32_softmax)  # the same hidden states
    model = load_model(str(FIXTURES / case), dtype="float64")
    ref = _reference(case)
    routes: list[tuple[torch.Tensor, torch.Tensor]] = []
    moe = [m for m in model.modules() if isinstance(m, SparseMoE)]
    hooks = [m.experts.register_forward_hook(lambda mod, args, out: routes.append(args[1:])) for m in moe]
    model(ref["input_ids"])
    for h in hooks:
        h.remove()
    assert len(routes) == len(moe) == sum(1 for k in ref if k.startswith("topk_experts"))
    for i, (weights, experts) in enumerate(routes):
        assert torch.equal(experts, ref[f"topk_experts_layer{i}"])
        if case == "released_like":  # no expert bias: the weights are the float32 softmax's top-k
            assert torch.equal(weights, ref[f"topk_weights_layer{i}"].double())


def test_the_checkpoint_holds_the_released_key_names():
    state = load_file(str(FIXTURES / "all_switches" / "model.safetensors"))
    cfg = json.loads((FIXTURES / "all_switches" / "config.json").read_text())
    layer = "model.layers.1."
    expected_moe = {f"{layer}{n}" for n in (
        "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate.weight", "mlp.expert_bias",
        *(f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")),
        *(f"mlp.experts.{j}.{p}.weight" for j in range(cfg["num_experts"]) for p in ("gate_proj", "up_proj", "down_proj")),
        *(f"shared_expert.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")))}
    assert {k for k in state if k.startswith(layer)} == expected_moe
    assert {k for k in state if k.startswith("model.layers.0.mlp.")} == {
        f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}  # the dense layer
    model = load_model(str(FIXTURES / "all_switches"), dtype="float64")
    saved = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_sharded_release_layout_loads_identically(tmp_path):
    src = FIXTURES / "released_like"
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    shards = {f"model-{j + 1:05d}-of-00003.safetensors": names[j::3] for j in range(3)}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    ids = _reference("released_like")["input_ids"]
    assert torch.equal(load_model(str(tmp_path), dtype="float64")(ids), load_model(str(src), dtype="float64")(ids))


@pytest.mark.parametrize("raw", [
    {"architectures": ["LLaDAMoEModelLM"], "model_type": "llada"},   # the hub's config.json
    {"architectures": ["LLaDAMoEModelLM"], "model_type": "lladamoe"},  # dllm's edited copies
    {"model_type": "lladamoe"},
])
def test_its_config_json_is_told_from_llada_8bs_by_architectures(raw):
    assert family_name_of_config_json(raw) == "llada_moe"
    if raw.get("model_type") == "llada":
        assert family_name_of_config_json({**raw, "architectures": ["LLaDAModelLM"]}) == "llada"


def test_the_released_shape_has_its_parameter_count_and_ids_without_a_tokenizer():
    with torch.device("meta"):
        model = LLaDAMoE(LLaDAMoEConfig.from_dict(PRESETS["llada-moe-7b"]))
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e9 - 7.36) < 0.005  # "7.36B total" of the released checkpoint
    cfg = model.config
    expert = 3 * cfg.hidden_size * cfg.expert_intermediate_size
    active = total - cfg.n_layers * (cfg.num_experts - cfg.num_experts_per_tok) * expert
    assert abs((active - 2 * cfg.vocab_size * cfg.hidden_size) / 1e9 - 1.07) < 0.01  # "A1B": active, no embeddings
    special = SpecialIds.resolve(None, cfg)
    assert (special.mask, special.eos) == (156895, 156892)  # the family's mask id: no config file has one


def test_the_tiny_tokenizer_speaks_the_role_template(family_moe):
    tok = load_tokenizer(family_moe)
    text = chat_user_prompt(tok, "Hi")
    assert text == "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"


@pytest.fixture(scope="module")
def family_moe(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny

    return write_tiny("llada_moe", tmp_path_factory.mktemp("tiny-llada-moe"), seed=0)


def _routed(t: int, d: int, e: int, k: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    experts = Experts(e, d, 2 * d).to(dtype)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) * 0.3)
    x = torch.randn(t, d, generator=g, dtype=torch.float64).to(dtype)
    choice = torch.rand(t, e, generator=g).argsort(-1)[:, :k]
    choice[: t // 2] = torch.arange(k)  # half the tokens on the same k experts; some experts get none
    weights = torch.rand(t, k, generator=g, dtype=torch.float64).to(dtype)
    return experts, x, weights, choice


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_grouped_experts_equal_the_dense_layer(dtype, atol):
    experts, x, weights, choice = _routed(t=24, d=16, e=8, k=2, dtype=dtype)
    assert grouped_mm_runs(x, experts.gate_up) is (dtype == torch.float32)  # float64: the padded fallback
    with torch.no_grad():
        grouped, dense = experts(x, weights, choice), experts.dense(x, weights, choice)
    torch.testing.assert_close(grouped, dense, rtol=0, atol=atol)


def test_the_padded_fallback_equals_torchs_grouped_mm():
    experts, x, _, choice = _routed(t=20, d=16, e=8, k=2, dtype=torch.float32, seed=3)
    flat = choice.flatten()
    order = flat.argsort(stable=True)
    ends = torch.searchsorted(flat[order], torch.arange(8), right=True).to(torch.int32)
    rows = x[order // 2]
    with torch.no_grad():
        grouped = torch._grouped_mm(rows, experts.gate_up.transpose(1, 2), offs=ends)
        torch.testing.assert_close(_padded_grouped(rows, experts.gate_up, ends), grouped, rtol=0, atol=1e-5)


def test_a_row_of_a_batch_routes_as_it_does_alone():
    model = load_model(str(FIXTURES / "released_like"), dtype="float64")
    ids = _reference("released_like")["input_ids"]
    both = model(ids)
    for row in range(ids.shape[0]):
        torch.testing.assert_close(model(ids[row:row + 1])[0], both[row], rtol=0, atol=1e-12)


@pytest.mark.parametrize("change, message", [
    ({"moe_router_score_function": "sigmoid"}, r"moe_router_score_function='sigmoid' is not supported"),
    ({"moe_layer_freq": [1]}, r"moe_layer_freq=\[1\] must hold one 0 \(dense\) or 1 \(MoE\) per layer \(2 layers\)"),
    ({"partial_rotary_factor": 0.2}, r"partial_rotary_factor=0.2 must give an even number of rotary dims"),
    ({"shared_expert_intermediate_size": -1}, r"shared_expert_intermediate_size=-1; use null for no shared expert"),
    ({"num_experts_per_tok": 9}, r"num_experts_per_tok=9 must be in 1..num_experts=8"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling=.* is not supported"),
])
def test_a_config_it_would_compute_differently_is_refused(change, message):
    raw = json.loads((FIXTURES / "released_like" / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        LLaDAMoEConfig.from_dict({**raw, **change})


def test_its_family_entry():
    model = load_model("random:llada-moe-tiny")
    entry = family_of(model.config)
    assert entry.name == "llada_moe" and entry.attention == "bidirectional" and model.logit_shift == 0
    assert entry.architectures == ("LLaDAMoEModelLM",) and entry.model_types == ("llada", "lladamoe")


@pytest.mark.slow
def test_make_tiny_writes_the_released_layout(tmp_path):
    make = [sys.executable, "-m", "l2pd_eval.cli", "make-tiny", str(tmp_path / "moe"), "--family", "llada_moe"]
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    raw = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert (raw["model_type"], raw["architectures"]) == ("llada", ["LLaDAMoEModelLM"])
    names = set(load_file(str(tmp_path / "moe" / "model.safetensors")))
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in names and "lm_head.weight" in names


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_a_task_on_a_tiny_llada_moe(family_moe, tmp_path):
    cmd = [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
           f"pretrained={family_moe},gen_length=16,block_length=8,policy=threshold,threshold=0.5,cache=dual,"
           "eotp=true,batch_size=2", "--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke",
           "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert "exact_match,none" in res["results"]["l2pd_smoke"]
    man = json.loads(next(tmp_path.rglob("l2pd_*.json")).read_text())["manifest"]
    tok = load_tokenizer(family_moe)
    ends = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|role_end|>")]
    assert (man["family"], man["policy"], man["cache"], man["eot_ids"]) == ("llada_moe", "threshold", "dual", ends)
