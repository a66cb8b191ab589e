"""Block-causal attention (LLaDA2.0, SDAR): a token sees the tokens of its own block and of earlier blocks.

Blocks are ``block_size`` rope positions counted from the sequence's first token, prompt included (the
authors' masks, docs/families.md): the block of a token is ``position // block_size``, per row, so padding
and a row's prompt length never move its grid. What a chunk of a forward sees (:func:`block_causal_mask`):

* keys before the chunk (a cache): all of them. A cache holds only earlier or same-block positions
  of the chunk's first token, so every one is visible under the rule;
* the chunk's own keys: those whose block is not after the query's (the rule itself);
* keys after the chunk (a cache's stale suffix): none. They lie in later blocks when the chunk ends on a
  block boundary, which every strategy that declares ``block_causal`` guarantees (``caches/base.py``).

So a full forward, a prefix cache's block + suffix and a block-only chunk over a cache of finished blocks
all compute what the authors' full forward with their mask computes. Padding is hidden by the key mask as
in every family.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2pd_eval.model.layers import KVCache, MaskPredictor, RMSNorm

_LATER = torch.iinfo(torch.long).max  # the block of a key after the chunk: later than any query's


def block_causal_mask(position_ids: Tensor, key_mask: Tensor | None, start: int, kv_len: int, block: int,
                      write_index: Tensor | None = None) -> Tensor:
    """[B, 1, n, kv_len] bool, True = visible, for the chunk at ``position_ids`` [B, n] occupying key columns
    ``[start, start + n)`` (``write_index``, when given, names them instead) of ``kv_len`` keys."""
    b, n = position_ids.shape
    device = position_ids.device
    query_block = torch.div(position_ids, block, rounding_mode="floor")
    cols = torch.arange(start, start + n, device=device) if write_index is None else write_index
    width = kv_len + n  # scratch room: chunk columns past kv_len (graph padding) land beyond it, then dropped
    keys = torch.arange(width, device=device)
    key_block = torch.where(keys < cols[0], -1, _LATER).expand(b, width).clone()
    key_block.scatter_(1, cols.clamp(max=width - 1).expand(b, n), query_block)
    mask = key_block[:, None, :kv_len] <= query_block[:, :, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, :kv_len]
    return mask[:, None]


class BlockCausalPredictor(MaskPredictor):
    """A :class:`MaskPredictor` whose layers attend block-causally. ``block_size`` (the network's trained
    block length, from its config) is what the engine reads to lay out blocks on the same grid. A subclass
    names its final norm and output head (``final_norm``, ``head_weight``) besides the base's members; the
    forward is this one (no logit shift)."""

    @property
    def final_norm(self) -> RMSNorm:
        raise NotImplementedError

    @property
    def head_weight(self) -> Tensor:
        raise NotImplementedError

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, key_mask: Tensor | None = None, *,
                cache: KVCache | None = None, start: int = 0, kv_len: int | None = None,
                logits_slice: slice | tuple[slice, ...] | None = None, write_index: Tensor | None = None,
                split_keys: bool = True, embed_delta: Tensor | None = None, attn_mask: Tensor | None = None,
                logits_index: Tensor | None = None) -> Tensor:
        """Logits [B, n', V] for the ``logits_slice`` positions of ``input_ids`` occupying absolute positions
        ``[start, start + n)`` (or its ``logits_index`` columns, per row): the contract of
        :meth:`~l2pd_eval.model.interface.DiffusionLM.forward`; ``attn_mask`` is ANDed with the block-causal
        mask."""
        x = self.hidden_states(input_ids, position_ids, key_mask, cache, start, kv_len, write_index, split_keys,
                               embed_delta=embed_delta, attn_mask=attn_mask)
        return self.head(self.rows_for(x, logits_slice, logits_index))

    def head(self, h: Tensor) -> Tensor:
        return self.project(self.final_norm(h), self.head_weight)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def attention_mask(self, key_mask: Tensor | None, position_ids: Tensor, start: int, kv_len: int,
                       write_index: Tensor | None) -> Tensor | None:
        return block_causal_mask(position_ids, key_mask, start, kv_len, self.block_size, write_index)
