"""LLaDA's Monte-Carlo log-likelihood: exactness of the weighting, ranking on a trained model, batching
invariance, greedy check against the engine, and a multiple-choice task through lm-eval."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.harness.loglikelihood import (
    LoglikelihoodConfig,
    encode_pair,
    greedy_matches,
    loglikelihood,
    mc_loglikelihood,
    sample_masks,
)

ROOT = Path(__file__).resolve().parents[1]
MC_DIR = ROOT / "tests" / "fixtures" / "mc"


def _rows() -> list[dict]:
    return [json.loads(line) for line in (MC_DIR / "mc.jsonl").read_text().splitlines() if line.strip()]


def _exact_logprob(model, context: list[int], token_pos_ids: list[int], masked_at: tuple[int, ...], mask_id: int):
    """log p of each masked continuation token, continuation masked at ``masked_at`` (indices into it)."""
    seq = [*context, *token_pos_ids]
    noisy = list(seq)
    for j in masked_at:
        noisy[len(context) + j] = mask_id
    logp = torch.log_softmax(model(torch.tensor([noisy]))[0].double(), dim=-1)
    return [float(logp[len(context) + j, seq[len(context) + j]]) for j in masked_at]


# -- the weighting is exact ----------------------------------------------------------------------------

def test_one_token_continuation_equals_the_exact_log_prob(tiny, prompts):
    model, _, special = tiny
    pairs = [(p[:-1], [p[-1]]) for p in prompts] + [(prompts[0], [prompts[2][3]])]
    got = loglikelihood(model, pairs, special.mask, LoglikelihoodConfig(mc_num=16, mc_batch_size=8))
    for (ctx, cont), (value, _) in zip(pairs, got, strict=True):
        exact = _exact_logprob(model, ctx, cont, (0,), special.mask)[0]
        assert value == pytest.approx(exact, rel=1e-12, abs=1e-12)
        assert value < 0


def test_three_token_estimate_converges_to_the_enumerated_bound(tiny, prompts):
    """For L=3 the bound is a finite sum over the 7 masked subsets; the estimate must land within 5 sigma."""
    model, _, special = tiny
    ctx, cont = prompts[0][:5], prompts[2][:3]
    L, n = len(cont), 3000
    exact, var_sum = 0.0, 0.0
    for count in range(1, L + 1):
        values = [L / count * -sum(_exact_logprob(model, ctx, cont, s, special.mask))
                  for s in itertools.combinations(range(L), count)]
        mean = sum(values) / len(values)
        exact -= mean / L  # l is uniform on 1..L; the subset uniform among those of size l
        var_sum += (n / L) * sum((v - mean) ** 2 for v in values) / len(values)
    sigma = math.sqrt(var_sum) / n  # stratified: exactly n / L samples per mask count
    assert sigma > 0  # the subsets really differ, so this is a statistical test, not a tautology
    (est, _), = loglikelihood(model, [(ctx, cont)], special.mask, LoglikelihoodConfig(mc_num=n, mc_batch_size=500))
    assert abs(est - exact) < 5 * sigma + 1e-9, (est, exact, sigma)


def test_mask_counts_are_stratified_and_masks_uniform():
    gen = torch.Generator().manual_seed(3)
    counts, masks = sample_masks(length=5, mc_num=4000, generator=gen)
    assert torch.equal(masks.sum(dim=1), counts)
    assert torch.bincount(counts, minlength=6)[1:].tolist() == [800] * 5  # exactly mc_num / L each
    freq = masks.double().mean(dim=0)  # every position equally likely: E[l] / L = 3 / 5
    assert torch.allclose(freq, torch.full((5,), 0.6, dtype=torch.float64), atol=0.03)


# -- a trained model ranks the right continuation first ------------------------------------------------

def _train_pattern_model(path: Path, steps: int = 200, seed: int = 0) -> Path:
    """A tiny LLaDA trained with the masked-diffusion objective to answer the three fixture questions."""
    from l2pd_eval.model import LLaDA, LLaDAConfig, save_model
    from l2pd_eval.model.tokenizer import build_tokenizer

    rows = _rows()
    corpus = [f"{r['question']} {c}" for r in rows for c in r["choices"]]
    tok = build_tokenizer(corpus, vocab_size=300)
    mask_id = tok.convert_tokens_to_ids("<|mdm_mask|>")
    cfg = LLaDAConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, vocab_size=len(tok),
                      embedding_size=len(tok), max_sequence_length=64, rope_theta=10000.0, mask_token_id=mask_id,
                      eos_token_id=tok.eos_token_id, init_std=0.05)
    torch.manual_seed(seed)
    model = LLaDA(cfg)
    model.init_weights(seed)
    pairs = [encode_pair(tok, r["question"], " " + r["choices"][r["label"]]) for r in rows]
    width = max(len(c) + len(y) for c, y in pairs)
    ids = torch.full((len(pairs), width), tok.eos_token_id)
    answer = torch.zeros(len(pairs), width, dtype=torch.bool)
    for i, (c, y) in enumerate(pairs):
        ids[i, :len(c) + len(y)] = torch.tensor([*c, *y])
        answer[i, len(c):len(c) + len(y)] = True
    ids, answer = ids.repeat(8, 1), answer.repeat(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t = 0.05 + 0.95 * torch.rand(ids.shape[0], 1, generator=gen)
        masked = answer & (torch.rand(ids.shape, generator=gen) < t)
        logits = model(torch.where(masked, mask_id, ids))
        ce = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(ids)
        loss = (ce * masked / t).sum() / answer.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(model, path, tokenizer=tok)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    return _train_pattern_model(tmp_path_factory.mktemp("mc-llada"))


@pytest.fixture(scope="module")
def trained(trained_dir):
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer

    model = load_model(str(trained_dir), dtype="float32")
    tok = load_tokenizer(trained_dir)
    return model, tok, SpecialIds.resolve(tok, model.config)


def test_trained_model_ranks_the_right_continuation_first(trained):
    model, tok, special = trained
    rows = _rows()
    pairs = [encode_pair(tok, r["question"], " " + c) for r in rows for c in r["choices"]]
    out = loglikelihood(model, pairs, special.mask, LoglikelihoodConfig(mc_num=32, mc_batch_size=16))
    for k, row in enumerate(rows):
        scores = [out[3 * k + j][0] for j in range(3)]
        greedy = [out[3 * k + j][1] for j in range(3)]
        right = row["label"]
        # every question offers the same three words: the ranking must come from reading the question
        assert max(range(3), key=scores.__getitem__) == right, scores
        assert all(scores[right] > scores[j] + 2.0 for j in range(3) if j != right), scores
        assert greedy == [j == right for j in range(3)]


# -- determinism, batching, truncation -----------------------------------------------------------------

def test_results_do_not_depend_on_batching_order_or_repetition(tiny, prompts):
    model, _, special = tiny
    a, b, c = prompts
    pairs = [(a, b[:4]), (c[:7], a[2:9]), ([], b[:3]), (a, b[:4][::-1]), (c, [a[0]]), (b, c[:2])]
    base = LoglikelihoodConfig(mc_num=8, mc_batch_size=4, seed=7)
    ref = mc_loglikelihood(model, pairs, special.mask, base)
    assert ref == mc_loglikelihood(model, pairs, special.mask, base)
    perm = list(range(len(pairs)))
    random.Random(0).shuffle(perm)
    for bs in (16, 5, 1):  # 16 and 5 put rows of several requests (different lengths) into one forward pass
        cfg = LoglikelihoodConfig(mc_num=8, mc_batch_size=bs, seed=7)
        shuffled = mc_loglikelihood(model, [pairs[i] for i in perm], special.mask, cfg)
        unshuffled = [0.0] * len(pairs)
        for pos, i in enumerate(perm):
            unshuffled[i] = shuffled[pos]
        assert unshuffled == pytest.approx(ref, rel=1e-10)
    other = mc_loglikelihood(model, pairs, special.mask, LoglikelihoodConfig(mc_num=8, mc_batch_size=4, seed=8))
    assert other[1] != pytest.approx(ref[1], rel=1e-6)  # the seed really drives the masks (L=7 request)


def test_contexts_are_left_truncated_to_the_model_length(tiny, prompts):
    model, _, special = tiny
    ctx, cont = prompts[2], prompts[0][:3]
    cfg = LoglikelihoodConfig(mc_num=4, mc_batch_size=4, max_length=10)
    (cut, _), = loglikelihood(model, [(ctx, cont)], special.mask, cfg)
    (manual, _), = loglikelihood(model, [(ctx[-7:], cont)], special.mask, cfg)
    assert cut == manual
    with pytest.raises(ValueError, match="continuation of 12 tokens exceeds the model's max_sequence_length=10"):
        loglikelihood(model, [(ctx, prompts[2][:12])], special.mask, cfg)
    with pytest.raises(ValueError, match="mc_num=0 must be a positive integer"):
        LoglikelihoodConfig(mc_num=0)


def test_greedy_check_agrees_with_the_engines_one_token_per_step_decode(tiny, prompts):
    from l2pd_eval.engine import GenerationConfig, generate
    from l2pd_eval.policies import get_policy

    model, _, special = tiny
    L = 6
    decoded = generate(model, prompts, GenerationConfig(gen_length=L, block_length=L), get_policy("low_confidence"),
                       special).tokens.tolist()
    wrong = [d[:-1] + [(d[-1] + 1) % 100] for d in decoded]
    pairs = [(p, d) for p, d in zip(prompts, decoded, strict=True)] + [(p, w) for p, w in zip(prompts, wrong, strict=True)]
    assert greedy_matches(model, pairs, special.mask, batch_size=2) == [True] * 3 + [False] * 3


# -- through lm-eval -----------------------------------------------------------------------------------

def test_lm_eval_multiple_choice_task_scores_the_trained_model(trained_dir, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    lm = Learn2PDLM(pretrained=str(trained_dir), mc_num=16, mc_batch_size=16, progress=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["l2pd_mc"], task_manager=TaskManager(include_path=str(MC_DIR), include_defaults=False),
                                  log_samples=True)
    res = out["results"]["l2pd_mc"]
    assert res["acc,none"] == 1.0 and res["acc_norm,none"] == 1.0
    samples = sorted(out["samples"]["l2pd_mc"], key=lambda s: s["doc_id"])
    rows = _rows()
    pairs = [encode_pair(lm.tokenizer, r["question"], " " + c) for r in rows for c in r["choices"]]
    direct = loglikelihood(lm.model, pairs, lm.special.mask, LoglikelihoodConfig(mc_num=16, mc_batch_size=16))
    logged = [tuple(resp[0]) for s in samples for resp in s["resps"]]
    assert [float(v) for v, _ in logged] == pytest.approx([v for v, _ in direct], rel=1e-6)


def test_adapter_renders_the_chat_template_for_instruct_models(tiny_dir, tmp_path):
    from lm_eval.api.instance import Instance

    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    instruct = tmp_path / "Tiny-Instruct"
    instruct.symlink_to(tiny_dir, target_is_directory=True)
    req = [Instance("loglikelihood", {}, ("What is 2+2?", " 4"), 0)]
    chat = Learn2PDLM(pretrained=str(instruct), mc_num=4, mc_batch_size=4, progress=False)
    rendered = chat.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    ctx, cont = encode_pair(chat.tokenizer, rendered, " 4", move_whitespace=False)
    assert chat.tokenizer.decode(ctx).endswith("assistant<|end_header_id|>\n\n")
    cfg = LoglikelihoodConfig(mc_num=4, mc_batch_size=4)
    assert chat.loglikelihood(req) == loglikelihood(chat.model, [(ctx, cont)], chat.special.mask, cfg)
    plain = Learn2PDLM(pretrained=str(tiny_dir), mc_num=4, mc_batch_size=4, progress=False)
    ctx, cont = encode_pair(plain.tokenizer, "What is 2+2?", " 4")
    assert plain.loglikelihood(req) == loglikelihood(plain.model, [(ctx, cont)], plain.special.mask, cfg)
    with pytest.raises(ValueError, match="mc_batch_size=0 must be a positive integer"):
        Learn2PDLM(pretrained=str(tiny_dir), mc_batch_size=0, progress=False).loglikelihood(req)
