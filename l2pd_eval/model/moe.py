"""A mixture-of-experts MLP whose experts run as grouped GEMMs, under the checkpoint's per-expert key names.

The hub checkpoints store each expert as three matrices (``experts.{j}.gate_proj.weight`` ...). Here the
experts of a layer are two stacked parameters, ``gate_up`` [E, 2F, d] (gate rows, then up rows) and
``down`` [E, d, F], so one step computes every expert with two grouped matrix products over the token-expert
pairs sorted by expert (``torch._grouped_mm``; no Python loop over experts). The state dict keeps the
checkpoint's names: :class:`Experts` splits its stacks into per-expert views when saved and stacks the
per-expert matrices when loaded, so loading needs no key mapping and saved files are the hub's layout.

Which kernel: ``torch._grouped_mm`` where it runs (CUDA bf16; CPU float32/bf16/fp16; rows 16-byte aligned),
else :func:`_padded_grouped` (the pairs padded per expert to the largest group, one batched matmul: one host
sync per call, for float64 and other dtypes the grouped kernel lacks). :meth:`Experts.dense` computes the
same layer with every expert on every token: the reference the bench and the tests compare against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUPED_DTYPES = {"cuda": (torch.bfloat16,), "cpu": (torch.float32, torch.bfloat16, torch.float16)}


def grouped_mm_runs(x: Tensor, weight: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` takes ``x`` [P, K] times ``weight`` [E, N, K] transposed on this device:
    a dtype its kernel has (under ``torch.compile`` bf16 only: its meta function's rule) and rows of a
    multiple of 16 bytes (its stride rule)."""
    if not hasattr(torch, "_grouped_mm") or x.dtype not in GROUPED_DTYPES.get(x.device.type, ()):
        return False
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False
    size = x.element_size()
    return all((n * size) % 16 == 0 for n in weight.shape[1:])


def _padded_grouped(x: Tensor, weight: Tensor, ends: Tensor) -> Tensor:
    """``x`` [P, K] (rows grouped by expert, group e ending at ``ends[e]``) times ``weight[e]``^T per group,
    as one batched matmul over groups padded to the largest one."""
    counts = torch.diff(ends, prepend=ends.new_zeros(1)).long()
    starts = ends.long() - counts
    group = torch.repeat_interleave(torch.arange(len(ends), device=x.device), counts, output_size=x.shape[0])
    slot = torch.arange(x.shape[0], device=x.device) - starts[group]
    padded = x.new_zeros(len(ends), int(counts.max()), x.shape[1])  # the one host sync
    padded[group, slot] = x
    return torch.bmm(padded, weight.transpose(1, 2))[group, slot]


def grouped_linear(x: Tensor, weight: Tensor, ends: Tensor) -> Tensor:
    """Rows of ``x`` [P, K] sorted by expert (expert e's rows end at ``ends[e]``, int32) through
    ``weight[e]`` [N, K] (``nn.Linear``'s layout): [P, N]."""
    if grouped_mm_runs(x, weight):
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=ends)
    if x.is_cuda and torch.cuda.is_current_stream_capturing():  # the fallback's host sync cannot be captured
        raise ValueError(f"dtype={x.dtype}: a mixture-of-experts model replays CUDA graphs only in bfloat16 "
                         "(torch._grouped_mm's dtype on CUDA); pass dtype=bfloat16 or cuda_graph=false")
    return _padded_grouped(x, weight, ends)


class Experts(nn.Module):
    """``num_experts`` SwiGLU experts of width ``width`` (a hub checkpoint's ``mlp.experts``)."""

    def __init__(self, num_experts: int, d_model: int, width: int):
        super().__init__()
        self.num_experts, self.width = num_experts, width
        self.gate_up = nn.Parameter(torch.empty(num_experts, 2 * width, d_model))
        self.down = nn.Parameter(torch.empty(num_experts, d_model, width))
        self.register_state_dict_post_hook(Experts._per_expert_names)
        self.register_load_state_dict_pre_hook(Experts._stacked_names)

    def forward(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """``x`` [T, d] through each token's experts ``experts`` [T, k], summed with ``weights`` [T, k] in
        ``weights``' dtype (LLaDA2.0 weighs and sums in float32), returned in ``x``'s."""
        t, k = experts.shape
        flat = experts.flatten()
        order = torch.argsort(flat, stable=True)  # token-expert pairs, grouped by expert
        ends = torch.searchsorted(flat[order], torch.arange(self.num_experts, device=x.device), right=True)
        ends = ends.to(torch.int32)
        hidden = grouped_linear(x[order // k], self.gate_up, ends)
        gate, up = hidden.split(self.width, dim=-1)
        out = grouped_linear(F.silu(gate) * up, self.down, ends)
        pairs = torch.empty_like(out).index_copy_(0, order, out)  # back to (token, slot) order
        return (pairs.to(weights.dtype).view(t, k, -1) * weights.unsqueeze(-1)).sum(1).to(x.dtype)

    def dense(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """The same layer with every expert on every token, the unselected ones weighted zero."""
        hidden = torch.einsum("td,efd->tef", x, self.gate_up)
        gate, up = hidden.split(self.width, dim=-1)
        out = torch.einsum("tef,edf->ted", F.silu(gate) * up, self.down)
        dense_weights = torch.zeros(x.shape[0], self.num_experts, dtype=weights.dtype, device=x.device)
        dense_weights.scatter_(1, experts, weights)
        return (out.to(weights.dtype) * dense_weights.unsqueeze(-1)).sum(1).to(x.dtype)

    # The checkpoint's names <-> the stacks -------------------------------------------------------------

    @staticmethod
    def _per_expert_names(module: Experts, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        gate_up, down = state.pop(prefix + "gate_up"), state.pop(prefix + "down")
        f = module.width
        for j in range(module.num_experts):
            state[f"{prefix}{j}.gate_proj.weight"] = gate_up[j, :f]
            state[f"{prefix}{j}.up_proj.weight"] = gate_up[j, f:]
            state[f"{prefix}{j}.down_proj.weight"] = down[j]

    @staticmethod
    def _stacked_names(module: Experts, state: dict[str, Any], prefix: str, *args: Any) -> None:
        names = [f"{prefix}{j}.{p}.weight" for j in range(module.num_experts) for p in ("gate_proj", "up_proj")]
        if not all(n in state for n in names):
            return  # missing keys: load_state_dict names them
        state[prefix + "gate_up"] = torch.stack([
            torch.cat([state.pop(f"{prefix}{j}.gate_proj.weight"), state.pop(f"{prefix}{j}.up_proj.weight")])
            for j in range(module.num_experts)])
        downs = [f"{prefix}{j}.down_proj.weight" for j in range(module.num_experts)]
        if all(n in state for n in downs):
            state[prefix + "down"] = torch.stack([state.pop(n) for n in downs])
