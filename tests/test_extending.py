"""Adding a model family is one model file and one family entry (docs/extending.md, "Add a model family").

The "model file" is written here: a config dataclass under its own (made-up) ``config.json`` key names and
a small network on the shared floor (``model.layers``) that implements ``model.interface.DiffusionLM``. One
``register_family`` call later, the project's own code writes its tiny checkpoint, loads it by its
``model_type``, resolves its special ids and decodes it through ``engine.generate`` with every cache, and
nothing outside this file names the family."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from policy_cases import cache_names
from safetensors.torch import load_file
from torch import Tensor, nn

from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.attention import attend_over_cache
from l2pd_eval.model.config import FileConfig
from l2pd_eval.model.family import Family, family_of, register_family, unregister_family
from l2pd_eval.model.layers import KVCache, MaskPredictor, RMSNorm, Rotary
from l2pd_eval.model.tiny import write_tiny
from l2pd_eval.model.tokenizer import LLADA_STYLE
from l2pd_eval.policies import get_policy

# --- the model file ---------------------------------------------------------------------------------------


@dataclass
class ToyConfig(FileConfig):
    """config.json of the toy family, under its own key names; the properties give the neutral ones."""

    model_type: ClassVar[str] = "toy-dlm"
    architectures: ClassVar[tuple[str, ...]] = ("ToyDLM",)

    width: int = 32
    depth: int = 2
    heads: int = 4
    ffn: int = 64
    vocab: int = 320
    context: int = 256
    theta: float = 10000.0
    eps: float = 1e-6
    std: float = 0.02
    mask_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    d_model = property(lambda self: self.width)
    n_layers = property(lambda self: self.depth)
    n_heads = kv_heads = property(lambda self: self.heads)
    head_dim = property(lambda self: self.width // self.heads)
    mlp_width = property(lambda self: self.ffn)
    vocab_size = padded_vocab = property(lambda self: self.vocab)
    max_sequence_length = property(lambda self: self.context)
    init_std = property(lambda self: self.std)
    mask_token_id = property(lambda self: self.mask_id)
    eos_token_id = property(lambda self: self.eos_id)

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"config.json: width={self.width} is not a multiple of heads={self.heads}")

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, init_std: float, **fields: Any) -> ToyConfig:
        return cls.from_dict({**fields, "vocab": len(tokenizer), "std": init_std, "mask_id": tokenizer.mask_token_id,
                              "eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id})


class ToyLayer(nn.Module):
    """Pre-norm attention (one fused q/k/v projection) and a GELU MLP."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.attn_norm, self.mlp_norm = RMSNorm(cfg.width, cfg.eps), RMSNorm(cfg.width, cfg.eps)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.out = nn.Linear(cfg.width, cfg.width, bias=False)
        self.up, self.down = nn.Linear(cfg.width, cfg.ffn), nn.Linear(cfg.ffn, cfg.width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None,
                start: int, kv_len: int, write_index: Tensor | None = None, split_keys: bool = True) -> Tensor:
        q, k, v = self.project(self.attn_input(x), cos, sin)
        att = attend_over_cache(q, k, v, mask, cache, start, kv_len, write_index, False, split_keys)
        x = x + self.attn_output(att)
        return x + self.mlp_delta(x)

    # its parts (model.layers.LayerParts), for the strategies that run their own layer loop (dllm_cache)
    def attn_input(self, x: Tensor) -> Tensor:
        return self.attn_norm(x)

    def project(self, h: Tensor, cos: Tensor, sin: Tensor, parts: str = "qkv") -> tuple:
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        return tuple(t if p in parts else None for p, t in zip("qkv", (q, k, v), strict=True))

    def attn_output(self, att: Tensor) -> Tensor:
        b, _, n, _ = att.shape
        return self.out(att.transpose(1, 2).reshape(b, n, -1))

    def mlp_delta(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(self.mlp_norm(x))))


class Toy(MaskPredictor):
    """Token embedding tied to the output head; position i predicted from its own hidden state."""

    logit_shift: ClassVar[int] = 0

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.width)
        self.layers = nn.ModuleList(ToyLayer(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.eps)
        self.rotary = Rotary(cfg.head_dim, cfg.theta, cfg.context)

    token_embedding = property(lambda self: self.embed)
    blocks = property(lambda self: self.layers)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, key_mask: Tensor | None = None, *,
                cache: KVCache | None = None, start: int = 0, kv_len: int | None = None,
                logits_slice: slice | None = None, write_index: Tensor | None = None,
                split_keys: bool = True, logits_index: Tensor | None = None) -> Tensor:
        x = self.hidden_states(input_ids, position_ids, key_mask, cache, start, kv_len, write_index, split_keys)
        if logits_index is not None:  # a chunk gathered per row (dkv_decode): its columns, per row
            x = self.gather_rows(x, logits_index)
        elif logits_slice is not None:
            x = x[:, logits_slice]
        return self.head(x)

    def head(self, h: Tensor) -> Tensor:
        return F.linear(self.norm(h), self.embed.weight)


# --- the family entry -------------------------------------------------------------------------------------

TOY = Family(name="toy", config_class=ToyConfig, model_class=Toy, presets={"toy-tiny": {}}, tiny_preset="toy-tiny",
             tokenizer_style=LLADA_STYLE, mask_token="<|mdm_mask|>", eos_token="<|endoftext|>",
             eot_token="<|eot_id|>", eot_id=None, add_bos=False, instruct_marker=None, paper_drop_ids=())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy family registered for this module's tests, and its tiny checkpoint as the project writes it."""
    register_family(TOY)
    try:
        yield write_tiny("toy", tmp_path_factory.mktemp("toy"), seed=0)
    finally:
        unregister_family("toy")


def test_the_checkpoint_is_the_familys_own_format(toy):
    cfg = json.loads((toy / "config.json").read_text())
    assert cfg["model_type"] == "toy-dlm" and cfg["architectures"] == ["ToyDLM"]
    assert {"width", "depth", "heads", "vocab", "mask_id"} <= set(cfg) and "d_model" not in cfg
    assert {"embed.weight", "layers.0.qkv.weight", "layers.1.down.bias", "norm.weight"} <= set(
        load_file(str(toy / "model.safetensors")))


def test_it_loads_by_model_type_with_its_special_ids(toy):
    model, tok = load_model(str(toy), dtype="float64"), load_tokenizer(toy)
    assert isinstance(model, Toy) and model.dtype == torch.float64 and family_of(model.config) is TOY
    assert family_of(model.config).attention == "bidirectional"
    special = SpecialIds.resolve(tok, model.config)
    assert (special.mask, special.eos) == (model.config.mask_id, model.config.eos_id)
    assert special.end_ids == (special.eos, tok.convert_tokens_to_ids("<|eot_id|>"))
    assert type(load_model("random:toy-tiny")) is Toy


@pytest.mark.parametrize("cache", cache_names())
@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_it_decodes_through_the_engine_with_every_cache_batched_as_alone(toy, policy, cache):
    model, tok = load_model(str(toy), dtype="float64"), load_tokenizer(toy)
    special = SpecialIds.resolve(tok, model.config)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("Question: 3 + 4 = ?", "Hi there")]
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache)
    out = generate(model, prompts, cfg, get_policy(policy), special)
    assert out.tokens.shape == (2, 16) and not (out.tokens == special.mask).any()
    assert all(s.nfe > 0 for s in out.stats)
    for row, prompt in enumerate(prompts):
        assert torch.equal(generate(model, [prompt], cfg, get_policy(policy), special).tokens[0], out.tokens[row])
