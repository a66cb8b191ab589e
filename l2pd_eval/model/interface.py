"""What the engine, the caches and the loader need of a network: :class:`DiffusionLM` and its config,
:class:`ModelConfig`.

Both are ``typing.Protocol``\\ s: a network satisfies them by having the members, not by inheriting. The
families' networks get most members from :class:`~l2pd_eval.model.layers.MaskPredictor`; a test double (for
example ``tests/scripted_model.py``) writes the few the engine calls. Besides these members a network is a
``torch.nn.Module``: the loader builds it on the meta device from its config (``model_class(config)``),
loads the checkpoint's state dict into it by the checkpoint's own key names (``assign=True``) and calls
``init_buffers``; ``random:`` presets call ``init_weights`` instead of loading.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from l2pd_eval.model.layers import KVCache


class ModelConfig(Protocol):
    """Family-neutral names of a config's shapes and ids. Each family's config dataclass keeps its
    ``config.json``'s own field names and provides these as fields or properties over them (Dream's
    ``hidden_size`` is the model width, hence ``d_model``; the MLP width is ``mlp_width`` in every family)."""

    @property
    def d_model(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def mlp_width(self) -> int: ...
    @property
    def vocab_size(self) -> int:
        """Token ids the model predicts (the width of ``forward``'s output)."""
    @property
    def padded_vocab(self) -> int:
        """Rows of the token embedding (>= ``vocab_size``); a tokenizer must fit in it."""
    @property
    def max_sequence_length(self) -> int:
        """Positions the rotary tables cover: prompt + answer may not exceed it."""
    @property
    def init_std(self) -> float:
        """Standard deviation of ``init_weights``' random weights."""
    @property
    def mask_token_id(self) -> int | None:
        """config.json's mask id, the fallback when the tokenizer has no mask token (``SpecialIds``)."""
    @property
    def eos_token_id(self) -> int | None: ...

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` to write next to the weights (what ``from_dict`` reads back)."""


class DiffusionLM(Protocol):
    """A mask predictor the engine decodes with: the contract every model family implements."""

    config: ModelConfig
    #: Positions between a prediction and the hidden state it is read from: 0 when position i is predicted
    #: from its own hidden state (LLaDA), 1 when from position i - 1 (Dream). A cached step starts its chunk
    #: this many positions before the block, so the block's first prediction has its hidden state in it.
    logit_shift: ClassVar[int]

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def new_cache(self, batch: int, length: int) -> KVCache:
        """Uninitialised keys/values of every layer for ``batch`` rows of ``length`` positions."""

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, key_mask: Tensor | None = None,
                *, cache: KVCache | None = None, start: int = 0, kv_len: int | None = None,
                logits_slice: slice | tuple[slice, ...] | None = None, write_index: Tensor | None = None,
                split_keys: bool = True, embed_delta: Tensor | None = None,
                attn_mask: Tensor | None = None, logits_index: Tensor | None = None) -> Tensor:
        """Logits [B, n', vocab_size] (the model's dtype) predicting the tokens at the ``logits_slice``
        positions of the chunk ``input_ids`` [B, n], which occupies absolute positions ``[start, start + n)``.

        Args:
            input_ids: the chunk's tokens, mask ids where a token is still to be decoded.
            position_ids: [B, n] rotary positions; default ``start .. start + n - 1`` for every row.
                Left-padded rows pass positions that count real tokens only.
            key_mask: [B, >= kv_len] bool, True = visible key (only ``[:kv_len]`` is read); None: all
                visible. Hides padding and positions an EoTP cut removed.
            cache: None: the chunk attends to itself only, and ``start`` must be 0. A ``KVCache``: the
                chunk's fresh keys/values overwrite the cache at ``[start, start + n)`` in every layer,
                then the chunk attends to the cache's ``[:kv_len]`` (keys there from earlier calls, the
                chunk's own keys just written).
            start: absolute position of the chunk's first token.
            kv_len: keys attended to with a cache; default ``start + n``.
            logits_slice: chunk positions (relative to the chunk, contiguous) to predict; None: all. Only
                they get the vocabulary projection, the largest matmul of a step. With ``logit_shift`` s,
                the prediction for chunk position j is read from the hidden state at j - s, so the slice
                may begin before s only when the chunk starts the sequence (``start == 0``, no
                ``write_index``); position 0 of a sequence, which has no predecessor, repeats its own.
                A tuple of such slices: their predictions one after the other (e.g. the block and query
                slots appended after it, ``caches.extra``).
            write_index: [n] device tensor of the chunk's absolute positions; when given it replaces
                ``start`` for the cache writes (``position_ids`` must then be given), so the call has no
                Python int that depends on the block and can be captured once as a CUDA graph. ``[B, n]``:
                each row's own absolute positions (a chunk gathered per row, dKV-Cache's: a row's queries
                are not contiguous); a position may repeat only where what is written there is never read
                (padding queries' scratch slot).
            split_keys: allow the key-splitting flash kernel at batch 1
                (``model.attention.cache_attention``); a speed switch, same math.
            embed_delta: [B, n, d] added to the chunk's token embeddings before the first layer (dInfer's
                iteration smoothing feeds soft embeddings of still-masked positions); None: nothing added.
            attn_mask: [B, n, >= kv_len] bool, True = query i of the chunk may attend key j (only
                ``[:, :, :kv_len]`` is read), combined with ``key_mask`` by AND; None: no per-query rule
                (the fast paths). Any pattern: WINO's verification copy, block-causal attention. Every
                query must see at least one key.
            logits_index: [B, k] chunk columns whose hidden states get the vocabulary projection, per row,
                instead of ``logits_slice`` (a chunk gathered per row has no contiguous block). No shift
                is applied: with ``logit_shift`` s the caller passes, for a prediction of position p, the
                column holding position p - s. Returns [B, k, V].

        Rows are independent: a row's logits do not depend on the other rows of the batch. Nothing but the
        cache is written."""

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """``forward`` (through ``nn.Module.__call__``)."""

    def compile_blocks(self, recompile_limit: int | None = 64, autotune: bool = False) -> DiffusionLM:
        """``torch.compile`` the layers in place and return the network
        (:meth:`~l2pd_eval.model.layers.MaskPredictor.compile_blocks` says what the arguments do)."""

    def init_weights(self, seed: int | None = None) -> None:
        """Fill every parameter with random values (deterministic for a ``seed``): ``random:`` presets."""

    def init_buffers(self, device: str | torch.device) -> None:
        """Compute the buffers the checkpoint does not hold (rotary tables) on ``device``, after the
        network was built on the meta device."""


#: The members of :class:`DiffusionLM` a network class must have (``register_family`` checks them; ``config``
#: is set per instance).
MEMBERS: tuple[str, ...] = tuple(
    name for name in dict.fromkeys((*DiffusionLM.__annotations__, *vars(DiffusionLM)))
    if not name.startswith("_") and name != "config")
