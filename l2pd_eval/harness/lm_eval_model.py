"""The ``learn2pd`` lm-eval model: a dLLM + the decoding engine behind lm-eval's ``LM`` interface.

``lm_eval --model learn2pd --model_args pretrained=...,policy=...,cache=...`` reaches this class through
the import hook (:mod:`l2pd_eval.harness._hook`). This module is the interface and the batching of
requests; the parts it composes live beside it: the model_args (:mod:`.model_args`), request text <->
ids (:mod:`.prompts`), the per-request generation kwargs (:mod:`.gen_kwargs`), the Monte-Carlo
likelihood (:mod:`.loglikelihood`) and the run's sidecar, journal and checkpoints (:mod:`.recorder`).
Every generation is timed (device-synchronised, decoding only) and recorded per sample.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lm_eval.api.model import LM

from l2pd_eval.engine import GenerationConfig, GenerationOutput, SpeedConfig, check_network_settings, generate
from l2pd_eval.engine.generate import check_query_slots
from l2pd_eval.engine.memory import largest_batch
from l2pd_eval.harness.gen_kwargs import RequestSettings, request_settings
from l2pd_eval.harness.model_args import (
    AUTO_BATCH_CAP,
    AUTO_PROMPT_BUDGET,
    likelihood_cannot_use,
    merge_lm_eval_settings,
    parse_model_args,
    settings_that_cannot_act,
)
from l2pd_eval.harness.prompts import PromptCodec
from l2pd_eval.harness.recorder import RunRecorder, doc_id, padding_copies, probe_outputs, task_name
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.family import family_of
from l2pd_eval.model.loading import check_vocab, checkpoint_identity, peek_config
from l2pd_eval.policies import RunSettings, policy_class
from l2pd_eval.results.runs import spell_constraints
from l2pd_eval.results.sidecar import SampleRecord, build_manifest, count_paper_tokens

log = logging.getLogger(__name__)

#: A request's decode configuration: (gen_length, temperature). Requests of one batch share it.
Key = tuple[int, float]


def plan_batches(keys: Sequence[Key], prompt_lengths: Sequence[int], size: Callable[[Key], int],
                 grid: int | None = None) -> list[list[int]]:
    """Request indices per batch: one configuration per batch; within one, the longest prompts first (less
    padding), in batches of that configuration's size. ``grid``: a block-causal model's block length; prompts
    of one length mod it share a batch, so no batch is decoded as several (``engine.generate``)."""
    def group_of(i: int) -> tuple[Key, int]:
        return keys[i], prompt_lengths[i] % grid if grid else 0

    order = sorted(range(len(keys)), key=lambda i: (group_of(i), -prompt_lengths[i]))
    batches: list[list[int]] = []
    for key, group in itertools.groupby(order, key=group_of):
        rows, n = list(group), size(key[0])
        batches += [rows[s:s + n] for s in range(0, len(rows), n)]
    return batches


def choose_device(requested: str | None) -> tuple[torch.device, int, int]:
    """The device to decode on, and (rank, world size). Under ``accelerate launch`` / torchrun
    (``WORLD_SIZE`` > 1) each rank takes its own GPU and the process group starts here if nobody started it."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device=%s requested but CUDA is not available; decoding on cpu", device)
        device = "cpu"
    rank, world_size = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        on_gpu = device.startswith("cuda")
        if on_gpu:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if on_gpu else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return torch.device(device), rank, world_size


class Learn2PDLM(LM):
    """``--model learn2pd``: generation through the block-diffusion engine, likelihood by Monte Carlo.

    Public attributes: ``args`` (the parsed model_args), ``model``, ``tokenizer``, ``special`` (mask, end
    and BOS ids), ``family`` (its entry in the family table), ``checkpoint`` (the released checkpoint it was
    recognised as, ``family_facts.Checkpoint``, or None), ``policy``, ``prompts`` (request text <->
    ids), ``config`` (the decode settings at the run's default length), ``recorder`` (sidecar & co.).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        args, policy_params = parse_model_args(kwargs)
        if kwargs.get("block_length") is None:  # a block-causal model decodes its trained block by default
            cfg = peek_config(args.pretrained, args.revision)
            if family_of(cfg).attention == "block_causal":
                args.block_length = cfg.block_size
        self.args = args
        self._device, self._rank, self._world_size = choose_device(args.device)
        self._cuda_graph = args.cuda_graph == "true" or (args.cuda_graph == "auto" and self._device.type == "cuda")
        self.speed = SpeedConfig(cuda_graph=self._cuda_graph, compile=args.compile,
                                 compile_autotune=args.compile_autotune, skinny_gemm=args.skinny_gemm)
        self._configs: dict[Key, GenerationConfig] = {}
        self._constraints: tuple[tuple[int, int], ...] = ()  # fixed answer tokens, once the tokenizer is loaded
        self._warned: set[str] = set()  # gen_kwargs overrides already announced
        self.generate_calls = 0  # lets the --use_cache hook see a rank that CachingLM never called
        self.config = self.config_for(args.gen_length_for(None))  # validates block_length against the length
        given = {k: v for k, v in kwargs.items() if v is not None}
        probe_outputs(args.sidecar, given, self._rank)  # an unwritable output is found before decoding
        self.identity = checkpoint_identity(args.pretrained, args.revision, args.seed, adapter=args.adapter)
        policy_cls = policy_class(args.policy)
        self.policy = policy_cls(**policy_params).bind(
            RunSettings(block_length=args.block_length, gen_length=args.gen_length, device=self._device,
                        model=self.identity, constraints=args.constraint_offsets(policy_cls.default_constraints)))
        check_query_slots(self.policy, args.cache)  # a policy the cache cannot serve: refused before loading
        if args.fixed_batch_size() is None and self._device.type != "cuda":
            log.warning("batch_size=auto on %s decodes 1 row per batch (the batch sizer measures GPU memory); "
                        "pass batch_size=N to batch on this device", self._device)
        self._given = set(given)  # the model_args the user set
        for line in settings_that_cannot_act(args, self.policy, self._given):
            log.warning(line)
        self.model = load_model(args.pretrained, dtype=args.dtype, device=self._device, revision=args.revision,
                                seed=args.seed, adapter=args.adapter)
        check_network_settings(self.model, self.config)  # a block-causal network's grid and caches
        self.speed.prepare(self.model)  # likelihood requests run the compiled blocks too
        self.tokenizer = load_tokenizer(args.tokenizer or args.pretrained, revision=args.revision,
                                        argument="tokenizer" if args.tokenizer else "pretrained")
        check_vocab(self.tokenizer, self.model.config, args.tokenizer or args.pretrained, args.pretrained)
        self.checkpoint = getattr(self.model, "checkpoint", None)  # a known release (family_facts), or None
        self.special = SpecialIds.resolve(self.tokenizer, self.model.config, args.mask_id, args.eos_id,
                                          args.end_ids(), checkpoint=self.checkpoint)
        self._constraints = args.constraint_ids(self.tokenizer, policy_cls.default_constraints)
        if self._constraints:  # the configs made before the tokenizer was there lack them
            self._configs.clear()
            self.config = self.config_for(args.gen_length_for(None))
        self.family = family_of(self.model.config)
        self.prompts = PromptCodec.for_run(self.tokenizer, self.family, self.special, args.chat, args.add_bos_token,
                                           (args.pretrained, args.tokenizer))
        self.batch_sizes: dict[Key, int] = {}  # rows per batch as used; lm-eval records the values too
        self.recorder = RunRecorder(self._manifest(kwargs), self._rank, self._world_size, args.sidecar,
                                    args.checkpoint_s)

    def _manifest(self, model_args: dict[str, Any]) -> dict[str, Any]:
        """The sidecar's run manifest: every setting that changes answers or speed (docs/results.md)."""
        a = self.args
        return build_manifest(
            model=a.pretrained, model_identity=self.identity, family=self.family.name,
            add_bos_token=bool(self.prompts.bos),
            checkpoint=self.checkpoint.hub_id if self.checkpoint else None, adapter=a.adapter,
            chat=self.prompts.chat, policy=a.policy, policy_params=self.policy.params(), cache=a.cache,
            cache_params=a.cache_params,
            eotp=self.config.eotp, eot_ids=list(self.special.end_ids), paper_drop_ids=list(self.family.paper_drop_ids),
            gen_length=a.gen_length or "auto (task max_gen_toks)", block_length=self.config.block_length,
            steps=a.steps or "gen_length", model_args={k: v for k, v in model_args.items() if v is not None},
            temperature="task gen_kwargs" if a.temperature is None else a.temperature,
            eos_conf_zero=a.eos_conf_zero, eos_conf_rule=a.eos_conf_rule, logits_eos_inf=a.logits_eos_inf,
            constraints=spell_constraints(a.constraints_text(policy_class(a.policy).default_constraints)),
            batch_size=a.batch_size, batch_sizes=[], dtype=str(self.model.dtype),
            device=str(self._device), seed=self.config.seed, world_size=self._world_size,
            cuda_graph=self._cuda_graph, compile=a.compile, compile_autotune=a.compile_autotune,
            attention=self.family.attention, split_keys=self.speed.split_keys,
            skinny_gemm=a.skinny_gemm,
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Learn2PDLM:
        """lm-eval's entry point for ``--model_args``: same text parsing as lm-eval, then our merge.

        Args:
            arg_string: ``key=value,key=value`` as typed after ``--model_args``.
            additional_config: what lm-eval passes besides (``batch_size``, ``max_batch_size``, ``device``);
                a key also in ``arg_string`` loses to it (:func:`.model_args.merge_lm_eval_settings`).

        Returns:
            The model, loaded; a bad argument is one ``ValueError`` naming it before anything loads.
        """
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> Learn2PDLM:
        """As :meth:`create_from_arg_string`, with ``arg_dict`` already parsed into values."""
        return cls(**merge_lm_eval_settings(arg_dict, additional_config or {}))

    # -- decode settings --------------------------------------------------------------------------
    def config_for(self, gen_length: int, temperature: float | None = None) -> GenerationConfig:
        """One config per (decode length, temperature); ``temperature`` None: the run's (model_args or 0)."""
        key = (gen_length, (self.args.temperature or 0.0) if temperature is None else temperature)
        if key not in self._configs:
            self._configs[key] = self.args.generation_config(gen_length, key[1], self._constraints_for(gen_length))
        return self._configs[key]

    def _constraints_for(self, gen_length: int) -> tuple[tuple[int, int], ...]:
        """The fixed answer tokens at this length. Given ones must fit (GenerationConfig says which do not);
        a policy's default ones (``constraints=auto``) that do not fit are dropped, saying so once."""
        if self.args.constraints.strip().lower() != "auto":
            return self._constraints
        fit = tuple((o, t) for o, t in self._constraints if o < gen_length)
        if len(fit) < len(self._constraints) and f"constraints@{gen_length}" not in self._warned:
            self._warned.add(f"constraints@{gen_length}")
            log.warning("constraints=auto: policy=%s's default fixed tokens %r reach past gen_length=%d and are left "
                        "out at that length; pass constraints=OFFSET:WORD|... to place them", self.args.policy,
                        self.args.constraints_text(policy_class(self.args.policy).default_constraints), gen_length)
        return fit

    def batch_size_for(self, config: GenerationConfig) -> int:
        """Rows per batch at ``config``, decided the first time its (gen_length, temperature) is met.

        A fixed ``batch_size=N`` is N everywhere. ``auto`` sizes each configuration once by the largest
        batch that fits the device (:func:`l2pd_eval.engine.memory.largest_batch`), as lm-eval's HF model
        re-sizes per request group: a run of 256- and 1024-token tasks gets a size for each. The sizes
        used go to the manifest (``batch_sizes``). No collective: ranks may meet the configurations in
        different orders, and the batch size changes no answer.
        """
        key = (config.gen_length, config.temperature)
        if key not in self.batch_sizes:
            fixed = self.args.fixed_batch_size()
            self.batch_sizes[key] = fixed if fixed is not None else self._auto_batch_size(config)
            self.recorder.sidecar.manifest["batch_sizes"] = [
                {"gen_length": g, "temperature": t, "batch_size": n} for (g, t), n in sorted(self.batch_sizes.items())]
        return self.batch_sizes[key]

    def _auto_batch_size(self, config: GenerationConfig) -> int:
        size = largest_batch(self.model, config, prompt_len=AUTO_PROMPT_BUDGET,
                             cap=self.args.max_batch_size or AUTO_BATCH_CAP, speed=self.speed, policy=self.policy)
        log.info("batch_size=auto: %d rows fit at gen_length %d, temperature %g (prompt budget %d tokens)", size,
                 config.gen_length, config.temperature, AUTO_PROMPT_BUDGET)
        return size

    # -- lm-eval plumbing -------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        """Names the chat template in lm-eval's cache keys (``--apply_chat_template``)."""
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template (lm-eval records it; ``--apply_chat_template`` renders with it)."""
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render a conversation with the tokenizer's chat template (lm-eval's ``--apply_chat_template``).

        Args:
            chat_history: ``{"role": ..., "content": ...}`` turns (lm-eval's few-shot turns included).
            add_generation_prompt: end with the assistant header the answer goes under.

        Returns:
            The rendered text; :meth:`generate_until` recognises it and does not wrap it again.
        """
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along dim 0 (lm-eval pads its request lists with this)."""
        if self._world_size <= 1:
            return tensor
        flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(flat) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, flat.contiguous())
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Collect one picklable object per rank (a collective: every rank calls it).

        Args:
            obj: this rank's object.
            dst: the rank that receives them.

        Returns:
            On ``dst``, the objects in rank order; on the other ranks, None.
        """
        if self._world_size <= 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        """Wait for every rank."""
        if self._world_size > 1:
            torch.distributed.barrier()

    # -- requests ---------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode an answer for each request.

        Args:
            requests: ``Instance`` objects whose ``args`` are ``(context, gen_kwargs)``: the prompt text and
                the task's generation kwargs (``until``, ``max_gen_toks``, ``temperature``, ``do_sample``;
                any other key is an error, :mod:`l2pd_eval.harness.gen_kwargs`). May be empty on a
                data-parallel rank with nothing left to decode: it still joins the collective at the end.
            disable_tqdm: no progress display.

        Returns:
            One answer per request, in request order: the decoded text with special tokens skipped, cut
            before the first ``until`` string, at most ``max_gen_toks`` tokens.

        The whole call is timed as the papers do (docs/results.md): the loop clock starts before tokenising
        and stops after the last answer is detokenised. After each batch its answers go to lm-eval's
        ``--use_cache`` db (with their timing journal) and a partial sidecar is checkpointed, so an
        interrupted run keeps its work (:mod:`l2pd_eval.harness.resume`).
        """
        self.generate_calls += 1
        if not requests and self._world_size <= 1:
            return []
        outputs: list[str] = []
        if requests:
            padding = padding_copies(requests)
            with self.recorder.timed_call(requests, padding):
                outputs = self._decode_requests(requests, padding, disable_tqdm)
        self.recorder.end_call(self.gather_object)  # collective: rank 0 gathers every rank's records
        return outputs

    def _decode_requests(self, requests, padding: list[bool], disable_tqdm: bool) -> list[str]:
        from l2pd_eval.results.timing import LiveTPS

        settings = [request_settings(r.args[1], self.args.temperature, self._warned) for r in requests]
        encoded = [self.prompts.encode(r.args[0]) for r in requests]
        keys = [(self.args.gen_length_for(s.max_gen_toks), s.temperature) for s in settings]
        batches = plan_batches(keys, [len(e) for e in encoded], lambda key: self.batch_size_for(self.config_for(*key)),
                               getattr(self.model, "block_size", None))
        outputs: list[str] = [""] * len(requests)
        show = None if self.args.progress and not disable_tqdm and self._rank == 0 else False
        progress = LiveTPS(total=len(requests), description=f"learn2pd {self.args.policy}", enabled=show,
                           log_every_s=self.args.progress_every_s)
        with progress:
            for idx in batches:
                config = self.config_for(*keys[idx[0]])
                out = generate(self.model, [encoded[i] for i in idx], config, self.policy, self.special,
                               speed=self.speed)
                batch = [requests[i] for i in idx]
                texts, records = self._answers(out, batch, [settings[i] for i in idx], config)
                for i, text in zip(idx, texts, strict=True):
                    outputs[i] = text
                self.recorder.record_batch(batch, texts, records, [padding[i] for i in idx], self.cache_hook)
                progress.update(sum(s.num_tokens for s in out.stats), out.stats[0].latency, samples=len(idx))
        return outputs

    def _answers(self, out: GenerationOutput, requests: list, settings: list[RequestSettings],
                 config: GenerationConfig) -> tuple[list[str], list[SampleRecord]]:
        """One decoded batch as answer texts and their timing records (the papers' token count included)."""
        texts, records = [], []
        for row, (req, s) in enumerate(zip(requests, settings, strict=True)):
            st = out.stats[row]
            keep = min(st.num_tokens, s.max_gen_toks or config.gen_length)
            texts.append(self.prompts.decode(out.tokens[row, :keep].tolist(), list(s.until)))
            records.append(SampleRecord.from_row_stats(
                task_name(req), doc_id(req), st, config.gen_length,
                paper_tokens=count_paper_tokens(self.prompts.token_ids, texts[-1], self.family.paper_drop_ids)))
        return texts, records

    def bind_cache_db(self, path: str) -> None:
        """``--use_cache``: called by the hook with the db's path before lm-eval opens it; ties the db to this
        run's model_args, or refuses it (:func:`l2pd_eval.harness.resume.bind_db`)."""
        self.recorder.bind_db(path)

    def restore_cached(self, requests, db) -> None:
        """``--use_cache``: called by the hook (:mod:`l2pd_eval.harness._hook`) with every request of
        lm-eval's ``generate_until`` call, before the cached ones are taken out; their timing records come
        back from the journal, each once.

        Args:
            requests: the call's ``Instance`` objects, cached or not.
            db: lm-eval's response cache (a ``SqliteDict`` keyed by request hash).
        """
        self.recorder.restore_cached(requests, db)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """LLaDA's Monte-Carlo bound on log p(continuation | context) (:mod:`l2pd_eval.harness.loglikelihood`).

        Args:
            requests: ``Instance`` objects whose ``args`` are ``(context, continuation)``; the continuation
                carries its word-boundary space (``" world"``).
            disable_tqdm: no progress bar.

        Returns:
            One ``(log-likelihood bound, is_greedy)`` per request, in request order.

        Contexts get the chat template by the same rule as generation prompts (``chat=``); a chat-rendered
        context keeps its trailing template newlines instead of handing them to the continuation.
        """
        if not requests:
            return []
        if "loglikelihood" not in self._warned:
            self._warned.add("loglikelihood")
            line = likelihood_cannot_use(self.policy, self._given)
            if line:
                log.warning(line)
        from tqdm import tqdm

        from l2pd_eval.harness.loglikelihood import LoglikelihoodConfig, encode_pair, loglikelihood

        config = LoglikelihoodConfig(mc_num=self.args.mc_num, mc_batch_size=self.args.mc_batch_size,
                                     seed=self.args.seed)
        pairs = []
        for req in requests:
            context, rendered = self.prompts.render(req.args[0])
            ids, continuation = encode_pair(self.tokenizer, context, req.args[1], move_whitespace=not rendered)
            pairs.append((([] if rendered else self.prompts.bos) + ids, continuation))
        show = self.args.progress and not disable_tqdm and self._rank == 0
        with tqdm(total=len(requests), desc=f"learn2pd loglikelihood (mc_num={config.mc_num})",
                  disable=not show) as bar:
            results = loglikelihood(self.model, pairs, self.special.mask, config, on_request_done=bar.update)
        for req, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Not supported: a masked diffusion model has no left-to-right likelihood to roll (perplexity)."""
        raise NotImplementedError("learn2pd: loglikelihood_rolling (perplexity) is not supported for masked "
                                  "diffusion models; use generate_until or multiple-choice tasks")

