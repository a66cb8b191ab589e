"""Forward strategies on the CPU: the registry and its one list of names, each strategy's exactness, work and
declared capabilities, the prefix cache's width buckets, and a strategy added from a test (what adding a
cache to the package takes: a class in caches/ and its tests)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from policy_cases import POLICIES, assert_batched_equals_alone, make

from l2pd_eval.caches import (
    CacheParams,
    GraphReplay,
    NoCache,
    PrefixCache,
    StepInput,
    available,
    cache_class,
    graph_replay,
    make_strategy,
    register,
    registry,
    row_bucket,
)
from l2pd_eval.engine import GenerationConfig, SpeedConfig, generate, rng
from l2pd_eval.engine.memory import bytes_per_row


def _strategy_logits(model, name, x, block):
    """A refreshing step's and a cached step's logits and query positions: counted at the model's input,
    and as the strategy reports them."""
    strat = make_strategy(name, model, x.shape[0], x.shape[1])
    pos = torch.arange(x.shape[1]).expand_as(x)
    computed = []
    hook = model.register_forward_pre_hook(lambda _m, args: computed.append(args[0].numel()))
    try:
        first = strat.logits(StepInput(x, pos, None, block, x.shape[1], step=0))
        reported = [strat.positions]
        later = strat.logits(StepInput(x, pos, None, block, x.shape[1], step=1))
        reported.append(strat.positions)
    finally:
        hook.remove()
    assert reported == computed
    return first, later, computed[0], computed[1]


def test_caches_are_exact_at_refresh_and_skip_the_work_they_claim(family):
    """A shifted family's (Dream's) cached chunk starts one position before the block: one query more per row."""
    model = family.model
    shift = model.logit_shift
    x = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    block = (16, 24)
    ref, again, full_cost, _ = _strategy_logits(model, "none", x, block)
    assert torch.equal(again, ref)
    for name, later_cost in (("prefix", 2 * (40 - 16 + shift)), ("dual", 2 * (8 + shift))):
        first, later, first_cost, cost = _strategy_logits(model, name, x, block)
        assert torch.equal(first, ref)  # the refreshing step is a full forward: bit-identical
        assert (first_cost, cost) == (full_cost, later_cost) and full_cost == 2 * 40
        assert cost == 2 * cache_class(name).step_queries(block, 40, shift)  # the cost model benches use
        torch.testing.assert_close(later, ref, rtol=0, atol=1e-10)  # nothing changed: cache is exact too


def test_a_chunk_from_the_block_keeps_the_refreshs_predecessor(family):
    """``first_committed`` (the cached steps of a ``refresh_commit`` policy): a shifted family's chunk starts at
    the block itself, as Fast-dLLM's Dream block sampler's does, so the position before the block keeps the
    refresh's keys and values: one query fewer per row; with nothing changed since the refresh the block's
    later positions get the full forward's predictions; the first row, committed and never read, repeats the
    second. A family without a shift computes exactly what it did."""
    model, shift = family.model, family.model.logit_shift
    x = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(40).expand_as(x)
    block = (16, 24)
    ref = make_strategy("none", model, 2, 40).logits(StepInput(x, pos, None, block, 40, step=0))
    for name in ("prefix", "dual"):
        strat = make_strategy(name, model, 2, 40)
        strat.logits(StepInput(x, pos, None, block, 40, step=0))
        later = strat.logits(StepInput(x, pos, None, block, 40, step=1, first_committed=True))
        start, end = cache_class(name).chunk(block, 40, shift, first_committed=True)
        assert start == 16 and strat.positions == 2 * (end - start)
        torch.testing.assert_close(later[:, 1:], ref[:, 1:], rtol=0, atol=1e-10)
        if shift:
            assert torch.equal(later[:, 0], later[:, 1])
        else:
            torch.testing.assert_close(later[:, 0], ref[:, 0], rtol=0, atol=1e-10)


def test_registry_lists_the_strategies_once_in_order_and_rejects_unknown_names():
    assert available()[:3] == ["none", "prefix", "dual"] and len(set(available())) == len(available())
    choices = ", ".join(available())
    with pytest.raises(ValueError, match=f"cache='paged' is unknown; valid choices: {choices}$"):
        cache_class("paged")
    with pytest.raises(ValueError, match=f"cache='paged' is unknown; valid choices: {choices}$"):
        GenerationConfig(cache="paged")

    class Other(PrefixCache):
        name = "prefix"

    with pytest.raises(ValueError, match="cache 'prefix' already registered by l2pd_eval.caches.prefix"):
        register(Other)


def test_the_torch_free_results_list_names_the_same_caches():
    from l2pd_eval.results.methods import CACHE_ORDER

    assert list(CACHE_ORDER) == available()


def test_declared_capabilities_are_what_the_strategies_do(family):
    """``logits_after``: logits after the block on request, or a clear error; ``kv_positions``: the KV buffer
    allocated, and what batch sizing counts; ``cuda_graphs``: a graph-replaying class exists."""
    model = family.model
    x = torch.randint(0, model.config.vocab_size - 8, (1, 40), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(40).expand_as(x)
    per_position = 2 * model.config.n_layers * model.config.kv_heads * model.config.head_dim * 8  # float64
    cfg = {name: GenerationConfig(gen_length=16, block_length=8, cache=name) for name in available()}
    for name in available():
        cls, strat = cache_class(name), make_strategy(name, model, 1, 40)
        after = StepInput(x, pos, None, (16, 24), 40, step=0, after=True)
        if cls.logits_after:
            assert strat.logits(after).shape[1] == 40 - 16
        else:
            with pytest.raises(ValueError, match="predictions after the block exist only"):
                strat.logits(after)
        computing = strat.wrapped if cls.inner else strat  # a sequence transform's inner strategy keeps the cache
        kept = computing._buffer.k[0].shape[2] if cls.kv_positions(40) else 0
        assert kept == cls.kv_positions(40) == (0 if (cls.inner or name) == "none" else 40)
        size = bytes_per_row(model, cfg[name], 24) - bytes_per_row(model, cfg["none"], 24)
        assert size == cls.kv_positions(40) * per_position
        graphed = make_strategy(name, model, 1, 40, cuda_graph=True)
        assert cls.cuda_graphs == isinstance(graphed.wrapped if cls.inner else graphed, GraphReplay)


@pytest.mark.parametrize("length", [64, 52])  # the whole sequence, and an EoTP cut 12 positions short
def test_prefix_width_bucket_pads_the_chunk_and_changes_no_logit(family, length):
    model, shift = family.model, family.model.logit_shift
    total = 64
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, model.config.vocab_size - 8, (2, total), generator=gen)
    pos = torch.arange(total).expand(2, total)
    mask = torch.ones(2, total, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded row
    exact, padded = PrefixCache(model, 2, total), PrefixCache(model, 2, total, width_bucket=24)
    assert padded.width_bucket == 24 and padded._buffer.k[0].shape[2] == total + 23  # scratch slots
    widths = []
    for bs in (16, 24, 32, 40):
        block = (bs, bs + 8)
        outs = []
        for strat in (exact, padded):
            steps = [strat.logits(StepInput(x[:, :length], pos[:, :length], mask[:, :length], block, length,
                                            step=step)) for step in range(3)]
            outs.append((steps[1:], strat.positions))
        (e_steps, e_pos), (p_steps, p_pos) = outs
        for e, p in zip(e_steps, p_steps, strict=True):
            torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-12)
        assert p_pos == e_pos == 2 * (length - bs + shift)  # the padding queries are not counted as work
        # the real slots of the cache hold the same keys/values; the padding wrote only past the live length
        for t_e, t_p in zip(exact._buffer.k + exact._buffer.v, padded._buffer.k + padded._buffer.v, strict=True):
            torch.testing.assert_close(t_p[:, :, :length], t_e[:, :, :length], rtol=1e-12, atol=1e-12)
        widths.append(padded._chunk_inputs(StepInput(x[:, :length], pos[:, :length], None, block, length,
                                                     step=1))[0].shape[1])
    # buckets count after the shifted positions before the block (PrefixCache.padded_width)
    assert all((w - shift) % 24 == 0 and w - shift - 24 < length - bs
               for w, bs in zip(widths, (16, 24, 32, 40), strict=True))
    assert len(set(widths)) < len(widths)  # blocks share a width: what lets one CUDA graph serve them


def test_width_buckets_count_from_the_block_so_shifted_chunks_keep_one_width(family):
    """The bucket rounds the chunk's width after the ``logit_shift`` positions before the block: Dream's
    chunks (block + suffix + 1) get 2 x 16 + 1 = 33 for widths 25..33, not 48 (which pads 15 positions onto
    a 33-wide chunk); LLaDA's are unchanged. The logits are the exact-width ones."""
    model, shift = family.model, family.model.logit_shift
    total = 64
    gen = torch.Generator().manual_seed(6)
    x = torch.randint(0, model.config.vocab_size - 8, (1, total), generator=gen)
    pos = torch.arange(total).expand(1, total)
    exact, padded = PrefixCache(model, 1, total), PrefixCache(model, 1, total, width_bucket=16)
    widths = []
    for bs in (32, 40, 48):
        block = (bs, bs + 8)
        outs = [[strat.logits(StepInput(x, pos, None, block, total, step=step)) for step in range(2)][1]
                for strat in (exact, padded)]
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
        widths.append(padded._chunk_inputs(StepInput(x, pos, None, block, total, step=1))[0].shape[1])
    assert widths == [32 + shift, 32 + shift, 16 + shift]  # exact: 32 + shift, 24 + shift, 16 + shift


def test_width_buckets_are_declared_and_only_graphs_at_batch_one_on_cuda_use_them(family):
    model = family.model
    assert cache_class("prefix").width_buckets and not cache_class("dual").width_buckets
    dual = cache_class("dual")(model, 1, 32, width_bucket=16)
    assert dual.width_bucket == 0 and dual._buffer.k[0].shape[2] == 32  # its chunk is always one block
    graphed = make_strategy("prefix", model, 1, 32, cuda_graph=True, graph_width_bucket=16)
    assert type(graphed) is graph_replay(PrefixCache) and graphed.width_bucket == 0  # a CPU model: no padding
    assert make_strategy("prefix", model, 1, 32, graph_width_bucket=16).width_bucket == 0  # eager: exact widths
    with pytest.raises(ValueError, match="graph_width_bucket=-1 must be >= 0"):
        SpeedConfig(graph_width_bucket=-1)


def test_cuda_graph_flag_falls_back_to_eager_steps_off_cuda(family):
    """cuda_graph=True on a CPU model decodes exactly as without it (graphs exist only on CUDA;
    tests/test_cuda_graphs.py checks the replay itself on a GPU)."""
    model, special, prompts = family.model, family.special, family.prompts
    for cache in [c for c in available() if cache_class(c).cuda_graphs]:
        cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=True)
        plain = generate(model, prompts, cfg, make("threshold", threshold=0.3), special)
        graph = generate(model, prompts, cfg, make("threshold", threshold=0.3), special,
                         speed=SpeedConfig(cuda_graph=True))
        assert torch.equal(plain.sequences, graph.sequences)
        assert [s.positions for s in plain.stats] == [s.positions for s in graph.stats]


def test_graph_row_buckets():
    assert [row_bucket(n, 32) for n in (1, 2, 3, 5, 8, 9, 16, 17, 31, 32)] == [1, 2, 4, 8, 8, 16, 16, 24, 32, 32]
    assert row_bucket(11, 12) == 12 and row_bucket(3, 3) == 3  # never more rows than the strategy holds


# -- a strategy added from a test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EveryParams(CacheParams):
    every_interval: int = 2  # refresh every this many steps of a block

    def __post_init__(self) -> None:
        if self.every_interval < 1:
            raise ValueError(f"every_interval={self.every_interval} must be >= 1")


class PrefixEvery(PrefixCache):
    """Test-only: a prefix cache that refreshes every ``every_interval`` steps of a block (dLLM-Cache's
    rhythm), not only at the first. Nothing else: the engine, the batch sizer, graph replay and the model_args
    parser serve it and its parameter unchanged."""

    name = "_prefix_every"
    Params = EveryParams

    def refreshes(self, s: StepInput) -> bool:
        return s.step % self.params.every_interval == 0


@pytest.fixture
def added_cache(monkeypatch):
    """The test strategy registered through the public decorator, for this test only."""
    monkeypatch.setattr(registry.CACHES, "classes", dict(registry.CACHES.classes))
    register(PrefixEvery)
    return PrefixEvery.name


def test_an_added_strategy_is_a_valid_cache_everywhere(added_cache, family):
    model = family.model
    assert available()[-1] == added_cache and available().count(added_cache) == 1
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=added_cache)
    assert cfg.cache_params == {"every_interval": 2}  # every parameter recorded, defaults filled in
    assert bytes_per_row(model, cfg, 24) == bytes_per_row(model, GenerationConfig(gen_length=16, block_length=8,
                                                                                  cache="prefix"), 24)
    graphed = make_strategy(added_cache, model, 2, 40, cuda_graph=True, params={"every_interval": 3})
    assert isinstance(graphed, GraphReplay) and isinstance(graphed, PrefixEvery)
    assert graphed.params == EveryParams(every_interval=3)


def test_cache_parameters_are_coerced_checked_and_listed_like_a_policy_s(added_cache, tiny, tiny_dir):
    from l2pd_eval.harness.model_args import parse_model_args

    assert cache_class(added_cache).parameters() == {"every_interval": int}
    assert GenerationConfig(cache=added_cache, cache_params={"every_interval": "3"}).cache_params == {
        "every_interval": 3}  # text from --model_args, coerced by the field's type
    with pytest.raises(ValueError, match="every_interval=0 must be >= 1"):
        GenerationConfig(cache=added_cache, cache_params={"every_interval": 0})
    with pytest.raises(ValueError, match="every_interval='often' is not an integer"):
        make_strategy(added_cache, tiny[0], 1, 8, params={"every_interval": "often"})
    with pytest.raises(ValueError, match="cache='_prefix_every' does not take interval; valid parameters: "
                                         "every_interval"):
        GenerationConfig(cache=added_cache, cache_params={"interval": 2})
    with pytest.raises(ValueError, match="cache='prefix' does not take every_interval; valid parameters: [(]none[)]"):
        GenerationConfig(cache="prefix", cache_params={"every_interval": 2})
    args, policy = parse_model_args(dict(pretrained=str(tiny_dir), policy="threshold", threshold="0.5",
                                         cache=added_cache, every_interval="4"))
    assert (args.cache_params, policy) == ({"every_interval": 4}, {"threshold": 0.5})
    assert args.generation_config(64, None).cache_params == {"every_interval": 4}
    with pytest.raises(ValueError, match="unknown argument[(]s[)] every_interval for policy='threshold'; valid: "
                                         ".*cache, ") as err:
        parse_model_args(dict(pretrained=str(tiny_dir), policy="threshold", every_interval="4"))
    assert "every_interval" not in str(err.value).split("valid: ")[1]  # cache=none takes none
    with pytest.raises(ValueError, match="unknown argument[(]s[)] interval for policy='threshold'; valid: .*"
                                         "every_interval.*threshold"):
        parse_model_args(dict(pretrained=str(tiny_dir), policy="threshold", cache=added_cache, interval="4"))


def test_the_registry_refuses_parameters_without_defaults(monkeypatch):
    monkeypatch.setattr(registry.CACHES, "classes", dict(registry.CACHES.classes))

    @dataclass(frozen=True)
    class Needs(CacheParams):
        needs_value: int

    class NoDefault(NoCache):
        name = "_no_default"
        Params = Needs

    class NotParams(NoCache):
        name = "_not_params"
        Params = dict

    with pytest.raises(ValueError, match="cache '_no_default': parameter[(]s[)] needs_value need a default"):
        register(NoDefault)
    with pytest.raises(ValueError, match="cache '_not_params': Params must be a dataclass subclassing"):
        register(NotParams)


def test_no_cache_parameter_clashes_with_a_policy_s_or_a_model_arg():
    """One model_args namespace: a cache's parameters are named after it (the parser also refuses a clash)."""
    from l2pd_eval.harness.model_args import ModelArgs
    from l2pd_eval.policies import available as policy_names
    from l2pd_eval.policies import policy_params
    from l2pd_eval.results.methods import CACHE_PARAMS
    from l2pd_eval.typed_args import parameters

    taken = {*parameters(ModelArgs), *(p for name in policy_names() for p in policy_params(name))}
    ours = [p for name in available() for p in cache_class(name).parameters()]
    assert not taken & set(ours)
    assert set(CACHE_PARAMS) == set(ours)  # the torch-free list results read model_args with


@pytest.mark.parametrize("policy, eotp", list(itertools.product(POLICIES, ["false", "committed"])))
def test_refreshing_every_step_decodes_exactly_as_no_cache(added_cache, family, filter_path, policy, eotp):
    """Every step a full forward (through the cache's path): what ``none`` decodes, at ``none``'s cost."""
    model, special, prompts = family.model, family.special, family.prompts
    cfg = [GenerationConfig(gen_length=16, block_length=8, cache="none", eotp=eotp),
           GenerationConfig(gen_length=16, block_length=8, cache=added_cache, cache_params={"every_interval": 1},
                            eotp=eotp)]
    plain, every = (assert_batched_equals_alone(model, prompts, c, policy, special, filter_path) for c in cfg)
    assert torch.equal(plain.sequences, every.sequences)
    assert [s.positions for s in plain.stats] == [s.positions for s in every.stats]


@pytest.mark.parametrize("policy, eotp", list(itertools.product(POLICIES, ["false", "true", "committed"])))
def test_an_added_strategy_decodes_every_policy_batch_invariantly(added_cache, family, filter_path, policy,
                                                                   eotp):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=added_cache, eotp=eotp)
    assert_batched_equals_alone(model, prompts, cfg, policy, special, filter_path)


def test_an_added_strategy_computes_what_its_refresh_rhythm_says(added_cache, family):
    """low_confidence, one token per step, 8 steps per block: 4 full forwards and 4 block + suffix chunks."""
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=added_cache)
    for prompt in prompts:
        total = len(prompt) + 16
        out = generate(model, [prompt], cfg, make("low_confidence"), special)
        chunks = [total - (len(prompt) + 8 * b) + model.logit_shift for b in range(2)]
        assert out.stats[0].positions == sum(4 * total + 4 * chunk for chunk in chunks)


def test_a_strategy_sees_the_step_and_the_block_s_masked_positions(monkeypatch, family):
    """What a strategy caching decoded tokens (dKV-Cache) or dropping suffix positions (DPad) needs: the step
    within the block, which block positions are still masked, which batch rows are in the step (state kept
    per row across blocks: vicinity's warmup, smoothing) and their seeds (DPad's per-prompt draws)."""
    model, special, prompts = family.model, family.special, family.prompts
    seen = []

    class Watching(NoCache):
        name = "_watching"

        def logits(self, s: StepInput) -> torch.Tensor:
            seen.append((s.step, s.masked, s.x[:, s.block[0]:s.block[1]] == special.mask))
            rows.append((s.rows, s.seeds))
            return super().logits(s)

    monkeypatch.setattr(registry.CACHES, "classes", dict(registry.CACHES.classes))
    register(Watching)
    rows = []
    out = generate(model, prompts, GenerationConfig(gen_length=16, block_length=8, cache="_watching", seed=3),
                   make("threshold", threshold=0.3), special)
    seeds = [rng.row_seed(p, 3) for p in prompts]
    assert rows[0] == ((0, 1, 2), tuple(seeds))  # host batch indices and per-prompt seeds, in row order
    assert all(len(r) == len(sd) == n for (r, sd), (_, _, m) in zip(rows, seen, strict=True) for n in [m.shape[0]])
    assert all(list(sd) == [seeds[i] for i in r] for r, sd in rows)
    assert any(len(r) < 3 for r, _ in rows)  # rows leave a block early: the indices say which stayed
    steps = [step for step, _, _ in seen]
    assert steps[0] == 0 and steps.count(0) == 2  # two blocks, each from step 0
    assert all(b == a + 1 for a, b in zip(steps, steps[1:], strict=False) if b)  # counts up within a block
    assert all(torch.equal(masked, from_x) for _, masked, from_x in seen)
    assert not (out.tokens == special.mask).any()
