"""A scripted mask predictor for hand-built step sequences: at answer position j it predicts ``table[j]``
with a chosen probability, whatever the context, through the same call the engine makes on a real model
(every cache strategy included). It records the live length of each forward, so a test sees when an
EoTP cut removed the tail from the computation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2pd_eval.model.layers import KVCache


@dataclass
class ScriptConfig:
    vocab_size: int
    max_sequence_length: int = 512


class ScriptedModel(nn.Module):
    logit_shift = 0

    def __init__(self, prompt_length: int, table: list[tuple[int, float]], vocab_size: int = 16,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.config = ScriptConfig(vocab_size)
        self.prompt_length = prompt_length
        V = vocab_size
        logits = torch.full((len(table), V), 0.0, dtype=torch.float64)
        for j, (token, p) in enumerate(table):  # softmax gives `token` probability p, the rest share 1 - p
            logits[j] = math.log((1 - p) / (V - 1))
            logits[j, token] = math.log(p)
        self.register_buffer("table", logits.to(dtype))  # ``dtype``: the logits a model of that dtype returns
        self.lengths: list[int] = []  # live length (keys visible to the queries) per forward

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache([], [])

    def forward(self, input_ids: Tensor, position_ids: Tensor, key_mask: Tensor | None = None, *, cache=None,
                start: int = 0, kv_len: int | None = None, logits_slice: slice | None = None,
                write_index=None, split_keys: bool = True) -> Tensor:
        kv_len = start + input_ids.shape[1] if kv_len is None else kv_len
        visible = kv_len if key_mask is None else int(key_mask[:, :kv_len].sum(-1).max())
        self.lengths.append(visible)
        pos = position_ids if logits_slice is None else position_ids[:, logits_slice]
        return self.table[(pos - self.prompt_length).clamp(min=0)]
