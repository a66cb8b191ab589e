"""Record oracle-labelled decoding trajectories: the training data of the Learn2PD filter.

For each batch of prompts the engine decodes with the reference policy (``low_confidence``, one token
per step); its final answer is the reference. Every step's block state (confidence vector, prediction,
which positions were still masked) is captured through the engine's ``on_step`` hook, and labelled
afterwards: ``label = prediction == reference token`` at the masked positions.

``rollout="oracle"`` adds a second pass that walks the states the official Learn2PD data generator
visits ("extremely greedy parallel": commit every position whose prediction already equals the
reference), which are closer to what a filter sees at decode time; the labels are defined the same way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.model.tokenizer import chat_user_prompt

from .config import ROLLOUTS, TrajectoryConfig  # noqa: F401  (re-exported)
from .data import TrajectoryWriter


@dataclass
class PromptItem:
    id: str
    text: str


# ----------------------------------------------------------------------------------------------- prompts


def prompts_from_jsonl(path: str | Path, field: str = "question", id_field: str | None = None,
                       limit: int | None = None) -> list[PromptItem]:
    """One prompt per line; ids from ``id_field`` or ``<file name>:<line number>`` (stable across runs)."""
    items: list[PromptItem] = []
    p = Path(path)
    with open(p) as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            if field not in row:
                raise ValueError(f"{p}:{n + 1}: no field {field!r} (fields: {', '.join(row)}); set --field")
            if id_field is not None and id_field not in row:
                raise ValueError(f"{p}:{n + 1}: no field {id_field!r} (fields: {', '.join(row)}); set --id-field")
            pid = str(row[id_field]) if id_field is not None else f"{p.name}:{n}"
            items.append(PromptItem(pid, str(row[field])))
            if limit is not None and len(items) >= limit:
                break
    return items


def prompts_from_task(task: str, num_fewshot: int | None = None, limit: int | None = None,
                      seed: int = 1234, include_path: str | None = None) -> list[PromptItem]:
    """Contexts of an lm-eval generation task, few-shot examples included, as lm-eval would build them."""
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=include_path).load(task)["tasks"]
    if not loaded:
        raise ValueError(f"task={task!r} is unknown to lm-eval")
    items: list[PromptItem] = []
    for name, t in loaded.items():
        if num_fewshot is not None:
            t.set_config(key="num_fewshot", value=num_fewshot)
        t.set_fewshot_seed(seed=seed)
        t.build_all_requests(limit=limit, rank=0, world_size=1)
        for inst in t.instances:
            if inst.request_type != "generate_until":
                raise ValueError(f"task={name!r} is a {inst.request_type} task; trajectories need a generation task")
            items.append(PromptItem(f"{name}:{inst.doc_id}", str(inst.args[0])))
    return items


def encode_prompts(tokenizer: Any, texts: Sequence[str], chat_template: bool | None) -> list[list[int]]:
    """Instruct models are asked through their chat template (one user turn), as in evaluation."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    out = []
    for text in texts:
        if use_chat:
            text = chat_user_prompt(tokenizer, text)
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            out.append(list(tokenizer(text)["input_ids"]))
    return out


# ------------------------------------------------------------------------------------------- recording


@dataclass
class BatchRecords:
    """Records of one batch, labelled. ``row`` indexes the batch's prompts."""

    conf: Tensor
    label: Tensor
    masked: Tensor
    commit: Tensor
    pred: Tensor
    step: Tensor
    block: Tensor
    row: Tensor
    reference: Tensor  # [B, gen_length] the final answers the labels refer to


class _Capture:
    """``on_step`` observer. ``ev.x0`` is the model's own prediction, also where a policy committed another
    token (the oracle substitutes the reference when stuck): the label judges the model's guess."""

    def __init__(self) -> None:
        self.events: list[tuple[Tensor, Tensor, Tensor, Tensor, int, int, Tensor]] = []

    def __call__(self, ev) -> None:
        self.events.append((ev.conf.float(), ev.x0, ev.masked, ev.commit, ev.step, ev.block, ev.rows, ev.block_start))


def _run(model, prompts: list[list[int]], gen_cfg, policy, special, reference=None):
    from l2pd_eval.engine import generate

    cap = _Capture()
    out = generate(model, prompts, gen_cfg, policy, special, reference=reference, on_step=cap)
    return out, cap.events


def record_batch(model, prompts: list[list[int]], cfg: TrajectoryConfig, special) -> BatchRecords:
    """Decode ``prompts`` with the reference policy and return every step of every block, labelled."""
    from l2pd_eval.engine import GenerationConfig
    from l2pd_eval.policies import get_policy

    gen_cfg = GenerationConfig(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.gen_length)
    out, events = _run(model, prompts, gen_cfg, get_policy("low_confidence"), special)
    reference = out.tokens
    if cfg.rollout == "oracle":
        _, events = _run(model, prompts, gen_cfg, get_policy("oracle", fallback="reference"), special,
                         reference=reference)
    BL = cfg.block_length
    # padded by a block each side: a block-causal grid's first block starts in the prompt, its last may run
    # past the answer (``StepEvent.block_start``); no label there
    ref_dev = torch.nn.functional.pad(reference.to(events[0][1].device) if events else reference, (BL, BL), value=-1)
    parts: dict[str, list[Tensor]] = {k: [] for k in ("conf", "label", "masked", "commit", "pred", "step", "block", "row")}
    for conf, pred, masked, commit, step, blk, rows, start in events:
        ref_block = ref_dev[rows, BL + start:BL + start + BL]
        n = rows.numel()
        parts["conf"].append(conf.cpu())
        parts["label"].append(((pred == ref_block) & masked).cpu())
        parts["masked"].append(masked.cpu())
        parts["commit"].append(commit.cpu())
        parts["pred"].append(pred.cpu())
        parts["step"].append(torch.full((n,), step, dtype=torch.long))
        parts["block"].append(torch.full((n,), blk, dtype=torch.long))
        parts["row"].append(rows.cpu())
    if not events:
        empty = torch.empty(0, BL)
        return BatchRecords(empty, empty.bool(), empty.bool(), empty.bool(), empty.long(), torch.empty(0).long(),
                            torch.empty(0).long(), torch.empty(0).long(), reference)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return BatchRecords(reference=reference, **cat)


def check_room(context: int, gen_length: int) -> int:
    """The longest prompt that fits beside a ``gen_length`` answer; none fitting is an error naming
    ``--gen-length`` (every prompt would be skipped and nothing recorded)."""
    room = context - gen_length
    if room < 1:
        raise ConfigError(f"--gen-length {gen_length} leaves no room for a prompt in the model's {context}-token "
                          f"context (config.json max_sequence_length), so nothing would be recorded; pass a "
                          f"--gen-length below {context}, e.g. --gen-length {max(32, context // 2 // 32 * 32)}")
    return room


def record_trajectories(model, tokenizer, prompts: Sequence[PromptItem], out: str | Path, cfg: TrajectoryConfig,
                        special=None, info: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Record ``prompts`` into ``out`` (resumable: prompts already finished there are skipped)."""
    from l2pd_eval.model import SpecialIds

    special = special or SpecialIds.resolve(tokenizer, model.config)
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if cfg.chat_template is None else cfg.chat_template
    writer = TrajectoryWriter(
        out, cfg.block_length, conf_dtype=cfg.conf_dtype, shard_records=cfg.shard_records,
        gen_length=cfg.gen_length, steps=cfg.gen_length, rollout=cfg.rollout, chat_template=use_chat,
        reference_policy="low_confidence", **(info or {}),
    )
    done = writer.finished
    todo = [p for p in prompts if p.id not in done]
    if len({p.id for p in prompts}) != len(prompts):
        raise ValueError("prompt ids must be unique (set --id-field to a unique field)")
    max_len = check_room(model.config.max_sequence_length, cfg.gen_length)
    skipped = writer.manifest.setdefault("skipped", [])

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # similar lengths share a batch: the engine left-pads every prompt to the batch's longest
    encoded = encode_prompts(tokenizer, [p.text for p in todo], use_chat)
    order = sorted(range(len(todo)), key=lambda i: len(encoded[i]))
    columns = (TextColumn("[bold]trajectories"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[records]} records"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("record", total=len(prompts), completed=len(prompts) - len(todo), records=writer.count)
        for start in range(0, len(order), cfg.batch_size):
            batch = [todo[i] for i in order[start:start + cfg.batch_size]]
            ids = [encoded[i] for i in order[start:start + cfg.batch_size]]
            keep = [i for i, t in enumerate(ids) if 0 < len(t) <= max_len]
            for i in sorted(set(range(len(batch))) - set(keep)):
                skipped.append({"id": batch[i].id, "reason": f"{len(ids[i])} prompt tokens (max {max_len})"})
            if keep:
                rec = record_batch(model, [ids[i] for i in keep], cfg, special)
                index = torch.tensor([writer.prompt_index(batch[i].id) for i in keep], dtype=torch.long)
                writer.add(rec.conf, rec.label, rec.masked, rec.step, rec.block, index[rec.row])
            writer.mark_finished([p.id for p in batch])
            bar.update(task, advance=len(batch), records=writer.count)
    return writer.close()


# ---------------------------------------------------------------------------------------------------- CLI


def main(args: argparse.Namespace) -> int:
    from l2pd_eval.model import load_model, load_tokenizer
    from l2pd_eval.model.loading import check_vocab, checkpoint_identity, peek_config

    from .train import resolve_device

    cfg = TrajectoryConfig(gen_length=args.gen_length, block_length=args.block_length, batch_size=args.batch_size,
                           rollout=args.rollout, conf_dtype=args.conf_dtype, shard_records=args.shard_records,
                           chat_template=args.chat_template)
    if args.jsonl:
        prompts = prompts_from_jsonl(args.jsonl, field=args.field, id_field=args.id_field, limit=args.limit)
        data = {"jsonl": str(args.jsonl), "field": args.field}
    else:
        prompts = prompts_from_task(args.task, num_fewshot=args.num_fewshot, limit=args.limit, seed=args.seed,
                                    include_path=args.include_path)
        data = {"task": args.task, "num_fewshot": args.num_fewshot, "fewshot_seed": args.seed}
    identity = checkpoint_identity(args.model)
    check_room(peek_config(args.model).max_sequence_length, cfg.gen_length)  # before any weights load
    device = resolve_device(args.device)
    model = load_model(args.model, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(args.tokenizer or args.model, argument="--tokenizer" if args.tokenizer else "--model")
    check_vocab(tokenizer, model.config, args.tokenizer or args.model, args.model)
    manifest = record_trajectories(model, tokenizer, prompts, args.out, cfg,
                                   info={"model": args.model, "model_identity": identity, "data": data,
                                         "dtype": str(model.dtype)},
                                   progress=not args.no_progress)
    print(f"{args.out}: {manifest['count']} records from {len(manifest['finished'])} prompts "
          f"in {len(manifest['shards'])} shards (block_length={cfg.block_length})")
    return 0
