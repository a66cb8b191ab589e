"""What a forward strategy is: how one decoding step turns the sequence into the current block's logits.

The engine hands a strategy a ``StepInput`` per step and reads back ``[n, block, V]`` logits and the
query positions it computed. Everything the engine or the batch sizer needs to know about a strategy is a
declared capability on its class, never its name, so a new strategy is one class in ``caches/`` plus its
tests (``register`` it, and ``cache=<name>`` works everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from l2pd_eval.caches.extra import ExtraQueries
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.typed_args import parameters as dataclass_parameters


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
    first_committed: bool = False  # the block's first position was committed at its first step and needs no
    #                                prediction (a policy's ``refresh_commit``): a shifted family's cached chunk
    #                                may then start at the block, as Fast-dLLM's Dream cache does (caches.prefix)
    rows: tuple[int, ...] = ()   # host: the n rows' indices in the batch (per-row state that outlives a
    #                              block is kept by them: rows leave a block early and rejoin at the next)
    seeds: tuple[int, ...] = ()  # host: the n rows' per-prompt seeds (``engine.rng``), for draws a
    #                              strategy makes on the host (DPad's kept positions)
    limits: tuple[int, ...] = ()  # host: the n rows' live ends (EoTP cuts; the step's sync has them)
    prompt: int = 0  # the prompt width P: the answer's first column in every row (left padding); 0: not
    #                  given (dLLM-Cache splits its features there)
    extra: ExtraQueries | None = None  # query-only slots appended after what the step computes; their
    #                                    ``extra.returned`` predictions follow the step's logits (caches.extra)
    out: tuple[int, int] | None = None  # absolute [lo, hi) of the logits to return instead of the block's:
    #                                     it holds the block and lies within ``computed(s)``
    synced: tuple[int, ...] = ()  # host: per row, what the strategy's ``sync_values`` gave at this step's
    #                               sync (empty: it gave nothing, or the step had no sync: a block's first)


@dataclass(frozen=True)
class CacheParams:
    """A strategy's parameters: a frozen dataclass whose fields are ``--model_args`` keys, each with the
    authors' default (so ``cache=<name>`` alone is their configuration). Subclass it per strategy, name its
    fields after the method (``dpad_window``), so they never clash with a policy's, and reject bad values
    in ``__post_init__`` with a message naming the field. Values arrive coerced by their annotations
    (``caches.registry.parse_cache_params``). The base has no fields: the built-in Fast-dLLM caches take none."""


class ForwardStrategy:
    """The contract the engine's loop relies on.

    ``logits(s)`` returns [n, block, V] where ``[:, j]`` predicts the token at absolute position
    ``block[0] + j`` (with ``s.after``: the positions up to ``s.length`` follow; with ``s.out = (lo, hi)``:
    positions ``lo .. hi - 1`` instead; with ``s.extra``: the slots' predictions after all of them), and sets
    ``positions`` to the query positions that call computed for the n real rows (the cost statistic): their
    total, or a list of n per-row counts where rows compute different numbers (padding a strategy adds to
    share one shape belongs to no row and is not counted). ``keep(idx)`` drops the
    state of rows that finished the block. A model family whose outputs are shifted (Dream: position i is
    predicted from hidden state i - 1) maps that inside its forward; a strategy that recomputes a chunk starts
    it ``model.logit_shift`` positions before the block so the predecessor is in it. ``split_keys``: let a
    batch-1 step use the key-splitting attention kernel (``model.attention``), a speed choice of the caller.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[CacheParams]] = CacheParams  # its parameters (``parameters()`` lists them)
    # Capabilities (what the engine and the batch sizer ask instead of the name):
    logits_after: ClassVar[bool] = False  # can return the logits after the block (EoTP "true" searches there)
    cuda_graphs: ClassVar[bool] = False   # its cached steps can replay as CUDA graphs (caches.graphs)
    width_buckets: ClassVar[bool] = False  # its cached chunk changes width between blocks: padding it to a
    #                                        bucket lets one CUDA graph serve several blocks
    layer_parts: ClassVar[bool] = False  # runs its own layer loop over the network's parts
    #                                      (``model.layers.LayerParts``: the families' networks, not a test double)
    block_causal: ClassVar[bool] = False  # exact on a block-causal network (model.block_causal): every chunk
    #                                        it computes ends on a block boundary or at the live end
    requires_block_causal: ClassVar[bool] = False  # exact only there (it never computes the suffix, which a
    #                                                 bidirectional block attends to): refused elsewhere
    inner: ClassVar[str | None] = None  # a strategy that transforms the sequence (DPad) and hands it to
    #                                     this registered strategy, which ``make_strategy`` builds as ``inner=``
    horizons: ClassVar[bool] = True  # a per-row horizon (SlowFast's ``Selection.horizon``: keys and queries past it
    #                                  hidden in the next forward) keeps rows independent; False: refused
    edits: ClassVar[bool] = True  # predicts every block position afresh at each step, so an editing policy
    #                               (``Policy.edits``) sees its edits and its post-edit steps predict; False: refused
    query_slots: ClassVar[bool] = False  # serves ``s.extra`` (query-only slots: WINO's verification copy) and
    #                                      ``s.out`` within ``computed(s)`` (Prophet's answer view); the engine
    #                                      refuses a policy that needs them with a strategy that does not

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 params: CacheParams | None = None):
        self.model = model
        self.split_keys = split_keys
        self.params = self.Params() if params is None else params
        self.positions: int | list[int] = 0
        self.keys = 0  # keys each query of the last step attended to (the live length, or fewer)

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter name -> declared type: the model_args keys ``cache=<name>`` accepts."""
        return dataclass_parameters(cls.Params)

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        """KV-cache positions per row the strategy keeps for a sequence of ``total_length`` (batch sizing)."""
        return 0

    @classmethod
    def extra_bytes_per_row(cls, config: Any, total_length: int, params: CacheParams, elt: int) -> int:
        """Device bytes a row needs beyond its KV cache and one block's logits (batch sizing): state kept
        per position, logits of more positions. ``config``: the model's (``ModelConfig``); ``elt``: bytes
        per element of the model's dtype."""
        return 0

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int,
                     params: CacheParams | None = None) -> int:
        """Query positions per row of a step that does not refresh (a cost model for benchmarks too), with
        the strategy's ``params`` (None: its defaults)."""
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
    def sync_values(self, masked: Tensor, limit: Tensor) -> Tensor | None:
        """[n] integers the strategy needs on the host at its next ``logits`` call (a size that depends on
        the tokens: dKV-Cache's count of positions to recompute), computed on the device from the current
        rows' still-masked block positions ``masked`` [n, block] and live ends ``limit`` [n] at the start of a
        step after a block's first. The engine copies them in its own per-step sync, so they cost no extra
        device-to-host wait, and hands the rows that go on their values as ``StepInput.synced``. None (the
        default): nothing to copy."""
        return None

    def logits(self, s: StepInput) -> Tensor:
        raise NotImplementedError

    def refuse_slots(self, s: StepInput) -> None:
        """For a strategy without ``query_slots``: a step that asks for them is an engine bug, never ignored."""
        if s.extra is not None or s.out is not None:
            raise ValueError(f"cache={self.name!r} has no query slots (query_slots = False): StepInput.extra and "
                             f".out cannot be served")

    @staticmethod
    def output(s: StepInput, default_end: int) -> tuple[int, int]:
        """The absolute [lo, hi) ``logits(s)`` returns: ``s.out``, else the block up to ``default_end``."""
        return s.out if s.out is not None else (s.block[0], default_end)

    def keep(self, idx: Tensor) -> None:
        """Rows ``idx`` (indices into the current rows) go on decoding this block; drop the others' state."""
