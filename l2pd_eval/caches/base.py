"""What a forward strategy is: how one decoding step turns the sequence into the current block's logits.

The engine hands a strategy a ``StepInput`` per step and reads back ``[n, block, V]`` logits and the
query positions it computed. Everything the engine or the batch sizer needs to know about a strategy is a
declared capability on its class, never its name, so a new strategy is one class in ``caches/`` plus its
tests (``register`` it, and ``cache=<name>`` works everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from l2pd_eval.caches.extra import ExtraQueries
from l2pd_eval.model.interface import DiffusionLM


@dataclass(frozen=True)
class StepInput:
    """What the engine hands a strategy for the rows currently decoding (all sliced to ``[:, :length]``)."""

    x: Tensor                # [n, length] tokens
    pos: Tensor              # [n, length] rope positions
    key_mask: Tensor | None  # [n, length] bool or None when every key is visible
    block: tuple[int, int]   # absolute [start, end) of the current block
    length: int              # live sequence length (EoTP may have cut the tail)
    step: int                # step within the block: 0 is the block's first forward
    masked: Tensor | None = None  # [n, block] bool: block positions still masked before this step (None:
    #                               not tracked, as in a benchmark timing a bare step)
    after: bool = False      # also return the logits after the block, up to ``length`` (``logits_after``)
    extra: ExtraQueries | None = None  # query-only slots appended after what the step computes; their
    #                                    ``extra.returned`` predictions follow the step's logits (caches.extra)
    out: tuple[int, int] | None = None  # absolute [lo, hi) of the logits to return instead of the block's:
    #                                     it holds the block and lies within ``computed(s)``


class ForwardStrategy:
    """The contract the engine's loop relies on.

    ``logits(s)`` returns [n, block, V] where ``[:, j]`` predicts the token at absolute position
    ``block[0] + j`` (with ``s.after``: the positions up to ``s.length`` follow; with ``s.out = (lo, hi)``:
    positions ``lo .. hi - 1`` instead; with ``s.extra``: the slots' predictions after all of them), and sets
    ``positions`` to the query positions that call computed for the n real rows (the cost statistic). ``keep(idx)`` drops the
    state of rows that finished the block. A model family whose outputs are shifted (Dream: position i is
    predicted from hidden state i - 1) maps that inside its forward; a strategy that recomputes a chunk starts
    it ``model.logit_shift`` positions before the block so the predecessor is in it. ``split_keys``: let a
    batch-1 step use the key-splitting attention kernel (``model.attention``), a speed choice of the caller.
    """

    name: ClassVar[str] = ""
    # Capabilities (what the engine and the batch sizer ask instead of the name):
    logits_after: ClassVar[bool] = False  # can return the logits after the block (EoTP "true" searches there)
    cuda_graphs: ClassVar[bool] = False   # its cached steps can replay as CUDA graphs (caches.graphs)
    width_buckets: ClassVar[bool] = False  # its cached chunk changes width between blocks: padding it to a
    #                                        bucket lets one CUDA graph serve several blocks

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True):
        self.model = model
        self.split_keys = split_keys
        self.positions = 0

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        """KV-cache positions per row the strategy keeps for a sequence of ``total_length`` (batch sizing)."""
        return 0

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int) -> int:
        """Query positions per row of a step that does not refresh (a cost model for benchmarks too)."""
        return length

    def refreshes(self, s: StepInput) -> bool:
        """Whether this step recomputes everything (and refills what the strategy keeps): by default each
        block's first step. A strategy that refreshes on another rhythm overrides this."""
        return s.step == 0

    def computed(self, s: StepInput) -> tuple[int, int]:
        """Absolute [lo, hi) of the positions this step predicts afresh: where ``s.out`` may reach (the rest
        of the sequence keeps what an earlier step computed, or nothing). By default the whole live
        sequence, as a full forward."""
        return 0, s.length

    def logits(self, s: StepInput) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def output(s: StepInput, default_end: int) -> tuple[int, int]:
        """The absolute [lo, hi) ``logits(s)`` returns: ``s.out``, else the block up to ``default_end``."""
        return s.out if s.out is not None else (s.block[0], default_end)

    def keep(self, idx: Tensor) -> None:
        """Rows ``idx`` (indices into the current rows) go on decoding this block; drop the others' state."""
