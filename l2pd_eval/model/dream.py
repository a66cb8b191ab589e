"""Dream network (Qwen2 layout run bidirectionally) behind the families' interface (``model/interface.py``).

Module names mirror the hub checkpoint (``model.layers.{i}.self_attn.q_proj`` ..., ``lm_head``), so its
state dict loads without renaming. Norm, rotary, KV cache and init are the families' shared ones
(``model/layers.py``: the same math as Qwen2's, RMSNorm statistics in float32, split-half rotary); what
differs from LLaDA is q/k/v biases, grouped KV heads, the Qwen2 key names and the shifted logits.

Shifted logits. Dream predicts the token at position ``i`` from the hidden state at ``i - 1`` (its
generation code shifts the logits right by one and repeats position 0's). ``forward`` hides this: for
``logits_slice = [a, b)`` it returns the predictions FOR chunk positions ``a .. b-1``, read from the hidden
states at ``a-1 .. b-2``, so the engine, policies and loglikelihood use both families alike. A cached step
must therefore include the position just before its block in its chunk: the caches start the chunk at
``block_start - logit_shift`` and ask for ``logits_slice = [logit_shift, logit_shift + block)``. That one
extra query position's fresh keys/values overwrite its cache slot, like the rest of the chunk.

Source of the choice: Fast-dLLM's Dream cache (``dream/model/generation_utils_block.py`` in NVlabs/Fast-dLLM)
runs the cached chunk from the block start and shifts inside the chunk, so the block's first position gets
the hidden state of that position itself; it gets away with it because the refresh step always commits the
block's first token. Our engine makes no such commit, so the chunk starts one position earlier instead,
which gives every block position its true predecessor and, at the first step of a block, exactly the full
forward's predictions. Position 0 of a sequence (no predecessor) repeats its own, as Dream's code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from l2pd_eval.errors import ConfigError
from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.layers import (
    KVCache,
    MaskPredictor,
    PreNormLayer,
    RMSNorm,
    Rotary,
    project_heads,
    slices_of,
)
from l2pd_eval.model.skinny import swiglu


@dataclass
class DreamConfig(FileConfig):
    """The subset of Dream's ``config.json`` the network needs; names are the file's own (Qwen2's).

    The properties give the family-neutral names the engine, KV cache and benchmarks read (``n_layers``,
    ``kv_heads``, ``head_dim``, ``max_sequence_length``, ...). Note ``hidden_size`` is the model width here,
    as in Qwen2; the MLP width is ``intermediate_size`` (``mlp_width`` in both families)."""

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    max_position_embeddings: int = 131072
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    rope_scaling: dict[str, Any] | None = None
    mask_token_id: int | None = 151666
    eos_token_id: int | None = 151643
    pad_token_id: int | None = 151643
    bos_token_id: int | None = None
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    model_type: ClassVar[str] = "Dream"
    architectures: ClassVar[tuple[str, ...]] = ("DreamModel",)
    sizes: ClassVar[tuple[str, ...]] = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "vocab_size", "max_position_embeddings")
    context_key: ClassVar[str] = "max_position_embeddings"

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size

    @property
    def padded_vocab(self) -> int:  # embedding rows (Qwen2 pads vocab_size itself: 152064 rows)
        return self.vocab_size

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @property
    def init_std(self) -> float:
        return self.initializer_range

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> DreamConfig:
        return cls.from_dict({**fields, "vocab_size": len(tokenizer), "initializer_range": init_std,
                              "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id})

    def validate(self) -> None:
        """Reject variants this implementation does not compute, instead of silently computing another net."""
        self.check_choices({
            "hidden_act": (self.hidden_act, {"silu"}),
            "use_sliding_window": (self.use_sliding_window, {False}),
            "rope_scaling": (self.rope_scaling, {None}),
        })
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.kv_heads:
            raise ConfigError(f"config.json: hidden_size={self.hidden_size}, num_attention_heads="
                              f"{self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads} are inconsistent")


# Shapes for random-weight runs (``pretrained=random:<name>``); dream-7b from Dream-v0-*-7B's config.json.
PRESETS: dict[str, dict[str, Any]] = {
    "dream-7b": {},
    "dream-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, max_position_embeddings=1024, rope_theta=10000.0,
                       mask_token_id=None, eos_token_id=None, pad_token_id=None),
}


class Attention(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(cfg.n_heads * hd, d, bias=False)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int, write_index: Tensor | None,
                split_keys: bool = True) -> Tensor:
        q, k, v = self.project(h, cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        return self.output(att)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor,
                parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return project_heads(h, (self.q_proj, self.k_proj, self.v_proj), self.head_dim, cos, sin, parts)

    def output(self, att: Tensor) -> Tensor:
        b, _, n, _ = att.shape
        return self.o_proj(att.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_width, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.down_proj(swiglu(h, self.gate_proj, self.up_proj))


class Layer(PreNormLayer):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)



class _Backbone(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


def _shifted_rows(n: int, logits_slice: slice | None, first_is_sequence_start: bool) -> tuple[int, int, bool]:
    """Hidden-state rows ``[lo, hi)`` that predict ``logits_slice`` of an ``n``-position chunk, and whether
    position 0's prediction (its own row, Dream's convention) must be put in front."""
    a, b, step = (logits_slice or slice(None)).indices(n)
    if step != 1 or b <= a:
        raise ValueError(f"logits_slice={logits_slice!r} must be a non-empty contiguous slice of the {n}-position chunk")
    if a > 0:
        return a - 1, b - 1, False
    if not first_is_sequence_start:
        raise ValueError("Dream's prediction for a chunk's first position comes from the position before the "
                         "chunk: start a cached chunk at block_start - model.logit_shift and pass "
                         "logits_slice=slice(model.logit_shift, model.logit_shift + block_length)")
    return 0, b - 1, True


class Dream(MaskPredictor):
    """Dream mask predictor. ``forward`` returns the predictions for the requested positions only."""

    logit_shift: ClassVar[int] = 1  # a chunk's first prediction needs the hidden state one position earlier

    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.config = cfg
        self.model = _Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        key_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        start: int = 0,
        kv_len: int | None = None,
        logits_slice: slice | tuple[slice, ...] | None = None,
        write_index: Tensor | None = None,
        split_keys: bool = True,
        embed_delta: Tensor | None = None,
        attn_mask: Tensor | None = None,
        logits_index: Tensor | None = None,
    ) -> Tensor:
        """Predictions [B, n', V] for the ``logits_slice`` positions of the chunk ``input_ids`` at absolute
        positions ``[start, start + n)``: the contract of :meth:`~l2pd_eval.model.interface.DiffusionLM.forward`.
        The slice must not start at the chunk's first position unless the chunk starts the sequence (see
        the module docstring); several slices are each read one row earlier, the same way. ``logits_index``
        names hidden-state columns themselves (the caller picked each prediction's predecessor), so no shift
        is applied to it."""
        if cache is None and start != 0:
            raise ValueError("start must be 0 without a cache")
        x = self.hidden_states(input_ids, position_ids, key_mask, cache, start, kv_len, write_index, split_keys,
                               embed_delta=embed_delta, attn_mask=attn_mask)
        if logits_index is not None:
            return self.head(self.gather_rows(x, logits_index))
        n, sequence_start = input_ids.shape[1], start == 0 and write_index is None
        rows = [_shifted_rows(n, part, sequence_start) for part in slices_of(logits_slice)]
        parts = [torch.cat([x[:, :1], x[:, lo:hi]], dim=1) if first else x[:, lo:hi]  # position 0: itself
                 for lo, hi, first in rows]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return self.head(x)

    def head(self, h: Tensor) -> Tensor:
        weight = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return self.project(self.model.norm(h), weight)
