"""LLaDA: its ``config.json`` (:class:`LLaDAConfig`) and its network (bidirectional LLaMA-style transformer).

Module names mirror the hub checkpoint (``model.transformer.blocks.{i}.q_proj`` ...), so a state dict
loads without renaming. The cache is a per-layer buffer over the *whole* sequence: a forward over the
chunk ``[start, start + n)`` writes its fresh keys/values into that slice and attends to ``[:kv_len]``.
Prefix cache and dual cache are then the same call with a different chunk (see ``l2pd_eval.caches``).
Norm, rotary, cache and init are the families' shared ones (``model/layers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from l2pd_eval.errors import ConfigError
from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.layers import KVCache, MaskPredictor, RMSNorm, Rotary, project_heads
from l2pd_eval.model.skinny import swiglu


@dataclass
class LLaDAConfig(FileConfig):
    """The subset of LLaDA's ``config.json`` the network needs; names are the file's own."""

    model_type: ClassVar[str] = "llada"
    architectures: ClassVar[tuple[str, ...]] = ("LLaDAModelLM",)
    sizes: ClassVar[tuple[str, ...]] = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "mlp_ratio",
                                        "vocab_size", "embedding_size", "max_sequence_length")
    context_key: ClassVar[str] = "max_sequence_length"

    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    mlp_hidden_size: int | None = 12288
    mlp_ratio: int = 4
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    include_bias: bool = False
    activation_type: str = "silu"
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    scale_logits: bool = False
    mask_token_id: int | None = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = None
    init_std: float = 0.02
    # Switches of LLaDA's own config class whose other values would make another network than the one
    # computed here (``validate`` rejects them); written out so LLaDA's remote code builds this same net.
    rope: bool = True
    rope_full_precision: bool = True
    alibi: bool = False
    attention_layer_norm: bool = False
    input_emb_norm: bool = False
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = False
    include_qkv_bias: bool = False
    clip_qkv: float | None = None
    multi_query_attention: bool | None = None
    block_group_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # The rest of LLaDA's config class, with the values of GSAI-ML/LLaDA-8B-Instruct's config.json: none
    # changes what the network computes at inference.
    REMOTE_CODE: ClassVar[dict[str, Any]] = {
        "alibi_bias_max": 8.0, "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
        "attention_layer_norm_with_affine": True, "flash_attention": False, "init_device": "meta",
        "init_fn": "mitchell", "init_cutoff_factor": None, "precision": "amp_bf16", "use_cache": False,
    }

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def mlp_width(self) -> int:  # the family-neutral name (Qwen2-style configs use hidden_size for the model width)
        return self.hidden_size

    @property
    def padded_vocab(self) -> int:
        return self.embedding_size or self.vocab_size

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> LLaDAConfig:
        vocab = len(tokenizer)
        return cls.from_dict({**fields, "vocab_size": vocab, "embedding_size": vocab, "init_std": init_std,
                              "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
                              "pad_token_id": tokenizer.pad_token_id})

    def to_dict(self) -> dict[str, Any]:
        """The full config LLaDA's own code reads (its remaining keys from ``REMOTE_CODE`` where the source
        file did not say). No ``auto_map``: a saved folder holds no code files for it to name, and one that
        names the hub makes every ``AutoTokenizer`` load of the folder ask to run remote code; LLaDA's
        ``LLaDAModelLM.from_pretrained(DIR)`` reads the folder as it is (docs/conventions.md)."""
        out = super().to_dict()
        out.pop("auto_map", None)
        for key, value in self.REMOTE_CODE.items():
            out.setdefault(key, value)
        return out

    def validate(self) -> None:
        """Reject variants this implementation does not compute, instead of silently computing another net."""
        self.check_choices({
            "block_type": (self.block_type, {"llama"}),
            "layer_norm_type": (self.layer_norm_type, {"rms"}),
            "activation_type": (self.activation_type, {"silu", "swiglu"}),
            "include_bias": (self.include_bias, {False}),
            "scale_logits": (self.scale_logits, {False}),
            "rope": (self.rope, {True}),
            "rope_full_precision": (self.rope_full_precision, {True}),
            "alibi": (self.alibi, {False}),
            "attention_layer_norm": (self.attention_layer_norm, {False}),
            "input_emb_norm": (self.input_emb_norm, {False}),
            "layer_norm_with_affine": (self.layer_norm_with_affine, {True}),
            "bias_for_layer_norm": (self.bias_for_layer_norm, {False, None}),
            "include_qkv_bias": (self.include_qkv_bias, {False}),
            "clip_qkv": (self.clip_qkv, {None}),
            "multi_query_attention": (self.multi_query_attention, {False, None}),
            "block_group_size": (self.block_group_size, {1}),
        })
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ConfigError(f"config.json: d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads} are inconsistent")


# Shapes for random-weight benchmarking (``pretrained=random:<name>``); values from LLaDA-8B's config.json.
PRESETS: dict[str, dict[str, Any]] = {
    "llada-8b": {},
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, vocab_size=320, embedding_size=320,
                 max_sequence_length=1024, rope_theta=10000.0, mask_token_id=None, eos_token_id=None),
    # CPU trials of the real 5-shot tasks (prompts of 1.8-4.5k tokens) with the testbed's 1024-token
    # tokenizer: `pretrained=random:tiny-long,tokenizer=l2pd_eval/testbed/checkpoint` (README, "Trying it").
    "tiny-long": dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, vocab_size=1024, embedding_size=1024,
                      max_sequence_length=8192, rope_theta=10000.0, mask_token_id=None, eos_token_id=None),
}


class Block(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.ff_proj = nn.Linear(d, cfg.hidden_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.hidden_size, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: tuple[Tensor, Tensor] | None, start: int, kv_len: int,
                write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        q, k, v = self.project(self.attn_input(x), cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, self.kv_heads != self.n_heads,
                                split_keys)
        x = x + self.attn_output(att)
        return x + self.mlp_delta(x)

    # the layer's parts (model.layers.LayerParts), which forward is built from
    def attn_input(self, x: Tensor) -> Tensor:
        return self.attn_norm(x)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor,
                parts: str = "qkv") -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return project_heads(h, (self.q_proj, self.k_proj, self.v_proj), self.head_dim, cos, sin, parts)

    def attn_output(self, att: Tensor) -> Tensor:
        b, _, n, _ = att.shape
        return self.attn_out(att.transpose(1, 2).reshape(b, n, -1))

    def mlp_delta(self, x: Tensor) -> Tensor:
        return self.ff_out(swiglu(self.ff_norm(x), self.ff_proj, self.up_proj))


class _Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.d_model),
            blocks=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        ))
        if not cfg.weight_tying:
            self.transformer["ff_out"] = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)


class LLaDA(MaskPredictor):
    """LLaDA mask predictor. ``forward`` returns logits for the requested positions only."""

    logit_shift: ClassVar[int] = 0  # position i is predicted from its own hidden state (Dream: from i - 1)

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.model = _Transformer(cfg)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_sequence_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.transformer.wte

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

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
        """Logits [B, n', V] for the ``logits_slice`` positions of ``input_ids`` occupying absolute positions
        ``[start, start + n)`` (or its ``logits_index`` columns, per row): the contract of
        :meth:`~l2pd_eval.model.interface.DiffusionLM.forward`."""
        x = self.hidden_states(input_ids, position_ids, key_mask, cache, start, kv_len, write_index, split_keys,
                               embed_delta=embed_delta, attn_mask=attn_mask)
        return self.head(self.rows_for(x, logits_slice, logits_index))

    def head(self, h: Tensor) -> Tensor:
        t = self.model.transformer
        weight = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        return self.project(t.ln_f(h), weight)[..., : self.config.vocab_size]
