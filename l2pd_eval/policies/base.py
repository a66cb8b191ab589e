"""Policy interface: given one decoding step's block predictions, choose which masked positions to commit
(and, for policies that declare ``remasks``, which committed ones of the block to mask again; for those that
declare ``edits``, which committed ones of the block to replace by the step's prediction).

Everything is batched over rows: a policy sees [B, block_length] tensors of a read-only ``StepState`` and
returns a ``Selection`` (or just its commit mask) of the same shape. The engine restricts a selection to what
it may touch (masked positions for commits, the block's committed ones for re-masks and edits: never the
prompt or another block) and guarantees progress; policies never sync with the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from l2pd_eval.typed_args import parameters as dataclass_parameters


class RowState:
    """Per-row state a policy keeps across the steps of one block (WINO's last accept count, SlowFast's
    phase, a credit matrix), made by ``Policy.init_state`` when a block starts, handed to every ``select`` of
    that block as ``StepState.state`` (``select`` may update it in place: it is the policy's own), and
    narrowed by the engine to the rows that go on decoding the block when others finish it (``keep``).

    A subclass holds tensors whose first dimension is the block's rows (in ``StepState.rows`` order);
    ``keep`` narrows every such attribute. State that outlives a block belongs on the policy, keyed by
    ``StepState.rows``."""

    def keep(self, idx: Tensor) -> None:
        """Keep rows ``idx`` (indices into the current rows, on the device), in that order."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.dim() > 0:
                setattr(self, name, value.index_select(0, idx))


@dataclass(frozen=True)
class AnswerView:
    """This forward's view of the answer beyond the block, for policies that ``finishes`` (Prophet): columns
    are answer offsets ``start, start + 1, ...`` up to the batch's live length."""

    start: int    # answer offset of column 0
    gap: Tensor   # [B, W] top-1 minus top-2 raw logit, in the model's dtype (Prophet's statistic)
    live: Tensor  # [B, W] bool: before the row's live end (an EoTP cut ends a row's view)


@dataclass(frozen=True)
class StepState:
    """One step of one block for the rows still decoding it; read-only (a policy that commits other tokens
    than x0 says so in its ``Selection``)."""

    conf: Tensor      # [B, L]: probability of x0 at every block position (committed ones too), in the
    #                   dtype of the policy's confidence rule (float64, the model's, or float32)
    x0: Tensor        # [B, L] long: the model's predicted token
    masked: Tensor    # [B, L] bool: still masked before this step
    k: Tensor         # [B] long: tokens the linear schedule asks for at this step (>= 1 while masked)
    step: int         # step index within the block
    block: int        # block index
    block_start: int  # offset of the block's first position from the start of the answer (0-based)
    rows: Tensor      # [B] long: original batch rows present in this step
    reference: Tensor | None = None  # [B, L] long: reference answer tokens for the block (oracle)
    # (purpose, shape=(L,)) -> [B, *shape] U(0,1) float64, batch-invariant per row; purpose 0 with shape
    # (L, V) is the very draw the engine's Gumbel-max sampling of x0 used at this step
    uniform: Callable[..., Tensor] | None = None
    stats: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # the policy's ``needs``, [B, L] each
    #                                                                     ("logits": [B, L, V])
    memory: BlockMemory | None = None  # what ``Policy.begin_block`` returned for this block, narrowed to ``rows``
    mask_id: int | None = None  # the mask token's id (a policy that never commits a predicted mask reads it)
    temperature: float = 0.0    # the run's sampling temperature (x0 is a Gumbel-max sample when > 0)
    forwards: Tensor | None = None  # [B] long: forwards each row took part in before this one (whole answer)
    live: Tensor | None = None  # [B, L] bool: block positions before the row's live end (False past an EoTP
    #                             cut: filled with end-of-text, no longer decoded); None: every position
    steps: int = 0    # the run's steps per block (the schedule's length; non-scheduled policies may read it)
    state: RowState | None = None  # the policy's per-row state for this block (``Policy.init_state``)
    global_step: int = 0  # 1-based step over the whole answer: block * steps_per_block + step + 1
    total_steps: int = 0  # the run's steps (GenerationConfig.total_steps)
    answer: AnswerView | None = None  # predictions beyond the block (policies that ``finishes``)
    current: Tensor | None = None  # [B, L] long: the block's tokens before this step (the mask id where masked)

    @property
    def masked_conf(self) -> Tensor:
        """Confidence where a commit is allowed, -inf elsewhere (so top-k never picks committed slots)."""
        return self.conf.masked_fill(~self.masked, float("-inf"))


class BlockMemory:
    """What a stateful policy keeps about each row across the steps of one block (dInfer's credit matrix).

    ``Policy.begin_block`` makes a fresh one at every block's start (nothing outlives a block or a
    ``generate`` call, so nothing leaks from one request to the next), the engine hands it back in every
    ``StepState.memory`` of that block, and calls ``keep(idx)`` when rows leave the step loop, exactly as it
    narrows the rows' other state. Its first dimension is the block's rows, in ``StepState.rows`` order; the
    policy updates it in place in ``select``, on the device. ``RowState`` (``init_state``, ``StepState.state``)
    is a second mechanism for the same need, from another branch (WINO, SlowFast); the engine serves both
    until one is folded into the other.
    """

    def keep(self, idx: Tensor) -> None:
        """Keep rows ``idx`` (positions into the current rows, ascending) and drop the others."""
        raise NotImplementedError


@dataclass(frozen=True)
class Selection:
    """What a policy decided at one step ([B, L] each)."""

    commit: Tensor                  # bool: positions to commit (the engine keeps the masked ones)
    tokens: Tensor | None = None    # long: the tokens to commit there (None: x0), e.g. the oracle's fallback
    accepted: Tensor | None = None  # bool: positions accepted on their own merit before any schedule fill
    #                                 (Learn2PD's filter); EoTP "true" cuts first after an accepted end
    remask: Tensor | None = None    # bool: committed positions of the block to mask again (``remasks`` only)
    edit: Tensor | None = None      # bool: committed positions of the block to replace by ``tokens`` (x0) where
    #                                 they differ from the token there (``edits`` only)
    finish: Tensor | None = None    # [B] bool: commit every masked position of the row's answer now, at this
    #                                 forward's predictions, and end the row (``finishes`` only)
    horizon: Tensor | None = None   # [B] long answer offset: the row's next forward sees nothing at or after
    #                                 it, keys and queries (>= gen_length: no cut; ``horizons`` only)


def topk_mask(scores: Tensor, k: Tensor) -> Tensor:
    """Per-row top-k as a bool mask with a per-row k, without a host sync (stable sort: ties by position)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks < k.unsqueeze(-1)


def block_start_mask(state: StepState) -> Tensor:
    """The block's first position where it is still masked: Fast-dLLM's Dream sampler commits it, and only it,
    at each block's refresh (``refresh_commit``)."""
    first = torch.zeros_like(state.masked)
    first[:, 0] = True
    return first & state.masked


def top1_mask(scores: Tensor) -> Tensor:
    """``topk_mask`` with k = 1 for every row, as one argmax instead of a sort (first maximum wins, as there)."""
    return torch.arange(scores.shape[-1], device=scores.device) == scores.argmax(-1, keepdim=True)


@dataclass(frozen=True)
class RunSettings:
    """What a run fixes before decoding that a policy may have to check or prepare for (see ``bind``)."""

    block_length: int
    gen_length: int | None = None  # None: each request brings its own (lm-eval's max_gen_toks)
    device: torch.device = torch.device("cpu")
    model: Mapping[str, str] | None = None  # the decoded checkpoint's identity (model.loading.checkpoint_identity)
    constraints: tuple[int, ...] = ()  # answer offsets holding fixed tokens (GenerationConfig.constraints)
    family: str | None = None  # the model family's name (model.family), None when not known
    temperature: float = 0.0  # the decode's sampling temperature
    steps_per_block: int | None = None  # the schedule's steps per block (None: not known before a request)


ConfidenceRule = Literal["float64", "float32", "model"]


@dataclass(frozen=True)
class ForwardExtras:
    """What each forward of a policy computes beyond the block its cache computes (``Policy.forward_extras``):
    ``generate`` reserves the slots' scratch positions and ``batch_size=auto`` counts all three per row."""

    slots: int = 0      # query-only positions (caches.extra), their keys/values in scratch after the sequence
    copy_rows: int = 0  # logit rows predicting the block again (WINO's verification copy)
    view_rows: int = 0  # logit rows of answer positions outside the block (Prophet's view; EoTP's tail overlaps)


@dataclass
class Policy:
    """Base class. Subclasses are dataclasses of their parameters, registered by ``name``; they implement
    ``select`` under the contract written there (and only there).

    ``confidence`` is every policy's parameter: how the engine computes the probability of each prediction
    that the policy ranks by, EoTP cuts by and a filter reads (``engine.predict``): ``float64`` (the default:
    Fast-dLLM's and Learn2PD's cached code), ``model`` (softmax in the logits' dtype: Learn2PD's no-cache
    code, Dream's; the default of Dream's rules) or ``float32`` (this project's earlier rule). A subclass
    whose reference computes it otherwise redeclares the field with its own default."""

    confidence: ConfidenceRule = dataclasses.field(default="float64", kw_only=True)

    name: ClassVar[str] = ""
    # Capabilities (what the engine asks of a policy):
    # Scheduled policies follow a steps schedule (``state.k``); the others run until the block is filled.
    scheduled: ClassVar[bool] = True
    # Which one (engine/schedule.py): "linear" (LLaDA's) or "dream" (Dream's; counts of 0 are steps that
    # commit nothing, the last step takes every remaining position). A policy may make it a parameter (a
    # field named ``schedule``), so it is a plain attribute here, not a ClassVar that would fix the field's
    # position among the subclass's parameters.
    schedule = "linear"
    # Commits the block's first position, and only it, at each block's first step (Fast-dLLM's Dream block
    # sampler; a parameter of threshold and Dream's rules): a cached step then needs no prediction there,
    # so a shifted family's chunk starts at the block (``StepInput.first_committed``). Plain, as ``schedule``.
    refresh_commit = False
    # Statistics of the full predicted distribution the policy scores by (names in policies.scores); the
    # engine computes them once per step for the block and hands them over in ``StepState.stats`` (read
    # on the instance: a property where they depend on the parameters).
    needs: ClassVar[tuple[str, ...]] = ()
    # Needs the target answer (``generate(reference=...)``, ``StepState.reference``): the oracle.
    needs_reference: ClassVar[bool] = False
    # May return ``Selection.remask``: committed tokens of the current block go back to the mask (revocable
    # rules: WINO, ReMDM). The engine honours it only for policies that declare it.
    remasks: ClassVar[bool] = False
    # The engine's stall guard: a row whose selection commits nothing commits its most confident masked
    # position. False for rules that already commit at least one position whenever their own rule allows
    # one and must commit nothing otherwise (dInfer never commits a predicted mask id): a row they cannot
    # serve commits nothing at that step, and the block ends at the engine's step budget at worst.
    stall_fallback: ClassVar[bool] = True
    # Decisions read ``StepState.conf`` (or the chosen-token statistics), so the end-token confidence knob
    # (``eos_conf_zero``) acts on them; False: it cannot act (random order, the oracle's match, a policy
    # with its own confidence) and the adapter says so.
    reads_conf: ClassVar[bool] = True
    # How many re-masks a row may make in a step (engine/commit.py): "step": its new commits beyond
    # max(k, 1), so every step makes net progress; "previous": its previous step's commits minus one (WINO's
    # own bound; unscheduled policies only), so a block still ends within block_length steps.
    remask_budget: ClassVar[str] = "step"
    # May return ``Selection.edit``: committed tokens of the current block replaced by the step's prediction
    # (LLaDA2.1's token-to-token editing). A row whose block has no mask left then steps it again while its
    # last step changed the block (a commit or an edit), at most ``max_post_edit_steps`` such steps a block
    # (engine/commit.py); unscheduled policies only.
    edits: ClassVar[bool] = False
    # The post-edit steps a block may take (``edits`` only): plain, so a policy makes it a parameter.
    max_post_edit_steps = 0
    # Each forward also predicts the block from a verification copy that hides each position's own token
    # (WINO; engine/verify.py); ``StepState.stats["verify_prob"]``: the copy's probability of the block's
    # current token (meaningful where committed).
    verifies: ClassVar[bool] = False
    # May return ``Selection.finish``: the row's every masked answer position takes this forward's prediction
    # and the row is done (Prophet's early commit). The engine then also predicts the answer after the block
    # and hands the policy ``StepState.answer`` from ``view_start`` on.
    finishes: ClassVar[bool] = False
    # May return ``Selection.horizon``: a one-step cut of the row's live sequence for its next forward (the
    # sequence after it is hidden as an EoTP cut hides it, for that forward only: SlowFast's fast phase).
    horizons: ClassVar[bool] = False
    # Fixed answer tokens the policy's rule expects by default, in the authors' spelling
    # ``"offset:word|offset:word"`` (model_arg ``constraints=auto``; Prophet's "The answer is"); None: none.
    default_constraints: ClassVar[str | None] = None

    def init_state(self, rows: Tensor, block: int) -> RowState | None:
        """The per-row state of a block that starts for ``rows`` ([n] batch rows, on the decoding device),
        handed to each of the block's ``select`` calls as ``StepState.state``; None (the default): the
        policy keeps none. Called once per block, before its first step."""
        return None

    @property
    def needs_query_slots(self) -> bool:
        """Whether this bound policy's forwards carry query-only slots (caches.extra): a verification copy of
        the block (``verifies``), or a view of the answer (``finishes`` with a ``view_start``)."""
        return self.verifies or (self.finishes and self.view_start(0) is not None)

    def forward_extras(self, block_length: int, gen_length: int, logit_shift: int) -> ForwardExtras:
        """The most a forward adds beyond the block for this bound policy (by its capabilities): a policy that
        ``verifies`` a copy of the block (its slots start ``logit_shift`` earlier: engine/verify.py), one that
        ``finishes`` with a view the rest of the answer (slots where the cache computes nothing: at most the
        whole answer and a shift at each of its two gaps, engine/views.py); nothing for the others."""
        if not self.needs_query_slots:
            return ForwardExtras()
        if self.verifies:
            return ForwardExtras(slots=block_length + logit_shift, copy_rows=block_length)
        return ForwardExtras(slots=gen_length + 2 * logit_shift, view_rows=gen_length - block_length)

    def view_start(self, block_start: int) -> int | None:
        """For a policy that ``finishes``: the answer offset from which ``StepState.answer`` covers the answer
        at the block starting at answer offset ``block_start`` (default: the block's start); None: this run
        needs no view (nor finishes), so the engine computes none."""
        return block_start

    def select(self, state: StepState) -> Tensor | Selection:
        """Choose this step's commits for the rows of ``state``.

        Args:
            state: the block's predictions for the rows still decoding it (``StepState``); read-only.
                ``state.k`` is the schedule's count for scheduled policies (1 for the others). A policy
                that keeps state across the block's steps (``begin_block`` or ``init_state``) updates
                ``state.memory`` / ``state.state`` in place; everything else in ``state`` is the engine's.

        Returns:
            A [B, L] bool mask of the positions to commit with their ``x0``, or a ``Selection`` when the
            policy also commits other tokens (``tokens``), reports positions accepted on their own merit
            (``accepted``), re-masks (``remask``, only with ``remasks = True``), edits committed tokens
            (``edit``, only with ``edits = True``: the block's positions committed before this step take
            ``tokens`` where they differ, never the mask id) or finishes rows (``finish``,
            only with ``finishes = True``: their masked positions after the block take this forward's
            predictions there; the block's follow the commit mask like any other). The engine commits only
            positions still masked; a row whose selection commits none commits its most confident masked
            position (unless ``stall_fallback = False``, or its schedule asked for none at this step:
            ``state.k`` 0, Dream's schedule). Re-masks apply only to the block's positions
            committed before this step (never the prompt, another block or an EoTP-cut tail) and stay within
            the policy's ``remask_budget`` (by default never undoing more of a row's new commits than leaves
            ``max(state.k, 1)`` of them), so every block finishes (engine/commit.py).
        """
        raise NotImplementedError

    def begin_block(self, block: int, rows: Tensor) -> BlockMemory | None:
        """A fresh ``BlockMemory`` for the rows ``rows`` (original batch rows, [n]) about to decode block
        ``block``, or None (the default: a stateless policy). Called once per block and ``generate`` call,
        before the block's first step; ``select`` then reads and updates it through ``state.memory``."""
        return None

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter name -> declared type: what ``policy=<name>`` accepts in model_args (no internals)."""
        return dataclass_parameters(cls) if dataclasses.is_dataclass(cls) else {}

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.parameters()}

    def bind(self, run: RunSettings) -> Policy:
        """Check and prepare for a run's settings: a policy rejects settings it cannot serve (a filter
        trained for another block length) before any decoding, and moves what it owns to ``run.device``.
        ``generate`` binds every call and the adapter once before its first request, so it must be cheap
        and idempotent; the default only moves the policy."""
        return self.to(run.device)

    def to(self, device: torch.device) -> Policy:
        """Move any tensors/modules the policy owns (the Learn2PD filter) to the decoding device."""
        return self
