"""The general attention mask of ``DiffusionLM.forward`` (``attn_mask`` [B, queries, keys]): what each query may
see, in every family, against a plain softmax attention written out here, and by what it must mean (slots that
see only each other compute the sequence they copy; a query hidden from a key is unaffected by it)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.model import attention
from l2pd_eval.model.layers import attention_mask


def plain_attention(q, k, v, attn_mask=None, enable_gqa=False):
    """Softmax attention with an explicit boolean mask (True = visible), grouped heads repeated."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def _random_mask(b, q, k, seed):
    mask = torch.rand(b, q, k, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[..., 0] = True  # every query sees a key
    return mask


def test_the_model_with_a_general_mask_equals_a_plain_reference_attention(family, monkeypatch):
    model, n = family.model, 12
    x = torch.randint(0, model.config.vocab_size - 8, (2, n), generator=torch.Generator().manual_seed(3))
    mask = _random_mask(2, n, n, seed=4)
    key_mask = torch.ones(2, n, dtype=torch.bool)
    key_mask[1, :2] = False
    got = model(x, attn_mask=mask, key_mask=key_mask)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", plain_attention)
    ref = model(x, attn_mask=mask, key_mask=key_mask)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    plain = model(x)  # the reference is a real one: without a mask it is the model's own forward
    monkeypatch.undo()
    torch.testing.assert_close(plain, model(x), rtol=0, atol=1e-10)
    assert (got - model(x)).abs().max() > 1e-3  # and the mask changed something


def test_an_all_true_mask_is_the_mask_free_forward(family):
    model, n = family.model, 10
    x = torch.randint(0, model.config.vocab_size - 8, (2, n), generator=torch.Generator().manual_seed(5))
    key_mask = torch.ones(2, n, dtype=torch.bool)
    key_mask[0, :3] = False
    pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    full = torch.ones(2, n, n, dtype=torch.bool)
    torch.testing.assert_close(model(x, pos, key_mask, attn_mask=full), model(x, pos, key_mask), rtol=0, atol=1e-12)


def test_slots_that_see_only_each_other_compute_the_sequence_they_copy(family):
    """A sequence followed by a copy of itself: the copy's queries see only the copy, the real queries only
    the real keys. Both halves then predict what the sequence alone predicts, and a query hidden from the
    copy is unaffected by it; the copy's logits come back after the real ones through a tuple of slices."""
    model, n = family.model, 9
    x = torch.randint(0, model.config.vocab_size - 8, (1, n), generator=torch.Generator().manual_seed(6))
    pos = torch.arange(n).unsqueeze(0)
    both = torch.zeros(1, 2 * n, 2 * n, dtype=torch.bool)
    both[:, :n, :n] = True
    both[:, n:, n:] = True
    shift = model.logit_shift
    out = model(torch.cat([x, x], 1), torch.cat([pos, pos], 1), attn_mask=both,
                logits_slice=(slice(shift, n), slice(n + shift, 2 * n)))
    alone = model(x, pos, logits_slice=slice(shift, n))
    torch.testing.assert_close(out[:, :n - shift], alone, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[:, n - shift:], alone, rtol=0, atol=1e-10)


def test_a_cached_chunk_with_a_general_mask_reads_only_the_cache_prefix(family):
    """With a cache the mask covers the cache's keys ``[:kv_len]``: a chunk that may see everything equals
    the key-mask path, and a chunk hidden from the keys after it equals a forward that never had them."""
    model, n, bs = family.model, 14, 6
    x = torch.randint(0, model.config.vocab_size - 8, (1, n), generator=torch.Generator().manual_seed(7))
    pos = torch.arange(n).unsqueeze(0)
    start = bs - model.logit_shift
    cache = model.new_cache(1, n + 4)
    model(x, pos, cache=cache, kv_len=n)
    chunk = slice(start, n)
    plain = model(x[:, chunk], pos[:, chunk], cache=cache, start=start, kv_len=n,
                  logits_slice=slice(bs - start, n - start))
    see_all = torch.ones(1, n - start, n + 4, dtype=torch.bool)  # wider than kv_len: only [:kv_len] is read
    masked = model(x[:, chunk], pos[:, chunk], cache=cache, start=start, kv_len=n,
                   logits_slice=slice(bs - start, n - start), attn_mask=see_all)
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-12)


def test_bad_masks_are_one_clear_error():
    with pytest.raises(ValueError, match=r"attn_mask must be \[batch, 4 queries, >= 6 keys\] bool, got \[1, 3, 6\]"):
        attention_mask(None, torch.ones(1, 3, 6, dtype=torch.bool), 4, 6)
    key = torch.tensor([[True, False, True]])
    rows = torch.tensor([[[True, True, False], [False, True, True]]])
    assert torch.equal(attention_mask(key, rows, 2, 3)[0, 0], torch.tensor([[True, False, False], [False, False, True]]))
    assert attention_mask(None, None, 2, 3) is None


def test_the_plain_reference_agrees_with_sdpa_on_its_own():
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = _random_mask(2, 5, 5, seed=9)[:, None]
    torch.testing.assert_close(plain_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
