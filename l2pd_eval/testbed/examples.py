"""The testbed's training examples: its tokenizer, each problem encoded in every prompt format, and the
endless stream of right-padded batches the training loop reads (``testbed/train.py``).

An example is ``prompt + target``: the prompt is never masked; the target is the answer, its terminator
(end-of-text, or end-of-turn + end-of-text after a chat prompt) and end-of-text padding up to a target
length, which is what lets EoTP stop early.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from l2pd_eval.model.family import FAMILIES
from l2pd_eval.model.tokenizer import chat_user_prompt
from l2pd_eval.testbed.data import Problem, format_prompt, iter_problems, make_splits

if TYPE_CHECKING:
    from l2pd_eval.testbed.train import TrainConfig

#: Prompt formats the model is trained on: the task's plain ``Question: ...\nAnswer:`` (what
#: ``lm_eval --tasks l2pd_demo`` sends), the same with a leading BOS, and LLaDA's chat template (what
#: ``--apply_chat_template`` sends). The plain form is the one the targets are measured on.
FORMATS = ("plain", "plain_bos", "chat")


def chat_prompt(tokenizer, question: str) -> str:
    """The prompt lm-eval's ``--apply_chat_template`` produces: one user turn plus the assistant header."""
    return chat_user_prompt(tokenizer, format_prompt(question))


def train_tokenizer(cfg: TrainConfig):
    """Byte-level BPE on training problems (never test ones) in every prompt format."""
    from l2pd_eval.model.tokenizer import build_tokenizer

    train, _ = make_splits(cfg.data_seed, cfg.n_test, cfg.tokenizer_corpus)
    corpus = [f"{format_prompt(p.question)} {p.answer}" for p in train]
    return build_tokenizer(corpus, vocab_size=cfg.vocab_size)


@dataclass
class Special:
    mask: int
    eos: int
    eot: int
    bos: int

    @classmethod
    def of(cls, tokenizer) -> Special:
        llada = FAMILIES["llada"]
        ids = tokenizer.convert_tokens_to_ids([llada.mask_token, llada.eos_token, llada.eot_token, tokenizer.bos_token])
        return cls(*map(int, ids))


def _texts(tokenizer, problem: Problem, fmt: str, chat_frame: tuple[str, str] | None = None) -> tuple[str, str]:
    if fmt == "chat":
        if chat_frame is None:
            return chat_prompt(tokenizer, problem.question), problem.answer
        return chat_frame[0] + format_prompt(problem.question) + chat_frame[1], problem.answer
    if fmt in ("plain", "plain_bos"):
        return format_prompt(problem.question), " " + problem.answer
    raise ValueError(f"format={fmt!r}; valid choices: {', '.join(FORMATS)}")


def _finish(fmt: str, prompt: list[int], answer: list[int], special: Special) -> tuple[list[int], list[int]]:
    if fmt == "chat":
        return prompt, answer + [special.eot, special.eos]
    return ([special.bos, *prompt] if fmt == "plain_bos" else prompt), answer + [special.eos]


def encode(tokenizer, problem: Problem, fmt: str, special: Special) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids ending in its terminator) for one prompt format."""
    prompt, answer = _texts(tokenizer, problem, fmt)
    return _finish(fmt, tokenizer(prompt, add_special_tokens=False).input_ids,
                   tokenizer(answer, add_special_tokens=False).input_ids, special)


def chat_frame(tokenizer) -> tuple[str, str]:
    """The chat template's text before and after the user content, to format prompts without jinja."""
    sentinel = "\x00SENTINEL\x00"
    head, tail = chat_user_prompt(tokenizer, sentinel).split(sentinel)
    return head, tail


def encode_batch(tokenizer, problems: Sequence[Problem], fmts: Sequence[str], special: Special,
                 frame: tuple[str, str] | None = None) -> list[tuple[list[int], list[int]]]:
    """:func:`encode` for many problems through the Rust tokenizer in one call (the data loader's hot path)."""
    frame = chat_frame(tokenizer) if frame is None else frame
    texts = [_texts(tokenizer, p, f, frame) for p, f in zip(problems, fmts, strict=True)]
    enc = tokenizer.backend_tokenizer.encode_batch([t for pair in texts for t in pair], add_special_tokens=False)
    return [_finish(f, enc[2 * i].ids, enc[2 * i + 1].ids, special) for i, f in enumerate(fmts)]


@dataclass
class Batch:
    """Right-padded ``prompt + target`` rows. ``target`` marks the answer + end-of-text region."""

    input_ids: Tensor  # [B, T]
    key_mask: Tensor  # [B, T] bool, False on batch padding
    target: Tensor  # [B, T] bool
    target_len: Tensor  # [B] float

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.input_ids, self.key_mask, self.target, self.target_len)

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in self.tensors()))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self.tensors()))


def collate(rows: Sequence[tuple[list[int], list[int], int]], special: Special) -> Batch:
    """``rows``: (prompt, answer, target length); the answer is padded with end-of-text to that length."""
    for _, answer, n in rows:
        if len(answer) > n:
            raise ValueError(f"answer of {len(answer)} tokens does not fit the target length {n}")
    total = max(len(p) + n for p, _, n in rows)
    ids = torch.tensor([p + a + [special.eos] * (total - len(p) - len(a)) for p, a, _ in rows], dtype=torch.long)
    start = torch.tensor([len(p) for p, _, _ in rows])
    end = start + torch.tensor([n for _, _, n in rows])
    pos = torch.arange(total)
    key = pos < end[:, None]
    return Batch(ids, key, key & (pos >= start[:, None]), (end - start).float())


class ExampleStream(torch.utils.data.IterableDataset):
    """Endless batches of training problems (test questions excluded), deterministic per worker."""

    def __init__(self, cfg: TrainConfig, tokenizer, exclude: list[str]):
        self.cfg, self.tokenizer, self.exclude = cfg, tokenizer, exclude

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        cfg = self.cfg
        # Training problems come from seeds data_seed + 1 + worker; the test split is data_seed's.
        problems = iter_problems(cfg.data_seed + 1 + worker, exclude=self.exclude)
        rng = random.Random(cfg.seed * 1000 + worker)
        special = Special.of(self.tokenizer)
        frame = chat_frame(self.tokenizer)
        while True:
            rows: list[tuple[list[int], list[int], int]] = []
            while len(rows) < cfg.batch_size:
                fmts = rng.choices(FORMATS, weights=cfg.format_probs, k=cfg.batch_size - len(rows))
                chunk = [next(problems) for _ in fmts]
                for prompt, answer in encode_batch(self.tokenizer, chunk, fmts, special, frame):
                    room = cfg.max_sequence_length - len(prompt)
                    if len(answer) > min(room, cfg.max_target_length):
                        continue  # only with a tiny tokenizer: such rows could never be decoded either
                    n = cfg.gen_length
                    if rng.random() >= cfg.fixed_length_prob:
                        # Other lengths too, so the model is not tied to one gen_length.
                        n = rng.randint(len(answer) + 1, max(len(answer) + 1, cfg.max_target_length))
                    rows.append((prompt, answer, min(max(n, len(answer)), room)))
            yield collate(rows, special)
