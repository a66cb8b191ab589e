"""The ``learn2pd`` lm-eval model: LLaDA + the decoding engine behind lm-eval's ``LM`` interface.

``lm_eval --model learn2pd --model_args pretrained=...,policy=...,cache=...`` reaches this class through
the import hook in :mod:`l2pd_eval._hook`. Every generation is timed (device-synchronised, decoding only)
and recorded per sample; the records go to a sidecar JSON beside lm-eval's results (see
:func:`flush_sidecars`) or to ``sidecar=PATH``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lm_eval.api.model import LM

from l2pd_eval.engine import EotpMode, GenerationConfig, SpeedConfig, generate
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.family import family_of
from l2pd_eval.model.loading import check_vocab
from l2pd_eval.model.tokenizer import chat_opening, chat_user_prompt
from l2pd_eval.policies import RunSettings, policy_class
from l2pd_eval.policies.registry import parse_policy_params
from l2pd_eval.results.sidecar import (
    SIDECAR_PREFIX,
    SampleRecord,
    Sidecar,
    build_manifest,
    count_paper_tokens,
    output_path_from_argv,
    results_dir,
)
from l2pd_eval.typed_args import INTEGER, coerce_fields, parameters

log = logging.getLogger(__name__)
DEFAULT_GEN_LENGTH = 256  # when neither gen_length= nor the task's max_gen_toks says otherwise
# Sidecars of this process's rank 0 still waiting for lm-eval to save its results. Held strongly: lm-eval
# drops the model object before it writes results_<stamp>.json.
_PENDING: list = []


Tristate = Literal["auto", "true", "false"]
#: lm-eval 0.4.13 passes ``device="cuda:0"`` when --device is not given (EvaluatorConfig's default).
LM_EVAL_DEFAULT_DEVICE = "cuda:0"


@dataclass
class ModelArgs:
    """Everything ``--model_args`` accepts besides the chosen policy's own parameters.

    Built only by :func:`parse_model_args`, so every field already has its declared type.
    """

    pretrained: str
    tokenizer: str | None = None
    revision: str | None = None
    policy: str = "low_confidence"
    cache: str = "none"
    eotp: EotpMode = "false"           # "true": the Learn2PD code's rule; "committed": after a committed end
    eot_ids: str | None = None        # ';'-separated ids (commas separate model_args); default: eos + eot_id
    gen_length: int | None = None     # default: each request's max_gen_toks, rounded up to a block multiple
    block_length: int = 32
    steps: int | None = None
    temperature: float | None = None  # given: wins over the tasks' gen_kwargs (l2pd_eval/gen_kwargs.py)
    seed: int = 0
    dtype: str = "auto"
    device: str | None = None
    batch_size: int | str = 1
    max_batch_size: int | None = None
    chat: Tristate = "auto"           # auto: use the chat template for Instruct models
    add_bos_token: Tristate = "auto"  # BOS before plain (non-chat) prompts; auto: the model family's rule
    mask_id: int | None = None
    eos_id: int | None = None
    sidecar: str | None = None        # explicit sidecar path; default: beside lm-eval's --output_path results
    checkpoint_s: float = 10.0        # partial sidecar rewritten at most this often (0: after every batch)
    progress_every_s: float = 30.0    # off a terminal: one progress line at most this often (0: every batch)
    cuda_graph: Tristate = "auto"     # CUDA-graph replay of cached steps; auto: on for CUDA devices
    compile: bool = False             # torch.compile the transformer blocks (docs/benchmarks.md)
    compile_autotune: bool = False    # compile: time reduction kernels' configs (l2pd_eval/model/compiling.py)
    progress: bool = True
    mc_num: int = 128                 # loglikelihood: Monte-Carlo samples per (context, continuation)
    mc_batch_size: int = 32           # loglikelihood: sample rows per forward pass

    def __post_init__(self) -> None:
        for name in ("block_length", "gen_length", "steps", "max_batch_size", "mc_num", "mc_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        for name in ("checkpoint_s", "progress_every_s", "temperature"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
        self.end_ids()
        if self.compile_autotune and not self.compile:
            raise ValueError("compile_autotune=true only applies with compile=true; add compile=true or drop it")
        if self.gen_length is None and self.steps is not None:
            raise ValueError("steps= needs an explicit gen_length= (by default gen_length follows each task's "
                             "max_gen_toks and steps = gen_length)")

    def end_ids(self) -> list[int] | None:
        if self.eot_ids is None:
            return None
        parts = [p.strip() for p in self.eot_ids.split(";") if p.strip()]
        if not parts or not all(INTEGER.match(p) for p in parts):
            raise ValueError(f"eot_ids={self.eot_ids!r}; valid: token ids separated by ';', e.g. eot_ids=126081;126348")
        return [int(p) for p in parts]


def parse_model_args(raw: Mapping[str, Any]) -> tuple[ModelArgs, dict[str, Any]]:
    """The one parse of ``--model_args``: (typed ModelArgs, typed parameters of the chosen policy).

    ``None`` means "not given" (lm-eval reads ``key=none`` as None). Each value is coerced once by its
    field's type (:mod:`l2pd_eval.typed_args`); names that are neither ours nor the policy's are an error
    listing both.
    """
    values = {k: v for k, v in raw.items() if v is not None}
    if "pretrained" not in values:
        raise ValueError("model_args: pretrained=<LLaDA directory, hub id or random:<preset>> is required")
    own = parameters(ModelArgs)
    args = ModelArgs(**coerce_fields(ModelArgs, {k: v for k, v in values.items() if k in own}))
    rest = {k: v for k, v in values.items() if k not in own}
    return args, parse_policy_params(args.policy, rest, also_valid=own)


def merge_lm_eval_settings(model_args: Mapping[str, Any], lm_eval: Mapping[str, Any]) -> dict[str, Any]:
    """Join --model_args with the settings lm-eval always passes (batch_size, max_batch_size, device).

    lm-eval hands over its own values even when the user gave none, so a key in both would be a
    ``TypeError: got multiple values``: --model_args wins and the override is said once. lm-eval's default
    ``device=cuda:0`` on a machine without CUDA is no request at all: the model picks its device itself.
    """
    merged = dict(model_args)
    for key, value in lm_eval.items():
        if value is None:
            continue
        if key in model_args:
            if str(model_args[key]) != str(value):
                log.warning("model_args %s=%s overrides lm-eval's --%s %s", key, model_args[key], key, value)
            continue
        if key == "device" and value == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            continue
        merged[key] = value
    return merged


class Learn2PDLM(LM):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        args, policy_params = parse_model_args(kwargs)
        self.args = args
        self._rank, self._world_size = 0, 1
        self._device = self._choose_device(args.device)
        self._cuda_graph = args.cuda_graph == "true" or (args.cuda_graph == "auto" and self._device.type == "cuda")
        self.speed = SpeedConfig(cuda_graph=self._cuda_graph, compile=args.compile,
                                 compile_autotune=args.compile_autotune)
        self._configs: dict[tuple[int, float], GenerationConfig] = {}
        self._warned: set[str] = set()  # gen_kwargs overrides already announced
        self._mark = 0.0  # end of the previous batch (per-request wall shares, see _finish_batch)
        self.generate_calls = 0  # lets the --use_cache hook see a rank that CachingLM never called
        self.config = self._config_for(self._gen_length(None))  # validates block_length against the length
        self.policy = policy_class(args.policy)(**policy_params).bind(
            RunSettings(block_length=args.block_length, gen_length=args.gen_length, device=self._device))
        self.model = load_model(args.pretrained, dtype=args.dtype, device=self._device, revision=args.revision,
                                seed=args.seed)
        self.speed.prepare(self.model)  # likelihood requests run the compiled blocks too
        self.tokenizer = load_tokenizer(args.tokenizer or args.pretrained, revision=args.revision)
        check_vocab(self.tokenizer, self.model.config, args.tokenizer or args.pretrained, args.pretrained)
        self.special = SpecialIds.resolve(self.tokenizer, self.model.config, args.mask_id, args.eos_id,
                                          args.end_ids())
        self.family = family_of(self.model.config).name
        self._bos = self._bos_prefix(args.add_bos_token)
        self._chat_opening = chat_opening(self.tokenizer)
        self.batch_size = self._resolve_batch_size(args.batch_size, args.max_batch_size)
        self.sidecar = Sidecar(manifest=build_manifest(
            model=args.pretrained, family=self.family, add_bos_token=bool(self._bos), policy=args.policy,
            policy_params=self.policy.params(), cache=args.cache,
            eotp=self.config.eotp, eot_ids=list(self.special.end_ids),
            gen_length=args.gen_length or "auto (task max_gen_toks)", block_length=self.config.block_length,
            steps=args.steps or "gen_length", model_args={k: v for k, v in kwargs.items() if v is not None},
            temperature="task gen_kwargs" if args.temperature is None else args.temperature,
            batch_size=self.batch_size, dtype=str(self.model.dtype),
            device=str(self._device), seed=self.config.seed, world_size=self._world_size,
            cuda_graph=self._cuda_graph, compile=args.compile, compile_autotune=args.compile_autotune,
        ), samples=[])
        if self._rank == 0:
            _PENDING.append(self.sidecar)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Learn2PDLM:
        """lm-eval's entry point for ``--model_args``: same text parsing as lm-eval, then our merge."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> Learn2PDLM:
        return cls(**merge_lm_eval_settings(arg_dict, additional_config or {}))

    def _choose_device(self, requested: str | None) -> torch.device:
        device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s requested but CUDA is not available; decoding on cpu", device)
            device = "cpu"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch` / torchrun: one rank per GPU
            import torch.distributed as dist

            on_gpu = device.startswith("cuda")
            if on_gpu:
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if on_gpu else "gloo")
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        return torch.device(device)

    def _config_for(self, gen_length: int, temperature: float | None = None) -> GenerationConfig:
        """One config per (decode length, temperature): requests of a batch share it."""
        a = self.args
        temperature = (a.temperature or 0.0) if temperature is None else temperature
        if (gen_length, temperature) not in self._configs:
            self._configs[gen_length, temperature] = GenerationConfig(
                gen_length=gen_length, block_length=a.block_length, steps=a.steps, temperature=temperature,
                cache=a.cache, eotp=a.eotp, seed=a.seed)
        return self._configs[gen_length, temperature]

    def _gen_length(self, max_gen_toks: int | None) -> int:
        """gen_length= if given; else the task's max_gen_toks rounded up to whole blocks (the 256/1024 tasks)."""
        if self.args.gen_length is not None:
            return self.args.gen_length
        want = int(max_gen_toks or DEFAULT_GEN_LENGTH)
        block = self.args.block_length  # >= 1: ModelArgs checked it
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

            bs = largest_batch(self.model, self.config, prompt_len=1024, cap=max_batch_size or 64, speed=self.speed)
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
        if self.args.chat != "auto":
            return self.args.chat == "true"
        name = f"{self.args.pretrained} {self.args.tokenizer or ''}".lower()
        return "instruct" in name and bool(getattr(self.tokenizer, "chat_template", None))

    def _bos_prefix(self, add_bos_token: str) -> list[int]:
        """``[bos]`` when plain prompts start with BOS (Fast-dLLM evaluates Dream-Base with
        ``add_bos_token=true``; LLaDA's protocol adds none), else ``[]``."""
        family = family_of(self.model.config)
        wanted = family.add_bos if add_bos_token == "auto" else add_bos_token == "true"
        if not wanted:
            return []
        if self.special.bos is None:
            rule = f"the {family.name} family's default" if add_bos_token == "auto" else "requested"
            raise ValueError(f"add_bos_token ({rule}): the tokenizer of {self.args.tokenizer or self.args.pretrained} "
                             f"has no BOS token and config.json no bos_token_id; pass add_bos_token=false")
        return [self.special.bos]

    def _render(self, context: str) -> tuple[str, bool]:
        """The context as the model sees it, and whether it is chat-rendered. The one chat rule for
        generation and likelihood: with --apply_chat_template lm-eval has already rendered the template
        (the text starts with the template's opening token: LLaDA's bos, ChatML's ``<|im_start|>``), so it
        is never wrapped twice."""
        opening = self._chat_opening
        if self._use_chat() and not (opening and context.startswith(opening)):
            context = chat_user_prompt(self.tokenizer, context)
        return context, bool(opening and context.startswith(opening))

    def _encode(self, context: str) -> list[int]:
        """Token ids of a generation prompt: the rendered context, after the BOS rule for plain prompts."""
        text, rendered = self._render(context)
        return ([] if rendered else self._bos) + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode(self, tokens: list[int], until: list[str]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request, timing the whole call as the papers do (docs/results.md).

        The sidecar's loop clock starts before tokenising and stops after the last answer is detokenised;
        after each batch its answers go to lm-eval's ``--use_cache`` db (with their timing journal) and
        a partial sidecar is checkpointed, so an interrupted run keeps its work (l2pd_eval/resume.py).
        """
        self.generate_calls += 1
        if not requests and self._world_size <= 1:
            return []
        outputs = self._timed_loop(requests, disable_tqdm) if requests else []
        self._gather_samples()  # collective: a data-parallel rank with nothing left to decode joins it empty
        if self.args.sidecar and self._rank == 0:
            self.sidecar.save(self.args.sidecar)
        else:
            self._checkpoint(force=True)
        return outputs

    def _timed_loop(self, requests, disable_tqdm: bool) -> list[str]:
        padding = _padding_copies(requests)
        loop = self.sidecar.begin_loop(self._rank, [_task_name(r) for r, pad in zip(requests, padding, strict=True)
                                                    if not pad])
        self._mark = time.perf_counter()
        try:
            outputs = self._decode_requests(requests, padding, disable_tqdm)
        except BaseException:  # Ctrl-C or a crash: keep everything finished so far
            self._checkpoint(force=True)
            raise
        self.sidecar.end_loop(loop)
        return outputs

    def _decode_requests(self, requests, padding: list[bool], disable_tqdm: bool) -> list[str]:
        from l2pd_eval.gen_kwargs import request_settings
        from l2pd_eval.results.timing import LiveTPS

        settings = [request_settings(r.args[1], self.args.temperature, self._warned) for r in requests]
        encoded = [self._encode(r.args[0]) for r in requests]
        keys = [(self._gen_length(s.max_gen_toks), s.temperature) for s in settings]
        # One decode config per batch; within it, similar prompt lengths share a batch (less padding).
        order = sorted(range(len(requests)), key=lambda i: (keys[i], -len(encoded[i])))
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        batches = [[i for i in b if keys[i] == k] for b in batches for k in sorted({keys[i] for i in b})]
        outputs: list[str] = [""] * len(requests)
        show = None if self.args.progress and not disable_tqdm and self._rank == 0 else False
        progress = LiveTPS(total=len(requests), description=f"learn2pd {self.args.policy}", enabled=show,
                           log_every_s=self.args.progress_every_s)
        with progress:
            for idx in batches:
                config = self._config_for(*keys[idx[0]])
                out = generate(self.model, [encoded[i] for i in idx], config, self.policy, self.special,
                               speed=self.speed)
                records = []
                for row, i in enumerate(idx):
                    st, s = out.stats[row], settings[i]
                    keep = min(st.num_tokens, s.max_gen_toks or config.gen_length)
                    outputs[i] = self._decode(out.tokens[row, :keep].tolist(), list(s.until))
                    records.append(SampleRecord(
                        task=_task_name(requests[i]), doc_id=int(getattr(requests[i], "doc_id", -1) or 0),
                        tokens=st.num_tokens, seconds=st.seconds, nfe=st.nfe, gen_length=config.gen_length,
                        eotp_saved=st.eotp_saved, paper_tokens=count_paper_tokens(self._token_ids, outputs[i])))
                self._finish_batch([requests[i] for i in idx], [outputs[i] for i in idx], records,
                                   [padding[i] for i in idx])
                progress.update(sum(s.num_tokens for s in out.stats), out.stats[0].latency, samples=len(idx))
        return outputs

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _finish_batch(self, requests, texts: list[str], records: list[SampleRecord], padding: list[bool]) -> None:
        """Answers to the response cache, timing to the journal and the sidecar, then a checkpoint.

        Each request's share of the loop's wall time is the time since the previous batch finished (the
        first batch also carries the tokenising of the whole call) split over the batch's rows."""
        from lm_eval.api.model import hash_args

        now = time.perf_counter()
        share, self._mark = (now - self._mark) / len(requests), now
        keep = [(req, text, rec) for req, text, rec, pad in zip(requests, texts, records, padding, strict=True)
                if not pad]
        db = getattr(self.cache_hook, "dbdict", None)
        if db is not None:  # journal first: a kill before the db commit only means decoding it again
            self._journal(db).append((hash_args("generate_until", req.args), rec, share) for req, _, rec in keep)
        for req, text in zip(requests, texts, strict=True):
            self.cache_hook.add_partial("generate_until", req.args, text)
        if db is not None:
            db.commit(blocking=True)
        for _, _, rec in keep:
            self.sidecar.add(rec)
        self._checkpoint()

    def _journal(self, db):
        from l2pd_eval.resume import TimingJournal, configuration_key

        return TimingJournal(db.filename, configuration_key(self.sidecar.manifest.get("model_args") or {}))

    def restore_cached(self, requests, db) -> None:
        """``--use_cache``: called by the hook (l2pd_eval/_hook.py) with every request of lm-eval's
        ``generate_until`` call, before the cached ones are taken out; their timing records come back from
        the journal, each once (l2pd_eval/resume.py)."""
        from lm_eval.api.model import hash_args

        from l2pd_eval.resume import restore

        cached = []
        for req, pad in zip(requests, _padding_copies(requests), strict=True):
            if pad or (req.args[1] or {}).get("do_sample", False):
                continue  # a data-parallel padding copy; CachingLM never answers sampled requests from the db
            h = hash_args("generate_until", req.args)
            if h in db:
                cached.append((h, _task_name(req), int(getattr(req, "doc_id", -1) or 0)))
        if not cached:
            return
        journal = self._journal(db)
        samples, loop, untimed = restore(journal, cached, self._rank)
        self.sidecar.samples.extend(samples)
        if loop is not None:
            self.sidecar.loops.append(loop)
        self.sidecar.manifest["restored_from_cache"] = self.sidecar.manifest.get("restored_from_cache", 0) + len(samples)
        if untimed:
            log.warning("%d answers come from the --use_cache db %s without timing records (decoded before "
                        "l2pd-eval journaled them, or by another model); the sidecar leaves them out", untimed,
                        db.filename)
        log.info("learn2pd: %d answers and their timing restored from %s", len(samples), journal.path)

    def _checkpoint_path(self) -> Path | None:
        """Where the partial sidecar goes while the run is going (docs/results.md, "Partial runs").

        ``sidecar=PATH``: there. Else, for a stock ``lm_eval ... --output_path OUT`` run: lm-eval's results
        folder, ``l2pd_partial_<hash of the command line>.json``, so a rerun of the same command rewrites
        the same file; the final sidecar replaces it. No --output_path: nowhere."""
        if self.args.sidecar:
            return Path(self.args.sidecar)
        out = output_path_from_argv()
        if out is None or "lm_eval" not in Path(sys.argv[0]).as_posix():
            return None
        folder = results_dir(out, self.sidecar.manifest.get("model_args")) or Path(out)
        key = hashlib.sha256("\0".join(sys.argv[1:]).encode()).hexdigest()[:12]
        return folder / f"{SIDECAR_PREFIX}partial_{key}.json"

    def _checkpoint(self, force: bool = False) -> None:
        if self._rank != 0 or not self.sidecar.samples:
            return
        path = self._checkpoint_path()
        if path is not None:
            self.sidecar.checkpoint(path, min_interval_s=0.0 if force else self.args.checkpoint_s)

    def _gather_samples(self) -> None:
        """Data-parallel runs: rank 0 collects every rank's records (all ranks call generate_until together)."""
        if self._world_size <= 1:
            return
        manifest = self.sidecar.manifest
        restored = manifest.pop("restored_from_cache", 0)
        gathered = self.gather_object((self.sidecar.samples, self.sidecar.loops, restored), dst=0)
        if self._rank == 0:
            self.sidecar.samples = [s for part in gathered for s in part[0]]
            self.sidecar.loops = [loop for part in gathered for loop in part[1]]
            if any(part[2] for part in gathered):
                manifest["restored_from_cache"] = sum(part[2] for part in gathered)
        else:
            self.sidecar.samples, self.sidecar.loops = [], []

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
                                     seed=self.args.seed)
        pairs = []
        for req in requests:
            context, rendered = self._render(req.args[0])
            ids, continuation = encode_pair(self.tokenizer, context, req.args[1], move_whitespace=not rendered)
            pairs.append((([] if rendered else self._bos) + ids, continuation))
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


def _padding_copies(requests) -> list[bool]:
    """Data-parallel lm-eval pads a rank's list with extra copies of its last request: they are timed but
    kept out of the sidecar (a request legitimately appears ``repeats`` times)."""
    seen: dict[int, int] = {}
    padding = []
    for r in requests:
        seen[id(r)] = seen.get(id(r), 0) + 1
        padding.append(seen[id(r)] > max(int(getattr(r, "repeats", 1) or 1), 1))
    return padding


def _task_name(request) -> str:
    return str(getattr(request, "task_name", None) or "unknown")


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
            partial = sidecar.path  # the run's checkpoints, if any: the complete file replaces them
            suffix = f"_{len(written)}" if written else ""
            written.append(sidecar.save(Path(directory) / f"{SIDECAR_PREFIX}{stamp}{suffix}.json"))
            if partial is not None and partial.name.startswith(f"{SIDECAR_PREFIX}partial_") and partial != written[-1]:
                partial.unlink(missing_ok=True)
    return written
