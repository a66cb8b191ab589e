"""``l2pd-eval smoke``: decode a few prompts with every cache and print text and statistics.

A quick check that a checkpoint loads and decodes (the embedded testbed model by default).
"""

from __future__ import annotations

import argparse
import tempfile


def smoke_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", default=None, help="checkpoint dir / hub id (default: the embedded testbed "
                                                      "model, or a fresh tiny random one)")
    p.add_argument("--policy", default="low_confidence")
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("prompts", nargs="*", default=["Question: Tom has 3 apples and buys 4 more. How many apples "
                                                  "does he have?\nAnswer:"])


def smoke_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from l2pd_eval.caches import available as cache_names
    from l2pd_eval.engine import GenerationConfig, generate
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
    from l2pd_eval.policies import get_policy

    path = args.pretrained
    if path is None:
        try:
            from l2pd_eval.testbed import checkpoint_dir

            path = str(checkpoint_dir())
        except (ImportError, FileNotFoundError):
            from l2pd_eval.model.tiny import write_tiny_llada

            path = str(write_tiny_llada(tempfile.mkdtemp(prefix="l2pd-tiny-")))
    model, tok = load_model(path, device=args.device), load_tokenizer(path)
    special = SpecialIds.resolve(tok, model.config, checkpoint=getattr(model, "checkpoint", None))
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in args.prompts]
    table = Table(title=f"{path} · policy={args.policy}")
    for col in ("cache", "eotp", "NFE", "tokens", "seconds", "answer"):
        table.add_column(col)
    for cache in cache_names():
        for eotp in (False, True):
            cfg = GenerationConfig(gen_length=args.gen_length, block_length=args.block_length, cache=cache, eotp=eotp)
            out = generate(model, ids, cfg, get_policy(args.policy), special)
            for row, st in enumerate(out.stats):
                text = tok.decode(out.tokens[row, :st.num_tokens].tolist(), skip_special_tokens=True)
                table.add_row(cache, str(eotp), str(st.nfe), str(st.num_tokens), f"{st.seconds:.2f}",
                              text.strip().replace("\n", " ⏎ ")[:80])
    Console().print(table)
    return 0
