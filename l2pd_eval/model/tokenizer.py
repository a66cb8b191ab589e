"""Build a small byte-level BPE fast tokenizer with a model family's special tokens and chat template.

Used for the tiny test checkpoints and the embedded testbed model, so they go through the same
``AutoTokenizer`` + ``apply_chat_template`` path as LLaDA-8B-Instruct (or Dream-v0-Instruct-7B).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>",
                  "<|start_header_id|>", "<|end_header_id|>"]

# LLaDA-Instruct's template shape: bos, header-wrapped role, blank line, content, end-of-turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def chat_user_prompt(tokenizer, content: str) -> str:
    """How an Instruct dLLM is asked: ``content`` as one user turn, then the assistant header to answer under.
    The one place this rule is written (evaluation, likelihood, trajectories and the testbed all use it)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def chat_opening(tokenizer) -> str | None:
    """The special token every chat-rendered prompt starts with (LLaDA's template: its bos; Dream's ChatML:
    ``<|im_start|>``), by which a context lm-eval already rendered (--apply_chat_template) is recognised.
    Without a chat template, or one that opens with plain text, the bos token (or None)."""
    bos = getattr(tokenizer, "bos_token", None)
    if not getattr(tokenizer, "chat_template", None):
        return bos
    ids = tokenizer(chat_user_prompt(tokenizer, "x"), add_special_tokens=False)["input_ids"]
    first = tokenizer.convert_ids_to_tokens(ids[0]) if ids else None
    return first if first in tokenizer.all_special_tokens else bos


DEFAULT_CORPUS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer: Natalia sold 48/2 = <<48/2=24>>24 "
    "clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72\n"
    "def add(a, b):\n    return a + b\n"
)


@dataclass(frozen=True)
class TokenizerStyle:
    """A family's special tokens (the first ones get the lowest ids) and chat template."""

    special_tokens: tuple[str, ...]
    bos: str
    eos: str
    mask: str
    additional: tuple[str, ...]
    chat_template: str


LLADA_STYLE = TokenizerStyle(tuple(SPECIAL_TOKENS), "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>",
                             ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"), CHAT_TEMPLATE)

# Dream-Instruct's shape (Qwen2's ChatML): no bos in the template, turns closed by <|im_end|>.
DREAM_STYLE = TokenizerStyle(
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"),
    "<|beginoftext|>", "<|endoftext|>", "<|mask|>", ("<|im_start|>", "<|im_end|>"),
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
)


# LLaDA-MoE-Instruct's shape (dInfer's prompts): <role>HUMAN</role>...<|role_end|><role>ASSISTANT</role>.
LLADA_MOE_STYLE = TokenizerStyle(
    ("<|startoftext|>", "<|endoftext|>", "<|mask|>", "<|role_end|>", "<role>", "</role>"),
    "<|startoftext|>", "<|endoftext|>", "<|mask|>", ("<|role_end|>", "<role>", "</role>"),
    "{% for message in messages %}<role>{{ 'HUMAN' if message['role'] == 'user' else message['role'] | upper }}"
    "</role>{{ message['content'] }}<|role_end|>{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>"
    "{% endif %}",
)


# SDAR-Chat's shape (Qwen3's ChatML): turns closed by <|im_end|>, the mask spelled <|MASK|>.
SDAR_STYLE = TokenizerStyle(
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"), "<|endoftext|>", "<|endoftext|>", "<|MASK|>",
    ("<|im_start|>", "<|im_end|>"),
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 320,
                    style: TokenizerStyle = LLADA_STYLE):
    """Train a byte-level BPE on ``corpus`` (every byte stays encodable) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(style.special_tokens),
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) if corpus is not None else [DEFAULT_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=style.bos, eos_token=style.eos, pad_token=style.eos,
        mask_token=style.mask, additional_special_tokens=list(style.additional),
    )
    fast.chat_template = style.chat_template
    return fast
