"""LoRA adapters (``adapter=DIR`` or a hub id) merged into a loaded network through ``peft``.

``peft`` is the library the adapters are written with (D2F's ``SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora``,
dParallel's LoRA before its authors merged it), so it reads them: their config, their key names
(``base_model.model.<module path>.lora_A.weight``, our module paths being the hub's) and their scaling.
The adapter is merged into the weights (``merge_and_unload``): the network is again a plain one of its
family, as fast as without it. ``peft`` is an optional dependency (``pip install 'l2pd-eval[lora]'``).
"""

from __future__ import annotations

import logging
import warnings

from l2pd_eval.family_facts import find_checkpoint
from l2pd_eval.model.interface import DiffusionLM

log = logging.getLogger(__name__)

#: What decoding D2F as its authors do would need beyond its merged weights (docs/families.md, "D2F").
D2F_NEEDS = ("D2F was trained and is decoded with its own attention mask: the prompt one bidirectional block, "
             "then blocks of 32 counted from the prompt's end, each seeing the prompt, earlier blocks and itself "
             "(d3LLM utils_LLaDA/eval_d2f.py), and with its pipelined multi-block rule (block_add_threshold, "
             "skip_threshold, decoded_token_threshold). This harness has neither yet: a run decodes D2F's "
             "merged weights with LLaDA's bidirectional attention and the chosen policy, which is not D2F's "
             "decoding and does not reproduce its numbers")


def merge_adapter(model: DiffusionLM, adapter: str, family: str, revision: str | None = None) -> DiffusionLM:
    """``model`` with the LoRA adapter at ``adapter`` merged into its weights (in place; returned).
    A known adapter (``family_facts.CHECKPOINTS``) becomes ``model.checkpoint``; an unknown one leaves it
    None, since the merged network is no longer the base checkpoint."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(f"adapter={adapter!r}: merging a LoRA adapter needs the peft package; install it with "
                         "pip install 'l2pd-eval[lora]' (or pip install peft)") from None
    known = find_checkpoint(adapter)
    if known is not None and known.family != family:
        raise ValueError(f"adapter={adapter!r} is {known.hub_id}, an adapter of a {known.family} model "
                         f"({known.base}); pretrained= is a {family} model")
    kwargs = {"revision": revision} if revision else {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = PeftModel.from_pretrained(model, adapter, **kwargs)
        for w in caught:  # peft only warns when the adapter's weights miss the modules it wrapped
            if "missing adapter keys" in str(w.message) or "unexpected" in str(w.message).lower():
                raise ValueError(str(w.message).split(":")[0])
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        merged = wrapped.merge_and_unload()
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"adapter={adapter!r}: not a LoRA adapter of this model ({first}); pass a peft adapter "
                         "folder (adapter_config.json + adapter_model.safetensors) trained on pretrained=") from None
    merged.checkpoint = known
    merged.adapter = adapter
    if known is not None and known.hub_id.lower().startswith("sjtu-deng-lab/d2f"):
        log.warning("adapter=%s: merged. %s.", adapter, D2F_NEEDS)
    return merged.eval().requires_grad_(False)
