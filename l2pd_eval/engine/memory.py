"""How many rows fit on the GPU: the harness picks the batch instead of failing with an OOM mid-run."""

from __future__ import annotations

import torch

from l2pd_eval.caches import MAX_GRAPHS, cache_class
from l2pd_eval.engine.config import GenerationConfig
from l2pd_eval.engine.predict import AFTER_CHUNK
from l2pd_eval.engine.speed import SpeedConfig
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.policies.base import ForwardExtras, Policy


def bytes_per_row(model: DiffusionLM, config: GenerationConfig, prompt_len: int, speed: SpeedConfig | None = None,
                  policy: Policy | None = None) -> int:
    """Peak bytes one row adds: the KV cache its strategy keeps + the widest activation of a full forward +
    block logits, with CUDA graphs the block logits each kept graph holds (bound: every graph at full
    batch), the logits after the block where EoTP "true" searches them, and what the strategy keeps or
    projects besides (``extra_bytes_per_row``: iteration smoothing's). A ``policy`` (bound, as ``generate``
    binds it) adds what its forwards compute beyond the block (``Policy.forward_extras``): its query slots
    in the cache's scratch and the forward's width, its copy's logits with their float32 work, its view's."""
    c, t = model.config, prompt_len + config.gen_length
    strategy = cache_class(config.cache)
    graphed = (speed or SpeedConfig()).cuda_graph and strategy.cuda_graphs
    elt = torch.finfo(model.dtype).bits // 8
    more = (policy.forward_extras(config.block_length, config.gen_length, model.logit_shift) if policy is not None
            else ForwardExtras())
    kv = 2 * c.n_layers * c.kv_heads * c.head_dim * strategy.kv_positions(t + more.slots) * elt
    act = (t + more.slots) * (3 * c.mlp_width + 4 * c.d_model) * elt  # MLP gate/up projections, product + residual
    rows = config.block_length + more.copy_rows  # the block and its copy: logits + float32 softmax work
    logits = rows * c.vocab_size * (elt + 3 * 4)
    after = more.view_rows  # logit rows outside the block: the view, or EoTP's tail (the view holds the tail)
    graphs = MAX_GRAPHS * (rows + after) * c.vocab_size * elt if graphed else 0
    chunk = 0  # EoTP "true" with logits_after also projects the answer after the block (statistics by chunk)
    if config.eotp == "true" and strategy.logits_after:
        after, chunk = max(after, config.gen_length - config.block_length), AFTER_CHUNK * c.vocab_size * 3 * 4
    extra = strategy.extra_bytes_per_row(c, t, strategy.Params(**config.cache_params), elt)
    return kv + act + logits + graphs + after * c.vocab_size * elt + chunk + extra


def largest_batch(model: DiffusionLM, config: GenerationConfig, prompt_len: int, cap: int = 64,
                  headroom: float = 0.9, speed: SpeedConfig | None = None, policy: Policy | None = None) -> int:
    """Rows that fit in the device's free memory at ``config`` (1 off a GPU), at most ``cap``."""
    if model.device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(1, min(cap, int(free * headroom) // bytes_per_row(model, config, prompt_len, speed, policy)))
