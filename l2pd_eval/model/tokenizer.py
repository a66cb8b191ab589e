"""Build a small byte-level BPE fast tokenizer with LLaDA's special tokens and chat template.

Used for the tiny test checkpoint and the embedded testbed model, so they go through the same
``AutoTokenizer`` + ``apply_chat_template`` path as LLaDA-8B-Instruct.
"""

from __future__ import annotations

from collections.abc import Iterable

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


DEFAULT_CORPUS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer: Natalia sold 48/2 = <<48/2=24>>24 "
    "clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72\n"
    "def add(a, b):\n    return a + b\n"
)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 320):
    """Train a byte-level BPE on ``corpus`` (every byte stays encodable) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) if corpus is not None else [DEFAULT_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", mask_token="<|mdm_mask|>",
        additional_special_tokens=["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
