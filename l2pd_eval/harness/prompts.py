"""Request text <-> token ids for the ``learn2pd`` model: the chat rule, the BOS rule, stop strings.

One rule for generation and likelihood: a context gets the tokenizer's chat template when ``chat=true``,
or with ``chat=auto`` by its family's rule (``Family.instruct_marker`` in the model's or tokenizer's name,
or a known checkpoint's own rule, and the tokenizer has a template); a context lm-eval already rendered (``--apply_chat_template``) is never
wrapped twice. Plain (not chat-rendered) prompts start with BOS where the family's rule says so
(``Family.add_bos``) or ``add_bos_token=true`` asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l2pd_eval.errors import ConfigError
from l2pd_eval.family_facts import instruct_by_name
from l2pd_eval.model.family import Family
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.model.tokenizer import chat_opening, chat_user_prompt


def wants_chat(chat: str, family: Family, names: tuple[str | None, ...], tokenizer: Any) -> bool:
    """``chat=true|false`` as given; ``auto``: a known checkpoint's own rule (``family_facts.CHECKPOINTS``:
    d3LLM_LLaDA is an Instruct model its name does not say), else the family's rule on the model's and
    tokenizer's names; either only where the tokenizer has a template."""
    if chat != "auto":
        return chat == "true"
    return instruct_by_name(family, names) and bool(getattr(tokenizer, "chat_template", None))


def bos_prefix(add_bos_token: str, family: Family, special: SpecialIds, source: str) -> list[int]:
    """``[bos]`` when plain prompts start with BOS (Fast-dLLM evaluates Dream-Base with
    ``add_bos_token=true``; LLaDA's protocol adds none), else ``[]``; ``source`` names the tokenizer."""
    wanted = family.add_bos if add_bos_token == "auto" else add_bos_token == "true"
    if not wanted:
        return []
    if special.bos is None:
        rule = f"the {family.name} family's default" if add_bos_token == "auto" else "requested"
        raise ConfigError(f"add_bos_token ({rule}): the tokenizer of {source} has no BOS token and config.json no "
                          "bos_token_id; pass add_bos_token=false")
    return [special.bos]


@dataclass
class PromptCodec:
    """How one run turns request text into prompt ids, and answer ids back into text."""

    tokenizer: Any
    chat: bool         # wrap contexts in the chat template (unless already rendered)
    bos: list[int]     # before plain prompts: [] or [bos]
    opening: str | None  # the special token a chat-rendered text starts with (model/tokenizer.py)

    @classmethod
    def for_run(cls, tokenizer: Any, family: Family, special: SpecialIds, chat: str, add_bos_token: str,
                names: tuple[str | None, ...]) -> PromptCodec:
        """``names``: ``(pretrained=, tokenizer=)``; errors name the tokenizer's if given, else the model's."""
        source = next(n for n in reversed(names) if n)
        return cls(tokenizer, wants_chat(chat, family, names, tokenizer),
                   bos_prefix(add_bos_token, family, special, source), chat_opening(tokenizer))

    def render(self, context: str) -> tuple[str, bool]:
        """The context as the model sees it, and whether it is chat-rendered. With --apply_chat_template
        lm-eval has already rendered the template (the text starts with the template's opening token:
        LLaDA's bos, ChatML's ``<|im_start|>``), so it is never wrapped twice."""
        opening = self.opening
        if self.chat and not (opening and context.startswith(opening)):
            context = chat_user_prompt(self.tokenizer, context)
        return context, bool(opening and context.startswith(opening))

    def encode(self, context: str) -> list[int]:
        """Token ids of a generation prompt: the rendered context, after the BOS rule for plain prompts."""
        text, rendered = self.render(context)
        return ([] if rendered else self.bos) + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: list[int], until: list[str]) -> str:
        """An answer's text: special tokens skipped, cut before the first stop string."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def token_ids(self, text: str) -> list[int]:
        """``text`` tokenised as the papers' token count does (the tokenizer's own special tokens added)."""
        return self.tokenizer(text)["input_ids"]
