"""LLaDA configuration, read from the hub's ``config.json`` with its own key names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


class FileConfig:
    """A dataclass of a family's ``config.json`` fields under the file's own names: keys it does not model
    are kept in ``extra`` and written back, so a saved checkpoint keeps what the hub file said."""

    model_type: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        cfg.extra = {k: v for k, v in raw.items() if k not in names}
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        out.update(self.extra)
        out.setdefault("model_type", self.model_type)
        out.setdefault("architectures", list(self.architectures))
        return out

    def validate(self) -> None:
        raise NotImplementedError

    @staticmethod
    def check_choices(checks: dict[str, tuple[Any, set[Any]]]) -> None:
        """``{name: (value, allowed)}``: one error naming the first unsupported setting and the valid ones."""
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config.json: {name}={value!r} is not supported; valid choices: {sorted(map(str, allowed))}")


@dataclass
class LLaDAConfig(FileConfig):
    """The subset of LLaDA's ``config.json`` the network needs; names are the file's own."""

    model_type: ClassVar[str] = "llada"
    architectures: ClassVar[tuple[str, ...]] = ("LLaDAModelLM",)

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
            raise ValueError(f"config.json: d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads} are inconsistent")


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
