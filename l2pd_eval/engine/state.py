"""The batch being decoded, the rows of the current block, and what a decode reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from l2pd_eval.engine.layout import LeftPadded
from l2pd_eval.policies.base import BlockMemory, RowState


@dataclass
class RowStats:
    nfe: int                     # forward passes this row took part in
    committed_per_step: list[int]  # newly committed tokens per forward
    seconds: float               # this row's share of its batch's wall time (sum over rows = wall time)
    latency: float               # wall time of the whole batch that decoded the row
    num_tokens: int              # answer tokens before the first end-of-text/turn token
    eotp_saved: int              # answer positions after an EoTP cut (filled, never decoded)
    positions: int               # query positions the network computed for this row (cost proxy)
    remasked_per_step: list[int] = field(default_factory=list)  # committed tokens masked again per forward
    #                                                             (policies with ``remasks``; else zeros)
    edited_per_step: list[int] = field(default_factory=list)  # committed tokens replaced per forward (policies
    #                                                           with ``edits``; else zeros): never commits

    @property
    def tokens_per_forward(self) -> float:
        """Net committed tokens per forward: commits minus the re-masks that undid some of them."""
        return (sum(self.committed_per_step) - sum(self.remasked_per_step)) / max(self.nfe, 1)


@dataclass
class StepEvent:
    """What ``on_step`` observers (trajectory recording, progress) see after each step's commit."""

    conf: Tensor              # [n, block] probability of x0
    x0: Tensor                # [n, block] the model's prediction
    masked: Tensor            # [n, block] masked before this step
    commit: Tensor            # [n, block] committed this step
    step: int
    block: int
    rows: Tensor              # [n] batch rows present in this step
    tokens: Tensor | None = None  # [n, block] the tokens committed where ``commit`` (x0 unless the policy
    #                               committed others: the oracle's fallback)
    remask: Tensor | None = None  # [n, block] committed positions masked again this step (None: none)
    block_start: int = 0  # the block's first position from the answer's start (negative: a block-causal
    #                       network's first block starts in the prompt, ``engine.layout.block_grid``)
    edit: Tensor | None = None  # [n, block] committed positions whose token was replaced this step (None: none)


@dataclass
class GenerationOutput:
    tokens: Tensor               # [B, gen_length] answer tokens (end-of-text after an EoTP cut)
    stats: list[RowStats] = field(default_factory=list)
    sequences: Tensor | None = None  # [B, P + gen_length] left-padded prompt + answer, as decoded


@dataclass
class DecodeState:
    """The batch being decoded, on the device except ``positions`` (host counters, read once at the end)."""

    x: Tensor                 # [B, T] left-padded prompts then the answer; mask id where not yet decoded
    layout: LeftPadded        # valid keys and rope positions of ``x`` (prompt width P = layout.width)
    seeds: Tensor             # [B] per-prompt rng seeds
    reference: Tensor | None  # [B, gen_length] target answers for policies that need one
    end_ids: Tensor           # ids that end an answer
    limit: Tensor             # [B] live sequence end per row (EoTP cuts; T when uncut)
    positions: Tensor         # [B] host: query positions the network computed per row
    arange: Tensor            # [T] column indices, on the device
    constrained: Tensor | None = None  # [T] bool: answer columns holding fixed tokens (GenerationConfig.constraints)
    counts: list[Tensor] = field(default_factory=list)  # per step: committed count per row, -1 sat out
    remasked: list[Tensor] = field(default_factory=list)  # per step: re-masked count per row (remasking
    #                                                        policies only)
    edited: list[Tensor] = field(default_factory=list)  # per step: edited count per row (editing policies only)
    seeds_host: list[int] = field(default_factory=list)  # ``seeds`` on the host (strategies' host draws)
    forwards: Tensor | None = None  # [B] forwards each row took part in so far (``StepState.forwards``)
    # The block grid (``engine.layout.block_grid``): block ``blk`` covers columns ``[P - grid_shift + blk *
    # block_length, ...)``; a block-causal network's first block starts ``grid_shift`` prompt columns early
    # and its last may run past the answer (``answer_end``, the column after the last answer token).
    grid_shift: int = 0
    answer_end: int = 0
    num_blocks: int = 0

    @property
    def prompt_width(self) -> int:
        return self.layout.width

    @property
    def total(self) -> int:
        return self.x.shape[1]


@dataclass
class BlockRows:
    """The rows still decoding the current block (shrinks as rows finish it)."""

    start: int                # absolute [start, end) of the block
    end: int
    idx: Tensor               # [n] row indices into the batch, on the device
    host: list[int]           # the same on the host
    max_limit: int            # largest live sequence end among them
    schedule: Tensor | None   # [n, steps_per_block] commits per step (scheduled policies)
    memory: BlockMemory | None = None  # the policy's state for this block (``Policy.begin_block``)
    limits: list[int] = field(default_factory=list)  # host: each row's live end, as of the step's sync
    policy_state: RowState | None = None  # the policy's per-row state for this block (Policy.init_state)
    last_commits: Tensor | None = None  # [n] commits at each row's previous step (remask_budget "previous")
    horizon: Tensor | None = None  # [n] absolute: the policy's one-step cut of each row's next forward
    post_taken: Tensor | None = None  # [n] post-edit steps each row took in the block (``edits``)
    more: Tensor | None = None  # [n] bool: the row steps its block again even with no mask left (``edits``)

    def live_end(self, limit: Tensor) -> Tensor:
        """[n] where each row's next forward ends: its live end ``limit[idx]``, or the policy's horizon."""
        end = limit[self.idx]
        return end if self.horizon is None else torch.minimum(end, self.horizon)
    synced: list[int] = field(default_factory=list)  # host: the strategy's ``sync_values`` per row, same sync

    def keep(self, keep_host: list[int], device: torch.device) -> Tensor:
        idx = torch.tensor(keep_host, device=device)
        self.idx = self.idx[idx]
        self.schedule = None if self.schedule is None else self.schedule[idx]
        if self.memory is not None:
            self.memory.keep(idx)
        self.last_commits = None if self.last_commits is None else self.last_commits[idx]
        self.horizon = None if self.horizon is None else self.horizon[idx]
        self.post_taken = None if self.post_taken is None else self.post_taken[idx]
        self.more = None if self.more is None else self.more[idx]
        if self.policy_state is not None:
            self.policy_state.keep(idx)
        self.host = [self.host[j] for j in keep_host]
        return idx
