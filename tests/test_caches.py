"""Forward strategies on the CPU: the prefix cache's width buckets (padded chunks) change nothing but shape."""

from __future__ import annotations

import pytest
import torch

from l2pd_eval.caches import PrefixCache, StepInput, make_strategy
from l2pd_eval.engine import GenerationConfig


@pytest.mark.parametrize("length", [64, 52])  # the whole sequence, and an EoTP cut 12 positions short
def test_prefix_width_bucket_pads_the_chunk_and_changes_no_logit(tiny, length):
    model, _, _ = tiny
    total = 64
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, model.config.vocab_size - 8, (2, total), generator=gen)
    pos = torch.arange(total).expand(2, total)
    mask = torch.ones(2, total, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded row
    exact, padded = PrefixCache(model, 2, total), make_strategy("prefix", model, 2, total, width_bucket=24)
    assert padded.width_bucket == 24 and padded._buffer.k[0].shape[2] == total + 23  # scratch slots
    widths = []
    for bs in (16, 24, 32, 40):
        block = (bs, bs + 8)
        outs = []
        for strat in (exact, padded):
            strat.logits(StepInput(x[:, :length], pos[:, :length], mask[:, :length], block, length, refresh=True))
            steps = [strat.logits(StepInput(x[:, :length], pos[:, :length], mask[:, :length], block, length,
                                            refresh=False)) for _ in range(2)]
            outs.append((steps, strat.positions))
        (e_steps, e_pos), (p_steps, p_pos) = outs
        for e, p in zip(e_steps, p_steps, strict=True):
            torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-12)
        assert p_pos == e_pos == 2 * (length - bs)  # the padding queries are not counted as work
        # the real slots of the cache hold the same keys/values; the padding wrote only past the live length
        for t_e, t_p in zip(exact._buffer.k + exact._buffer.v, padded._buffer.k + padded._buffer.v, strict=True):
            torch.testing.assert_close(t_p[:, :, :length], t_e[:, :, :length], rtol=1e-12, atol=1e-12)
        widths.append(padded._chunk_inputs(StepInput(x[:, :length], pos[:, :length], None, block, length,
                                                     refresh=False))[0].shape[1])
    assert all(w % 24 == 0 and w - 24 < length - bs for w, bs in zip(widths, (16, 24, 32, 40), strict=True))
    assert len(set(widths)) < len(widths)  # blocks share a width: what lets one CUDA graph serve them


def test_width_bucket_is_only_the_prefix_cache_s_and_must_not_be_negative(tiny):
    model, _, _ = tiny
    dual = make_strategy("dual", model, 1, 32, width_bucket=16)
    assert dual.width_bucket == 0 and dual._buffer.k[0].shape[2] == 32  # its chunk is always one block
    with pytest.raises(ValueError, match="graph_width_bucket=-1 must be >= 0"):
        GenerationConfig(graph_width_bucket=-1)
