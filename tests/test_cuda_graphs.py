"""CUDA-graph replay of the cached steps (``cuda_graph=true``, prefix and dual caches) is bit-identical to
eager decoding, also for padded batches, EoTP cuts and rows that leave a block early. Needs a CUDA device:
skipped in CPU CI, run on the GPU machine (docs/benchmarks.md gives the command)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from end_at_policy import EndAt

from l2pd_eval.caches import (
    PrefixCache,
    StepInput,
    available,
    cache_class,
    exact_rows,
    graph_replay,
    make_strategy,
    row_bucket,
)
from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.policies import Policy, get_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
GRAPHED = [c for c in available() if cache_class(c).cuda_graphs]


@pytest.fixture(scope="module")
def cuda_tiny(tiny_dir):
    model = load_model(str(tiny_dir), dtype="float32", device="cuda")
    return model, SpecialIds.resolve(load_tokenizer(tiny_dir), model.config)


@pytest.fixture(scope="module")
def ragged_prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(10, 200, (n,), generator=gen).tolist() for n in (5, 17, 3, 11)]


def _policy(name: str, special: SpecialIds) -> Policy:
    if name == "end_at":
        return EndAt([40, 9, 63, 25], special.eos)
    if name == "threshold":  # low enough that rows commit different counts and leave blocks at different steps
        return get_policy("threshold", threshold=0.02)
    return get_policy(name)


@pytest.fixture(scope="module")
def cuda_dream(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny_dream

    directory = write_tiny_dream(tmp_path_factory.mktemp("tiny-dream"))
    model = load_model(str(directory), dtype="float32", device="cuda")
    return model, SpecialIds.resolve(load_tokenizer(directory), model.config)


@pytest.mark.parametrize("cache", GRAPHED)
@pytest.mark.parametrize("policy", ["low_confidence", "threshold", "end_at"])
def test_graph_replay_decodes_exactly_like_eager(cuda_tiny, ragged_prompts, cache, policy):
    _graph_equals_eager(*cuda_tiny, ragged_prompts, cache, policy)


@pytest.mark.parametrize("cache", GRAPHED)
@pytest.mark.parametrize("policy", ["entropy", "threshold", "end_at"])
def test_graph_replay_on_dream_decodes_exactly_like_eager(cuda_dream, ragged_prompts, cache, policy):
    """Dream's graphs replay a chunk that starts one position before the block (shifted logits)."""
    _graph_equals_eager(*cuda_dream, ragged_prompts, cache, policy)


def _graph_equals_eager(model, special, ragged_prompts, cache, policy):
    kw = dict(gen_length=64, block_length=16, cache=cache, eotp="committed" if policy == "end_at" else "false")
    eager = generate(model, ragged_prompts, GenerationConfig(**kw), _policy(policy, special), special)
    graph = generate(model, ragged_prompts, GenerationConfig(**kw), _policy(policy, special), special,
                     speed=SpeedConfig(cuda_graph=True))
    assert torch.equal(eager.sequences, graph.sequences)
    assert [s.committed_per_step for s in eager.stats] == [s.committed_per_step for s in graph.stats]
    assert [s.positions for s in eager.stats] == [s.positions for s in graph.stats]
    if policy == "end_at":
        assert len({s.nfe for s in graph.stats}) > 1  # rows really left at different times


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_graphs_are_captured_once_per_shape_and_replayed(cuda_tiny, cache):
    model, _ = cuda_tiny
    torch.manual_seed(0)
    n, total = 3, 48
    x = torch.randint(0, model.config.vocab_size, (n, total), device="cuda")
    pos = torch.arange(total, device="cuda").expand(n, total)
    mask = torch.ones(n, total, dtype=torch.bool, device="cuda")
    mask[0, :4] = False  # a padded row
    eager, graphed = make_strategy(cache, model, n, total), make_strategy(cache, model, n, total, cuda_graph=True)
    assert type(graphed) is graph_replay(cache_class(cache))
    for block in ((16, 24), (24, 32)):
        for key_mask in (None, mask):
            outs = []
            for strat in (eager, graphed):
                strat.logits(StepInput(x, pos, key_mask, block, total, step=0))
                cost = strat.positions
                steps = []
                for _ in range(3):
                    steps.append(strat.logits(StepInput(x, pos, key_mask, block, total, step=1)))
                    cost += strat.positions
                outs.append((steps, cost))
            (e_steps, e_cost), (g_steps, g_cost) = outs
            assert all(torch.equal(e, g) for e, g in zip(e_steps, g_steps, strict=True))
            assert e_cost == g_cost  # replays report the positions they compute, padding rows nothing extra
    # one graph per (rows, length, chunk width, masked): dual reuses its two across blocks, prefix needs new ones
    assert len(graphed._graphs) == (2 if cache == "dual" else 4)
    assert all(g.graph is not None for g in graphed._graphs.values())  # each shape ran 3 times: recorded


def test_a_shape_met_once_is_run_eagerly_and_not_recorded(cuda_tiny):
    model, _ = cuda_tiny
    x = torch.randint(0, model.config.vocab_size, (1, 64), device="cuda")
    pos = torch.arange(64, device="cuda").expand(1, 64)
    strat = make_strategy("prefix", model, 1, 64, cuda_graph=True)
    eager = make_strategy("prefix", model, 1, 64)
    for bs in (16, 24, 32):  # one cached step per block, as threshold or Learn2PD often take
        outs = []
        for st in (strat, eager):
            st.logits(StepInput(x, pos, None, (bs, bs + 8), 64, step=0))
            outs.append(st.logits(StepInput(x, pos, None, (bs, bs + 8), 64, step=1)))
        assert torch.equal(*outs)
    assert len(strat._graphs) == 3 and all(g.graph is None for g in strat._graphs.values())
    again = strat.logits(StepInput(x, pos, None, (32, 40), 64, step=1))  # second step of the last shape
    # keyed by (rows, length, width, masked, ...): the chunk's other facts follow
    recorded = [g for key, g in strat._graphs.items() if key[:4] == (1, 64, 32, False)]
    assert len(recorded) == 1 and recorded[0].graph is not None
    assert torch.equal(again, eager.logits(StepInput(x, pos, None, (32, 40), 64, step=1)))


def test_a_dropped_strategy_is_freed_at_once(cuda_tiny):
    """No reference cycle through the recorded steps: the KV buffer (GBs at batch 16) goes when generate()
    drops its strategy, not whenever the garbage collector runs (a benchmark ran out of memory on that)."""
    model, _ = cuda_tiny
    x = torch.randint(0, model.config.vocab_size, (2, 48), device="cuda")
    pos = torch.arange(48, device="cuda").expand(2, 48)
    gc.collect()
    gc.disable()
    try:
        strat = make_strategy("dual", model, 2, 48, cuda_graph=True)
        strat.logits(StepInput(x, pos, None, (16, 24), 48, step=0))
        for _ in range(3):  # eager, recorded, replayed
            strat.logits(StepInput(x, pos, None, (16, 24), 48, step=1))
        assert next(iter(strat._graphs.values())).graph is not None
        ref = weakref.ref(strat)
        del strat
        assert ref() is None
    finally:
        gc.enable()


def test_graph_count_is_bounded(cuda_tiny):
    model, _ = cuda_tiny
    x = torch.randint(0, model.config.vocab_size, (1, 96), device="cuda")
    pos = torch.arange(96, device="cuda").expand(1, 96)
    strat = make_strategy("prefix", model, 1, 96, cuda_graph=True)
    strat.max_graphs = 4
    for bs in range(0, 96, 8):  # twelve blocks, a new chunk width each
        strat.logits(StepInput(x, pos, None, (bs, bs + 8), 96, step=0))
        strat.logits(StepInput(x, pos, None, (bs, bs + 8), 96, step=1))
        strat.logits(StepInput(x, pos, None, (bs, bs + 8), 96, step=1))
    assert sorted(k[2] for k in strat._graphs) == [8, 16, 24, 32]  # the chunks of the four latest blocks


@pytest.mark.parametrize("graph_rows, shapes", [(row_bucket, [4, 8]), (exact_rows, [3, 5, 6, 8])])
def test_rows_leaving_a_block_reuse_the_bucket_graph(cuda_tiny, graph_rows, shapes):
    """Rows finishing one by one pad up to a row bucket (8, then 4 here): two captures, not one per row count
    (what ``graph_rows=exact_rows`` does), and the real rows' logits stay identical to eager ones."""
    model, _ = cuda_tiny
    torch.manual_seed(2)
    total, block = 40, (16, 24)
    x = torch.randint(0, model.config.vocab_size, (8, total), device="cuda")
    pos = torch.arange(total, device="cuda").expand(8, total)
    eager = make_strategy("dual", model, 8, total)
    graphed = make_strategy("dual", model, 8, total, cuda_graph=True, graph_rows=graph_rows)
    for strat in (eager, graphed):
        strat.logits(StepInput(x, pos, None, block, total, step=0))
    rows = torch.arange(8, device="cuda")
    for keep in (None, [0, 1, 2, 4, 6, 7], [0, 2, 3, 4, 5], [0, 2, 4]):  # 8, 6, 5, 3 rows: buckets 8, 8, 8, 4
        if keep is not None:
            idx = torch.tensor(keep, device="cuda")
            rows = rows[idx]
            for strat in (eager, graphed):
                strat.keep(idx)
        for _ in range(3):  # eager, record + replay, replay
            e, g = (s.logits(StepInput(x[rows], pos[rows], None, block, total, step=1)) for s in (eager, graphed))
            assert torch.equal(e, g)
    assert sorted(k[0] for k in graphed._graphs) == shapes


def test_prefix_width_buckets_share_one_graph_across_blocks(cuda_tiny):
    """Batch 1, chunks padded to multiples of 16: four blocks (widths 48, 40, 32, 24) need two graphs, not
    four, and each replay equals the eager step on the same padded chunk."""
    model, _ = cuda_tiny
    torch.manual_seed(4)
    total = 64
    x = torch.randint(0, model.config.vocab_size, (1, total), device="cuda")
    pos = torch.arange(total, device="cuda").expand(1, total)
    graphed = make_strategy("prefix", model, 1, total, cuda_graph=True, graph_width_bucket=16)
    eager = PrefixCache(model, 1, total, width_bucket=16)
    exact = make_strategy("prefix", model, 1, total)
    for bs in (16, 24, 32, 40):
        block = (bs, bs + 8)
        outs = []
        for strat in (graphed, eager, exact):
            strat.logits(StepInput(x, pos, None, block, total, step=0))
            outs.append([strat.logits(StepInput(x, pos, None, block, total, step=1)) for _ in range(3)])
        assert all(torch.equal(g, e) for g, e in zip(outs[0], outs[1], strict=True))
        torch.testing.assert_close(outs[0][2], outs[2][2], rtol=1e-4, atol=1e-4)  # padding: rounding only
    assert sorted(k[2] for k in graphed._graphs) == [32, 48]
    assert all(g.graph is not None for g in graphed._graphs.values())


@pytest.mark.parametrize("family", ["cuda_tiny", "cuda_dream"])
def test_batch_one_prefix_decodes_with_width_buckets_like_exact_widths(request, family, ragged_prompts):
    """generate() pads the prefix chunk at batch 1 with graphs (graph_width_bucket); the answer is the one
    exact widths give (padding changes float rounding only, far below this model's logit gaps). Dream's
    chunk starts a position before the block (shifted logits)."""
    model, special = request.getfixturevalue(family)
    cfg = GenerationConfig(gen_length=64, block_length=16, cache="prefix")
    for prompt in ragged_prompts[:2]:
        runs = [generate(model, [prompt], cfg, get_policy("low_confidence"), special,
                         speed=SpeedConfig(cuda_graph=True, graph_width_bucket=w)) for w in (32, 0)]
        assert torch.equal(runs[0].sequences, runs[1].sequences)
        assert runs[0].stats[0].positions == runs[1].stats[0].positions
