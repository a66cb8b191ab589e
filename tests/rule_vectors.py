"""The field's rules as their authors' code decodes hand-built step sequences (``tests/fixtures/rules/*.json``,
made by running the authors' own functions on CPU with a scripted stand-in model; how: the ``produced_by``
line of each file), and a scripted model that replays such a script through the engine.

A script says, per forward (0, 1, ... in call order), what the model predicts at each position (each file
has its own spelling, read by its test); WINO's scripts also give the verification copy's predictions
(``mirror``). The model records what each forward was fed, the keys it could see, its attention mask and
position ids, so a test compares them with what the authors' code fed its model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from l2pd_eval.model.layers import KVCache, slices_of

FIXTURES = Path(__file__).parent / "fixtures" / "rules"


def load(name: str) -> dict[str, Any]:
    """``rules_<name>.json``: its ``cases`` by name (a list under the key ``cases`` in the file)."""
    data = json.loads((FIXTURES / f"rules_{name}.json").read_text())
    return {case["name"]: case for case in data["cases"]}


def row(vocab: int, top: dict[int, float]) -> Tensor:
    """float32 logits whose softmax gives each ``top`` token its probability and shares the rest evenly, as
    the authors' scripted models return them."""
    rest = (1 - sum(top.values())) / (vocab - len(top))
    out = torch.full((vocab,), math.log(rest), dtype=torch.float64)
    for token, p in top.items():
        out[token] = math.log(p)
    return out.to(torch.float32)


@dataclass
class Config:
    vocab_size: int
    max_sequence_length: int = 512


@dataclass
class Forward:
    """What one forward was fed."""

    tokens: list[int]        # the real tokens the queries could see (the visible prefix), then any copy slots
    visible: int             # keys the real queries could see (a truncated forward sees fewer)
    attn_mask: Tensor | None
    position_ids: list[int]


class VectorModel(nn.Module):
    """Replays a script: ``predict(call, position, copy)`` gives the logits row [V] of forward ``call`` (0, 1,
    ... in order) at absolute rope position ``position``; ``copy`` is None for the real sequence and the
    block offset ``j`` for the verification copy's slot that predicts block position j (WINO: the slots
    after the real sequence, there when the engine passes a per-query mask). ``logit_shift``: the family's;
    the script gives predictions FOR positions, so the shift only moves where the copy's slots start."""

    def __init__(self, predict: Callable[[int, int, int | None], Tensor], vocab: int, block_length: int = 0,
                 logit_shift: int = 0, dtype=torch.float32):
        super().__init__()
        self.config = Config(vocab)
        self.logit_shift = logit_shift
        self.predict, self.L = predict, block_length
        self.register_buffer("anchor", torch.zeros(1, dtype=dtype))
        self.calls: list[Forward] = []

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache([], [])

    def forward(self, input_ids, position_ids=None, key_mask=None, *, cache=None, start=0, kv_len=None,
                logits_slice=None, write_index=None, split_keys=True, attn_mask=None):
        assert input_ids.shape[0] == 1 and cache is None, "the authors' runs: batch 1, no cache"
        n = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(n).unsqueeze(0)
        copies = self.L + self.logit_shift if attn_mask is not None else 0
        real_n = n - copies
        keys = torch.ones(real_n, dtype=torch.bool) if key_mask is None else key_mask[0, :real_n]
        if attn_mask is not None:
            keys = keys & attn_mask[0, 0, :real_n]
        visible = int(keys.sum())
        assert keys[:visible].all(), "a truncated forward hides a suffix"
        self.calls.append(Forward(input_ids[0, :visible].tolist() + input_ids[0, real_n:].tolist(), visible,
                                  attn_mask, position_ids[0].tolist()))
        call = len(self.calls) - 1
        rows = [self.predict(call, int(position_ids[0, i]), None) if i < real_n
                else self.predict(call, int(position_ids[0, i]) + self.logit_shift, i - real_n - self.logit_shift)
                for i in range(n)]
        full = torch.stack(rows).to(self.dtype).unsqueeze(0)
        return torch.cat([full[:, s] for s in slices_of(logits_slice)], 1)
