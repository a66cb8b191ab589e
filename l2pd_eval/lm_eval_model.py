"""The ``learn2pd`` lm-eval model: LLaDA + the decoding engine behind lm-eval's ``LM`` interface.

``lm_eval --model learn2pd --model_args pretrained=...,policy=...,cache=...`` reaches this class through
the import hook in :mod:`l2pd_eval._hook`. Every generation is timed (device-synchronised, decoding only)
and recorded per sample; the records go to a sidecar JSON beside lm-eval's results (see
:func:`flush_sidecars`) or to ``sidecar=PATH``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM

from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.policies import get_policy, policy_class, policy_params
from l2pd_eval.policies.registry import available

log = logging.getLogger(__name__)
DEFAULT_GEN_LENGTH = 256  # when neither gen_length= nor the task's max_gen_toks says otherwise
# Sidecars of this process's rank 0 still waiting for lm-eval to save its results. Held strongly: lm-eval
# drops the model object before it writes results_<stamp>.json.
_PENDING: list = []


@dataclass
class ModelArgs:
    """Everything ``--model_args`` accepts besides the chosen policy's own parameters."""

    pretrained: str
    tokenizer: str | None = None
    revision: str | None = None
    policy: str = "low_confidence"
    cache: str = "none"
    eotp: bool = False
    eot_ids: str | None = None        # ';'-separated ids (commas separate model_args); default: eos + eot_id
    gen_length: int | None = None     # default: each request's max_gen_toks, rounded up to a block multiple
    block_length: int = 32
    steps: int | None = None
    temperature: float = 0.0
    seed: int = 0
    dtype: str = "auto"
    device: str | None = None
    batch_size: int | str = 1
    max_batch_size: int | None = None
    chat: str = "auto"                # auto: use the chat template for Instruct models
    mask_id: int | None = None
    eos_id: int | None = None
    sidecar: str | None = None        # explicit sidecar path; default: beside lm-eval's --output_path results
    cuda_graph: bool | str = "auto"   # CUDA-graph replay of cached steps; auto: on for CUDA devices
    compile: bool = False             # torch.compile the transformer blocks (docs/benchmarks.md)
    progress: bool = True
    mc_num: int = 128                 # loglikelihood: Monte-Carlo samples per (context, continuation)
    mc_batch_size: int = 32           # loglikelihood: sample rows per forward pass


def _split_args(kwargs: dict[str, Any]) -> tuple[ModelArgs, dict[str, Any]]:
    own = {f.name for f in fields(ModelArgs)}
    if "pretrained" not in kwargs:
        raise ValueError("model_args: pretrained=<LLaDA directory, hub id or random:<preset>> is required")
    policy = str(kwargs.get("policy", "low_confidence"))
    if policy not in available():
        raise ValueError(f"policy={policy!r} is unknown; valid choices: {', '.join(available())}")
    allowed = set(policy_params(policy))
    rest = {k: v for k, v in kwargs.items() if k not in own}
    unknown = sorted(set(rest) - allowed)
    if unknown:
        raise ValueError(f"model_args: unknown argument(s) {', '.join(unknown)} for policy={policy!r}; valid: "
                         f"{', '.join(sorted(own | allowed))}")
    return ModelArgs(**{k: v for k, v in kwargs.items() if k in own}), rest


def _tristate(name: str, value: Any) -> str:
    """A model_arg that is auto, true or false: lm-eval hands over a bool, or the string as typed."""
    v = str(value).lower() if isinstance(value, bool) else str(value)
    if v not in ("auto", "true", "false"):
        raise ValueError(f"{name}={value!r}; valid choices: auto, true, false")
    return v


class Learn2PDLM(LM):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        args, policy_kwargs = _split_args({k: v for k, v in kwargs.items() if v is not None})
        self.args = args
        self._rank, self._world_size = 0, 1
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s requested but CUDA is not available; decoding on cpu", device)
            device = "cpu"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch` / torchrun: one rank per GPU
            import torch.distributed as dist

            on_gpu = str(device).startswith("cuda")
            if on_gpu:
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if on_gpu else "gloo")
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._device = torch.device(device)
        graph = _tristate("cuda_graph", args.cuda_graph)
        self._cuda_graph = graph == "true" or (graph == "auto" and self._device.type == "cuda")
        if args.gen_length is None and args.steps is not None:
            raise ValueError("steps= needs an explicit gen_length= (by default gen_length follows each task's "
                             "max_gen_toks and steps = gen_length)")
        self._configs: dict[int, GenerationConfig] = {}
        self.config = self._config_for(self._gen_length({}))  # validates block_length against the length
        _tristate("chat", args.chat)
        if "block_length" in {f.name for f in fields(policy_class(args.policy))}:
            policy_kwargs.setdefault("block_length", self.config.block_length)
        self.policy = get_policy(args.policy, **policy_kwargs)
        self.model = load_model(args.pretrained, dtype=args.dtype, device=self._device, revision=args.revision,
                                seed=args.seed)
        if args.compile:
            self.model.compile_blocks()
        self.tokenizer = load_tokenizer(args.tokenizer or args.pretrained, revision=args.revision)
        eot = None if args.eot_ids is None else [int(i) for i in str(args.eot_ids).split(";") if str(i).strip()]
        self.special = SpecialIds.resolve(self.tokenizer, self.model.config, args.mask_id, args.eos_id, eot)
        self.batch_size = self._resolve_batch_size(args.batch_size, args.max_batch_size)
        from l2pd_eval.results.sidecar import Sidecar, build_manifest

        self.sidecar = Sidecar(manifest=build_manifest(
            model=args.pretrained, policy=args.policy, policy_params=self.policy.params(), cache=args.cache,
            eotp=self.config.eotp, eot_ids=list(self.special.end_ids),
            gen_length=args.gen_length or "auto (task max_gen_toks)", block_length=self.config.block_length,
            steps=args.steps or "gen_length", model_args={k: v for k, v in kwargs.items() if v is not None},
            temperature=self.config.temperature, batch_size=self.batch_size, dtype=str(self.model.dtype),
            device=str(self._device), seed=self.config.seed, world_size=self._world_size,
            cuda_graph=self._cuda_graph, compile=bool(args.compile),
        ), samples=[])
        if self._rank == 0:
            _PENDING.append(self.sidecar)

    def _config_for(self, gen_length: int) -> GenerationConfig:
        if gen_length not in self._configs:
            a = self.args
            self._configs[gen_length] = GenerationConfig(
                gen_length=gen_length, block_length=int(a.block_length), steps=None if a.steps is None else int(a.steps),
                temperature=float(a.temperature), cache=a.cache, eotp=bool(a.eotp), seed=int(a.seed),
                cuda_graph=self._cuda_graph, compile=bool(a.compile))
        return self._configs[gen_length]

    def _gen_length(self, gen_kwargs: dict) -> int:
        """gen_length= if given; else the task's max_gen_toks rounded up to whole blocks (the 256/1024 tasks)."""
        if self.args.gen_length is not None:
            return int(self.args.gen_length)
        want = int(gen_kwargs.get("max_gen_toks") or DEFAULT_GEN_LENGTH)
        block = int(self.args.block_length)
        return -(-want // block) * block

    # -- lm-eval plumbing -------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def all_gather(self, tensor):
        """Concatenate every rank's tensor along dim 0 (lm-eval pads its request lists with this)."""
        if self._world_size <= 1:
            return tensor
        flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(flat) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, flat.contiguous())
        return torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size <= 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()

    def _resolve_batch_size(self, batch_size: int | str, max_batch_size: int | None) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            from l2pd_eval.engine.memory import largest_batch

            bs = largest_batch(self.model, self.config, prompt_len=1024, cap=max_batch_size or 64)
            log.info("batch_size=auto: %d rows fit (prompt budget 1024 tokens)", bs)
            return bs
        try:
            bs = int(batch_size)
        except ValueError:
            raise ValueError(f"batch_size={batch_size!r}; valid choices: a positive integer or auto") from None
        if bs <= 0:
            raise ValueError(f"batch_size={bs} must be positive")
        return bs

    # -- requests ---------------------------------------------------------------------------------
    def _use_chat(self) -> bool:
        chat = _tristate("chat", self.args.chat)
        if chat in ("true", "false"):
            return chat == "true"
        name = f"{self.args.pretrained} {self.args.tokenizer or ''}".lower()
        return "instruct" in name and bool(getattr(self.tokenizer, "chat_template", None))

    def _encode(self, context: str) -> list[int]:
        # With --apply_chat_template lm-eval has already rendered the template (it starts with the bos).
        bos = getattr(self.tokenizer, "bos_token", None)
        if self._use_chat() and not (bos and context.startswith(bos)):
            context = self.apply_chat_template([{"role": "user", "content": context}])
        return self.tokenizer(context, add_special_tokens=False)["input_ids"]

    def _decode(self, tokens: list[int], until: list[str]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        from l2pd_eval.results.sidecar import SampleRecord
        from l2pd_eval.results.timing import LiveTPS

        # Data-parallel lm-eval pads a rank's list with extra copies of its last request: time them, but keep
        # them out of the sidecar (a request legitimately appears `repeats` times).
        seen: dict[int, int] = {}
        padding = []
        for r in requests:
            seen[id(r)] = seen.get(id(r), 0) + 1
            padding.append(seen[id(r)] > max(int(getattr(r, "repeats", 1) or 1), 1))
        encoded = [self._encode(r.args[0]) for r in requests]
        gens = [self._gen_length(dict(r.args[1] or {})) for r in requests]
        # One decode length per batch; within it, similar prompt lengths share a batch (less padding).
        order = sorted(range(len(requests)), key=lambda i: (gens[i], -len(encoded[i])))
        outputs: list[str | None] = [None] * len(requests)
        show = None if self.args.progress and not disable_tqdm and self._rank == 0 else False
        progress = LiveTPS(total=len(requests), description=f"learn2pd {self.args.policy}", enabled=show)
        with progress:
            batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
            batches = [[i for i in b if gens[i] == g] for b in batches for g in sorted({gens[i] for i in b})]
            for idx in batches:
                config = self._config_for(gens[idx[0]])
                kwargs = [dict(requests[i].args[1] or {}) for i in idx]
                out = generate(self.model, [encoded[i] for i in idx], config, self.policy, self.special)
                for row, (i, kw) in enumerate(zip(idx, kwargs, strict=True)):
                    until = kw.get("until") or []
                    until = [until] if isinstance(until, str) else list(until)
                    st = out.stats[row]
                    keep = min(st.num_tokens, int(kw.get("max_gen_toks") or config.gen_length))
                    outputs[i] = self._decode(out.tokens[row, :keep].tolist(), until)
                    req = requests[i]
                    self.cache_hook.add_partial("generate_until", req.args, outputs[i])
                    if padding[i]:
                        continue
                    self.sidecar.add(SampleRecord(
                        task=str(getattr(req, "task_name", None) or "unknown"), doc_id=int(getattr(req, "doc_id", -1) or 0),
                        tokens=st.num_tokens, seconds=st.seconds, nfe=st.nfe, gen_length=config.gen_length,
                        eotp_saved=st.eotp_saved))
                progress.update(sum(s.num_tokens for s in out.stats), out.stats[0].latency, samples=len(idx))
        self._gather_samples()
        if self.args.sidecar and self._rank == 0:
            self.sidecar.save(self.args.sidecar)
        return outputs  # type: ignore[return-value]

    def _gather_samples(self) -> None:
        """Data-parallel runs: rank 0 collects every rank's records (all ranks call generate_until together)."""
        if self._world_size <= 1:
            return
        gathered = self.gather_object(self.sidecar.samples, dst=0)
        if self._rank == 0:
            self.sidecar.samples = [s for part in gathered for s in part]
        else:
            self.sidecar.samples = []

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """LLaDA's Monte-Carlo bound on log p(continuation | context) (see :mod:`l2pd_eval.loglikelihood`).

        Contexts get the chat template by the same rule as generation prompts (``chat=``); a chat-rendered
        context keeps its trailing template newlines instead of handing them to the continuation.
        """
        if not requests:
            return []
        from tqdm import tqdm

        from l2pd_eval.loglikelihood import LoglikelihoodConfig, encode_pair, loglikelihood

        config = LoglikelihoodConfig(mc_num=self.args.mc_num, mc_batch_size=self.args.mc_batch_size,
                                     seed=int(self.args.seed))
        bos = getattr(self.tokenizer, "bos_token", None)
        pairs = []
        for req in requests:
            context, continuation = req.args
            if self._use_chat() and not (bos and context.startswith(bos)):
                context = self.apply_chat_template([{"role": "user", "content": context}])
            rendered = bool(bos and context.startswith(bos))
            pairs.append(encode_pair(self.tokenizer, context, continuation, move_whitespace=not rendered))
        show = self.args.progress and not disable_tqdm and self._rank == 0
        with tqdm(total=len(requests), desc=f"learn2pd loglikelihood (mc_num={config.mc_num})",
                  disable=not show) as bar:
            results = loglikelihood(self.model, pairs, self.special.mask, config, on_request_done=bar.update)
        for req, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("learn2pd: loglikelihood_rolling (perplexity) is not supported for masked "
                                  "diffusion models; use generate_until or multiple-choice tasks")


def flush_sidecars(directory: Path, stamp: str, model_name: str | None = None) -> list[Path]:
    """Called by the hook right after lm-eval saved ``results_<stamp>.json`` into ``directory``.

    Only sidecars of the model lm-eval is saving (its ``pretrained``) are written, and then forgotten;
    other pending ones (another model built in the same process) wait for their own results.
    """
    written = []
    for sidecar in list(_PENDING):
        if model_name is not None and sidecar.manifest.get("model") != model_name:
            continue
        _PENDING.remove(sidecar)
        if sidecar.samples:
            suffix = f"_{len(written)}" if written else ""
            written.append(sidecar.save(Path(directory) / f"l2pd_{stamp}{suffix}.json"))
    return written
