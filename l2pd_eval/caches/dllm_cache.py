"""``cache=dllm_cache`` (dLLM-Cache, maomaocun/dLLM-cache ``dllm_cache/``: the schedule of ``cache/Cache.py``,
the layer rule of ``hooks/cache_hook_LLaDA.py`` ``cache_hook_feature`` and ``hooks/cache_hook_Dream.py``
``decoder_hook``, the V-verify of their ``refresh_index``).

What is kept, per batch row and layer, over the whole sequence: keys and values, the attention's residual
delta and the MLP's. The residual stream itself is never kept: every step starts from the token embeddings
and each layer adds, position by position, a fresh or a kept attention delta, then a fresh or a kept MLP
delta. The sequence is split at the prompt width P (padding belongs to the prompt) into prompt ``[0, P)``
and answer ``[P, length)`` (every block of it, not only the current one).

Schedule (per row, by its forward count ``f`` since the answer started, 0-based; their counter is per
``generate`` call and 1-based): the prompt refreshes when ``f % prompt_interval == 0``, the answer when
``f % gen_interval == 0``. Layer 0 is always computed in full (their hook's ``or layer_id == 0``). Every
other layer takes one of four cases:

- ``full``: both refresh. The whole layer over every position; everything it kept is replaced.
- ``gen``: the answer refreshes. Answer queries over the kept prompt keys/values and fresh answer ones;
  the prompt reads its kept deltas.
- ``prompt``: the prompt refreshes. Prompt queries, and with ``transfer_ratio`` > 0 also the answer
  positions V-verify picks; the answer's other positions read their kept deltas.
- ``neither``: with ``transfer_ratio`` > 0 only the positions V-verify picks are recomputed; else the layer
  is kept deltas only.

V-verify (``verify``): the values of every answer position are projected afresh, compared with the kept
ones by cosine similarity (over all heads' values of a position), and the ``int(G * ratio)`` positions that
changed most (lowest similarity; G the answer length) get fresh queries and keys; every kept answer value
is then replaced by the fresh one (so the comparison is always against the last step). Positions an EoTP
cut removed are never picked while live ones remain.

Cost (``positions``): a layer computes different positions in each case, so the strategy counts
layer-positions (each layer's query positions, summed over the layers) and reports them divided by the
number of layers, kept per row so the sums stay exact: a step that refreshes everything costs the live
length, as ``none``'s step does. The value-only projections V-verify makes are not in it; ``probes`` counts
them per row, in the same units (docs/conventions.md, bench/bench_step.py's floor).

Rows leave a block early and rejoin at the next: the state is kept by batch row (``StepInput.rows``), the
step's rows brought to the leading slots when the set changes. Rows whose schedules disagree in a step run
one layer loop per case, each on its own rows. No CUDA graphs (the loop is eager: its shapes change with the
case of each row group; docs/benchmarks.md says what that costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.registry import register
from l2pd_eval.errors import ConfigError
from l2pd_eval.model.attention import cache_attention
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import LayerParts


@dataclass(frozen=True)
class DLLMCacheParams(CacheParams):
    """Their LLaDA-8B-Instruct GSM8K script (``scripts/run_LLaDA_gsm8k_Instruct.sh``: Kp 50, Kr 7, ratio 0.25;
    their ``dLLMCacheConfig`` defaults 1/1/0 compute everything, their demos use 100/7/0.25)."""

    dllm_cache_prompt_interval: int = 50   # Kp: forwards between prompt refreshes (``prompt_interval_steps``)
    dllm_cache_gen_interval: int = 7       # Kr: forwards between answer refreshes (``gen_interval_steps``)
    dllm_cache_transfer_ratio: float = 0.25  # share of the answer V-verify recomputes in between (0: none)

    def __post_init__(self) -> None:
        for name in ("dllm_cache_prompt_interval", "dllm_cache_gen_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1 (1: every forward refreshes, as "
                                  f"their -1 does)")
        if not 0 <= self.dllm_cache_transfer_ratio <= 1:
            raise ConfigError(f"dllm_cache_transfer_ratio={self.dllm_cache_transfer_ratio} must be in [0, 1]")

    def case(self, forward: int) -> str:
        """The case of layers >= 1 at a row's ``forward``-th forward (0-based)."""
        prompt = forward % self.dllm_cache_prompt_interval == 0
        gen = forward % self.dllm_cache_gen_interval == 0
        return ("full" if gen else "prompt") if prompt else ("gen" if gen else "neither")


def verify(fresh: Tensor, kept: Tensor, k: int, live: Tensor | None = None) -> Tensor:
    """V-verify's choice: per row, the ``k`` positions whose ``fresh`` values [n, H, m, D] differ most from the
    ``kept`` ones (lowest cosine similarity over the flattened H * D, their ``refresh_index``), as [n, k]
    indices into the m positions, in ``topk``'s order. ``live`` [n, m]: positions that may be picked first
    (the others rank last)."""
    sim = F.cosine_similarity(fresh.transpose(1, 2).flatten(2), kept.transpose(1, 2).flatten(2), dim=-1)
    if live is not None:
        sim = sim.masked_fill(~live, float("inf"))
    return sim.topk(k, dim=-1, largest=False).indices


@dataclass
class _State:
    """One row group's kept features, per layer: keys and values [g, H_kv, T, D], attention and MLP deltas
    [g, T, d] (views of the strategy's buffers, or copies of some rows of them)."""

    k: list[Tensor]
    v: list[Tensor]
    attn: list[Tensor]
    mlp: list[Tensor]

    def tensors(self) -> list[Tensor]:
        return self.k + self.v + self.attn + self.mlp


@register
class DLLMCache(ForwardStrategy):
    name = "dllm_cache"
    Params = DLLMCacheParams
    logits_after = False
    layer_parts = True
    horizons = False  # kept features were computed over keys a horizon would hide: rows would not decode alone

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 params: DLLMCacheParams | None = None):
        super().__init__(model, batch, total_length, split_keys, params)
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(isinstance(b, LayerParts) for b in blocks) or not hasattr(model, "head"):
            raise ConfigError(f"cache={self.name!r} runs its own layer loop: it needs a network whose layers "
                              f"expose their parts (model.layers.LayerParts), as the families' networks do")
        c, dtype, device = model.config, model.dtype, model.device
        self.total, self.layers = total_length, c.n_layers
        self._buffer = model.new_cache(batch, total_length)
        self._deltas = [[torch.empty(batch, total_length, c.d_model, dtype=dtype, device=device)
                         for _ in range(c.n_layers)] for _ in range(2)]
        self.slots = list(range(batch))  # the batch row whose state each slot holds
        self.forwards = [0] * batch      # forwards each batch row took part in (the schedule's counter)
        self.layer_positions = [0] * batch  # layer-positions computed per batch row, so far
        self.probes: list[int] = []  # the last step's value-only positions per row (layer-positions / layers)
        self.state_bytes: list[int] = []  # the last step's bytes per row through the kept deltas (every layer
        #                                   and position: read or written) and V-verify's kept values
        self.cases: list[str] = []   # the last step's case per row

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        return total_length

    @classmethod
    def extra_bytes_per_row(cls, config, total_length: int, params: CacheParams, elt: int) -> int:
        """The attention and MLP deltas kept for every layer and position."""
        return 2 * config.n_layers * total_length * config.d_model * elt

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int,
                     params: CacheParams | None = None) -> int:
        """The most any layer computes: layer 0 takes the whole live length at every step (the layers after
        it fewer; ``positions`` reports each step's average over the layers)."""
        return length

    def refreshes(self, s: StepInput) -> bool:
        """Decided per row in ``logits`` (forward counts); this is the last step's verdict: all rows full."""
        return bool(self.cases) and all(c == "full" for c in self.cases)

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} predicts the block only; predictions after the block exist "
                             f"only with a cache that has logits_after")
        self.refuse_slots(s)
        P, (bs, be) = s.prompt, s.block
        if not 0 < P <= bs:
            raise ValueError(f"cache={self.name!r} splits the sequence at the prompt width: StepInput.prompt must "
                             f"be in (0, block start], got {P}")
        n = s.x.shape[0]
        self._bring(s.rows)
        self.cases = [self.params.case(self.forwards[r]) for r in s.rows]
        ratio, gen = self.params.dllm_cache_transfer_ratio, self.total - P
        k = min(int(gen * ratio), s.length - P) if ratio > 0 else 0
        groups: dict[str, list[int]] = {}
        for j, case in enumerate(self.cases):
            groups.setdefault(case, []).append(j)
        out = None
        for case, js in groups.items():
            whole = len(js) == n
            idx = None if whole else torch.tensor(js, device=s.x.device)

            def rows(t: Tensor | None, _idx=idx) -> Tensor | None:
                return t if t is None or _idx is None else t.index_select(0, _idx)

            state = _State(*[[rows(t[:n]) for t in ts] for ts in (self._buffer.k, self._buffer.v, *self._deltas)])
            logits = self._layers(rows(s.x), rows(s.pos), rows(s.key_mask), state, case, P, k, (bs, be), ratio > 0)
            if whole:
                out = logits
                break
            for t, u in zip((*self._buffer.k, *self._buffer.v, *self._deltas[0], *self._deltas[1]), state.tensors(),
                            strict=True):
                t.index_copy_(0, idx, u)
            out = logits.new_empty(n, *logits.shape[1:]) if out is None else out
            out.index_copy_(0, idx, logits)
        self._count(s, P, k, ratio > 0)
        return out

    def _count(self, s: StepInput, P: int, k: int, transfer: bool) -> None:
        """Per row: its layer-positions this step, ``positions`` the growth of their running sum / layers."""
        L, N = s.length, self.layers
        queries = {"full": L, "gen": L - P, "prompt": P + k * transfer, "neither": k * transfer}
        probe = (N - 1) * (L - P) if transfer else 0
        c, elt = self.model.config, self.model.dtype.itemsize
        deltas, values = 2 * N * L * c.d_model * elt, 2 * probe * c.kv_heads * c.head_dim * elt
        self.positions, self.probes, self.state_bytes, self.keys = [], [], [], L
        for r, case in zip(s.rows, self.cases, strict=True):
            before = self.layer_positions[r]
            self.layer_positions[r] += L + (N - 1) * queries[case]
            self.positions.append(self.layer_positions[r] // N - before // N)
            probed = case in ("prompt", "neither")
            self.probes.append(probe // N if probed else 0)
            self.state_bytes.append(deltas + values * probed)
            self.forwards[r] += 1

    def _layers(self, x: Tensor, pos: Tensor, key_mask: Tensor | None, st: _State, case: str, P: int, k: int,
                block: tuple[int, int], transfer: bool) -> Tensor:
        """The block's logits of one row group whose layers >= 1 take ``case``; refills what it computes."""
        model, L = self.model, x.shape[1]
        gqa = model.config.kv_heads != model.config.n_heads
        cos, sin = model.rotary.tables(pos, model.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :L]
        live = None if key_mask is None else key_mask[:, P:L]

        def attend(q: Tensor, layer: int) -> Tensor:
            return cache_attention(q, st.k[layer][:, :, :L], st.v[layer][:, :, :L], mask, gqa, self.split_keys)

        h = model.token_embedding(x)
        for i, layer in enumerate(model.blocks):
            c = "full" if i == 0 else case
            A, M = st.attn[i], st.mlp[i]
            if c == "full" or c == "gen":
                lo = 0 if c == "full" else P
                q, key, value = layer.project(layer.attn_input(h[:, lo:]), cos[:, :, lo:], sin[:, :, lo:])
                st.k[i][:, :, lo:L], st.v[i][:, :, lo:L] = key, value
                A[:, lo:L] = layer.attn_output(attend(q, i))
                h = h + A[:, :L]
                M[:, lo:L] = layer.mlp_delta(h[:, lo:])
                h = h + M[:, :L]
                continue
            queries = []
            if c == "prompt":
                q, key, value = layer.project(layer.attn_input(h[:, :P]), cos[:, :, :P], sin[:, :, :P])
                st.k[i][:, :, :P], st.v[i][:, :, :P] = key, value
                queries.append(q)
            picked = None
            if transfer:  # (their pick of 0 positions still refreshes the kept values)
                picked, q = self._verify(layer, h, cos, sin, st.k[i], st.v[i], P, L, k, live)
                picked, queries = (picked, [*queries, q]) if k else (None, queries)
            if queries:
                att = layer.attn_output(attend(torch.cat(queries, 2), i))
                if c == "prompt":
                    A[:, :P] = att[:, :P]
                if picked is not None:
                    _scatter(A, picked, att[:, att.shape[1] - k:])
            h = h + A[:, :L]
            rows = ([h[:, :P]] if c == "prompt" else []) + ([] if picked is None else [_gather(h, picked)])
            if rows:
                mlp = layer.mlp_delta(torch.cat(rows, 1))
                if c == "prompt":
                    M[:, :P] = mlp[:, :P]
                if picked is not None:
                    _scatter(M, picked, mlp[:, mlp.shape[1] - k:])
            h = h + M[:, :L]
        bs, be = block
        shift = model.logit_shift
        return model.head(h[:, bs - shift:be - shift])

    @staticmethod
    def _verify(layer, h: Tensor, cos: Tensor, sin: Tensor, K: Tensor, V: Tensor, P: int, L: int, k: int,
                live: Tensor | None) -> tuple[Tensor, Tensor]:
        """V-verify at one layer: fresh values for the whole answer (kept), its pick (absolute columns
        [g, k]) with fresh keys (kept) and their queries [g, H, k, D]."""
        normed = layer.attn_input(h[:, P:L])
        _, _, fresh = layer.project(normed, cos[:, :, P:L], sin[:, :, P:L], "v")
        idx = verify(fresh, V[:, :, P:L], k, live)
        V[:, :, P:L] = fresh
        picked = idx + P
        at = picked[:, None, :, None].expand(-1, 1, -1, cos.shape[-1])
        q, key, _ = layer.project(_gather(normed, idx), cos.gather(2, at), sin.gather(2, at), "qk")
        K.scatter_(2, picked[:, None, :, None].expand(-1, K.shape[1], -1, K.shape[3]), key)
        return picked, q

    def _bring(self, rows: tuple[int, ...]) -> None:
        """Move the state of the step's rows to the leading slots, in their order (only slots that change)."""
        n = len(rows)
        if tuple(self.slots[:n]) == rows:
            return
        where = {r: i for i, r in enumerate(self.slots)}
        stay = set(rows)
        order = list(rows) + [r for r in self.slots if r not in stay]
        moved = [j for j, r in enumerate(order) if where[r] != j]
        dst = torch.tensor(moved, device=self.model.device)
        src = torch.tensor([where[order[j]] for j in moved], device=self.model.device)
        for t in (*self._buffer.k, *self._buffer.v, *self._deltas[0], *self._deltas[1]):
            t[dst] = t[src]  # the right side is gathered first: a permutation is safe
        self.slots = order

    def keep(self, idx: Tensor) -> None:
        """Nothing moves here: the state is by batch row, and the next step's rows say which are in it."""


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` [g, k] of ``x`` [g, m, d]."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _scatter(buf: Tensor, idx: Tensor, src: Tensor) -> None:
    """``buf[g, idx[g, j]] = src[g, j]`` for a [g, T, d] buffer."""
    buf.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, buf.shape[-1]), src)
