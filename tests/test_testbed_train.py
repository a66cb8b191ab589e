"""Testbed training: example encoding, the LLaDA SFT objective, a CPU training run end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from l2pd_eval.testbed import data
from l2pd_eval.testbed import examples as ex
from l2pd_eval.testbed import train as tb

TINY = dict(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, vocab_size=400, tokenizer_corpus=300,
            n_test=6, batch_size=6, warmup=1, eval_every=0, eval_size=6, workers=0)


@pytest.fixture(scope="module")
def tokenizer():
    return ex.train_tokenizer(tb.TrainConfig(**TINY))


@pytest.fixture(scope="module")
def special(tokenizer):
    return ex.Special.of(tokenizer)


class Spy(torch.nn.Module):
    """Wraps a real LLaDA and keeps the inputs of its last forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seen = None

    def forward(self, input_ids, **kw):
        self.seen = input_ids.clone()
        return self.model(input_ids, **kw)


def test_encoding_formats_and_fast_path(tokenizer, special):
    problems = data.generate(5, 12)
    for fmt in ex.FORMATS:
        slow = [ex.encode(tokenizer, p, fmt, special) for p in problems]
        assert ex.encode_batch(tokenizer, problems, [fmt] * len(problems), special) == slow
    p = problems[0]
    plain, ans = ex.encode(tokenizer, p, "plain", special)
    assert tokenizer.decode(plain) == data.format_prompt(p.question)
    assert ans[-1] == special.eos and tokenizer.decode(ans[:-1]) == " " + p.answer
    assert ex.encode(tokenizer, p, "plain_bos", special)[0] == [special.bos, *plain]
    chat, chat_ans = ex.encode(tokenizer, p, "chat", special)
    assert tokenizer.decode(chat) == ex.chat_prompt(tokenizer, p.question)
    assert chat_ans[-2:] == [special.eot, special.eos]
    with pytest.raises(ValueError, match="valid choices"):
        ex.encode(tokenizer, p, "markdown", special)


def test_collate_pads_answers_with_end_of_text(special):
    batch = ex.collate([([5, 6, 7], [8, 9, special.eos], 6), ([5], [8, special.eos], 4)], special)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, special.eos, special.eos, special.eos, special.eos],
                                        [5, 8, special.eos, special.eos, special.eos, special.eos, special.eos,
                                         special.eos, special.eos]]
    assert batch.target.int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch.key_mask.int().tolist() == [[1] * 9, [1] * 5 + [0] * 4]
    assert batch.target_len.tolist() == [6.0, 4.0]
    with pytest.raises(ValueError, match="does not fit"):
        ex.collate([([5], [8, 9, 10], 2)], special)


def _batch(tokenizer, special, n=6, seed=0):
    cfg = tb.TrainConfig(**{**TINY, "batch_size": n, "seed": seed})
    return next(iter(ex.ExampleStream(cfg, tokenizer, [])))


def test_sft_loss_masks_only_the_answer_region(tokenizer, special):
    cfg = tb.TrainConfig(**TINY)
    spy = Spy(tb.build_model(cfg, tokenizer, "cpu"))
    batch = _batch(tokenizer, special)
    gen = torch.Generator().manual_seed(0)
    tb.sft_loss(spy, batch, special.mask, eps=1e-3, generator=gen)
    masked = spy.seen == special.mask
    assert masked.any()
    assert not (masked & ~batch.target).any()  # prompt and batch padding never masked
    assert (spy.seen[~masked] == batch.input_ids[~masked]).all()


def test_sft_loss_is_ce_over_target_length_when_everything_is_masked(tokenizer, special):
    """t -> 1 masks every target token with weight 1/t = 1: the loss is each row's summed CE over its
    target divided by the target length, averaged over rows (LLaDA's SFT normalisation)."""
    cfg = tb.TrainConfig(**TINY)
    model = tb.build_model(cfg, tokenizer, "cpu").double()
    batch = _batch(tokenizer, special)
    loss = tb.sft_loss(model, batch, special.mask, eps=1 - 1e-12, generator=torch.Generator().manual_seed(1))
    noisy = torch.where(batch.target, special.mask, batch.input_ids)
    logits = model(noisy, key_mask=batch.key_mask)
    ce = F.cross_entropy(logits.flatten(0, 1), batch.input_ids.flatten(), reduction="none").view_as(noisy)
    want = ((ce * batch.target).sum(1) / batch.target_len.double()).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_training_steps_reduce_the_loss(tokenizer, special):
    torch.manual_seed(0)
    cfg = tb.TrainConfig(**TINY)
    model = tb.build_model(cfg, tokenizer, "cpu").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _batch(tokenizer, special, n=4)

    def loss_now():  # same masks every time: a deterministic objective on one batch
        return tb.sft_loss(model, batch, special.mask, 1e-3, torch.Generator().manual_seed(3))

    first = loss_now().item()
    for _ in range(25):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < 0.7 * first


def test_lr_schedule_warms_up_and_decays():
    cfg = tb.TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [tb.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_config_validation_names_the_argument():
    with pytest.raises(ValueError, match="gen_length"):
        tb.TrainConfig(gen_length=100, block_length=32).validate()
    with pytest.raises(ValueError, match="save_dtype"):
        tb.TrainConfig(save_dtype="int8").validate()
    with pytest.raises(SystemExit):
        tb.main(["--out", "x", "--device", "tpu"])


def test_reference_decoder_matches_the_engine(tiny, prompts):
    """The training monitor's decoder and the engine's low_confidence policy are the same algorithm."""
    from l2pd_eval.engine import GenerationConfig, generate
    from l2pd_eval.policies import get_policy

    model, _, special = tiny
    ours = tb.vanilla_decode(model, prompts, 32, 8, special.mask, special.eos)
    theirs = generate(model, prompts, GenerationConfig(gen_length=32, block_length=8),
                      get_policy("low_confidence"), special).tokens
    assert torch.equal(ours.cpu(), theirs)
    assert len(set(ours.flatten().tolist())) > 3  # a non-trivial comparison


def test_train_end_to_end_writes_a_loadable_llada_directory(tmp_path):
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer

    cfg = tb.TrainConfig(**{**TINY, "steps": 2, "save_dtype": "bfloat16"})
    meta = tb.train(cfg, tmp_path / "ckpt", "cpu", log=lambda *_: None)
    out = tmp_path / "ckpt"
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= {p.name for p in out.iterdir()}
    model = load_model(str(out), dtype="float32")
    tok = load_tokenizer(out)
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "llada" and raw["torch_dtype"] == "bfloat16"
    assert (model.config.d_model, model.config.n_layers, model.config.vocab_size) == (32, 2, len(tok))
    assert any(k.startswith("model.transformer.blocks.0.") for k in model.state_dict())
    special = SpecialIds.resolve(tok, model.config)
    assert special.mask == model.config.mask_token_id and special.eos == model.config.eos_token_id
    assert "<|start_header_id|>" in ex.chat_prompt(tok, "hi")
    saved = json.loads((out / "training.json").read_text())
    assert saved["config"]["data_seed"] == data.DEFAULT_TEST_SEED and saved["config"]["steps"] == 2
    assert saved["final_eval"]["n"] == 6 and 0.0 <= saved["final_eval"]["accuracy"] <= 1.0
    assert meta["first_loss"] > 0


def test_reproduce_command_parses_back_to_the_same_config():
    import dataclasses
    import shlex

    cfg = tb.TrainConfig(**{**TINY, "steps": 123, "format_probs": (0.5, 0.25, 0.25), "lr": 7e-4})
    args = tb._parser().parse_args(shlex.split(tb.reproduce_command(cfg))[3:])
    names = {f.name for f in dataclasses.fields(tb.TrainConfig)}
    assert tb.TrainConfig(**{k: v for k, v in vars(args).items() if k in names}) == cfg
