"""Log-likelihood of a continuation under LLaDA: the Monte-Carlo bound of the LLaDA paper (multiple-choice tasks).

A masked diffusion model has no left-to-right factorisation, so ``log p(continuation | context)`` is replaced by
its lower bound (the negative masked-diffusion loss restricted to the continuation)::

    log p(y | x) >= E_{l ~ U{1..L}} E_{S ~ random l-subset of y} [ (L / l) * sum_{i in S} log p(y_i | x, y masked at S) ]

estimated from ``mc_num`` samples. The mask counts of one request are stratified over all its samples
(``l_j = floor(frac(u + j / mc_num) * L) + 1`` with one uniform ``u``), which keeps each count's share at
``mc_num / L`` up to one sample, like LLaDA's low-discrepancy choice, but over the whole request rather than
per mini-batch, so the estimate does not depend on how samples are batched.

Each request draws its samples from its own ``torch.Generator``, seeded (``rng.row_seed``) from the run seed and
the request's token ids (not its position in the list): results are identical under any batching,
``mc_batch_size`` or request order, and identical on CPU and GPU (masks are drawn on the CPU).

``is_greedy`` follows LLaDA's evaluation: starting from the context with the whole continuation masked, unmask one
position per forward pass (the most confident one, filled with its argmax); the continuation is "greedy" when
this decode reproduces it exactly. It costs ``L`` forward passes for a batch of requests (``mc_batch_size`` of
them at once), i.e. about ``L / mc_num`` of the likelihood estimate's compute; ``greedy=False`` skips it and
reports False (LLaDA's ``is_check_greedy=False``), which multiple-choice metrics never read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from l2pd_eval.engine import rng
from l2pd_eval.engine.greedy import unmask_most_confident
from l2pd_eval.engine.layout import LeftPadded, left_pad
from l2pd_eval.errors import ConfigError

log = logging.getLogger(__name__)

Pair = tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class LoglikelihoodConfig:
    """``mc_num`` samples per request, run ``mc_batch_size`` rows per forward pass (rows of several requests
    may share one). ``max_length``: longest sequence the model takes (default: its max_sequence_length)."""

    mc_num: int = 128
    mc_batch_size: int = 32
    seed: int = 0
    greedy: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        for name in ("mc_num", "mc_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.max_length is not None and self.max_length <= 0:
            raise ConfigError(f"max_length={self.max_length!r} must be a positive integer")


def encode_pair(tokenizer, context: str, continuation: str, move_whitespace: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's HF backend splits them.

    The pair is tokenised as one string and cut after the context's tokens, so the continuation gets the tokens
    it has in running text. Trailing whitespace of the context moves to the continuation (``"Answer: " + "5"``
    scores ``" 5"``), except for chat-rendered contexts, whose trailing newlines belong to the template.
    No special tokens are added: the adapter's generation prompts carry none either.
    """
    if move_whitespace:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    ctx, whole = ids(context), ids(context + continuation)
    if whole[:len(ctx)] == ctx:
        return ctx, whole[len(ctx):]
    return ctx, ids(continuation)  # a merge across the boundary: keep the context's own tokens intact


def truncate_pair(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """Left-truncate the context so the pair fits the model (lm-eval's HF backend does the same)."""
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's "
                         f"max_sequence_length={max_length}")
    keep = max_length - len(continuation)
    return list(context)[max(0, len(context) - keep):], list(continuation)


def sample_masks(length: int, mc_num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(mask counts [mc_num] in 1..length, stratified; masks [mc_num, length] bool with that many True each)."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    frac = torch.remainder(u + torch.arange(mc_num, dtype=torch.float64) / mc_num, 1.0)
    counts = (frac * length).floor().long().clamp_(0, length - 1) + 1
    keys = torch.rand(mc_num, length, generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)  # a uniformly random permutation per sample
    return counts, ranks < counts[:, None]


def _window_logits(model, layout: LeftPadded, window: int) -> Tensor:
    """Logits of the last ``window`` positions, in float32 or wider. Rows are left-padded, so every
    continuation ends at the right edge and the window is only ``max L`` wide even when requests of
    different lengths share a batch (the vocabulary projection dominates memory)."""
    logits = model(layout.ids, position_ids=layout.positions, key_mask=layout.key_mask,
                   logits_slice=slice(layout.ids.shape[1] - window, None))
    return _at_least_float32(logits)


def _at_least_float32(logits: Tensor) -> Tensor:
    """bf16 logits are scored in float32; float64 models (exact tests) stay float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _Samples:
    """The requests in batching order (longest first, so similar lengths share batches) and the Monte-Carlo
    rows of one request at a time: batches consume rows in order, so holding more would only cost memory."""

    def __init__(self, pairs: Sequence[Pair], mask_id: int, config: LoglikelihoodConfig):
        self.pairs, self.mask_id, self.config = pairs, mask_id, config
        self.seqs = [torch.tensor([*c, *y], dtype=torch.long) for c, y in pairs]
        self.ctx_lens = [len(c) for c, _ in pairs]
        self.cont_lens = [len(y) for _, y in pairs]
        if min(self.cont_lens) == 0:
            raise ValueError("loglikelihood: a request has an empty continuation")
        self.order = sorted(range(len(pairs)), key=lambda i: (-len(self.seqs[i]), i))
        self._current: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def rows(self, slot: int) -> tuple[Tensor, Tensor, Tensor]:
        """(noisy rows, continuation masks, weights ``L / l``) of the request at ``slot``, drawn from its own
        generator, seeded from its ids, so the draws never depend on batching or request order."""
        if slot not in self._current:
            self._current.clear()
            i, n = self.order[slot], self.config.mc_num
            (c, y), L = self.pairs[i], self.cont_lens[i]
            gen = torch.Generator().manual_seed(rng.row_seed([*c, -1, *y], self.config.seed))  # -1: the boundary
            counts, masks = sample_masks(L, n, gen)
            full = torch.zeros(n, len(self.seqs[i]), dtype=torch.bool)
            full[:, self.ctx_lens[i]:] = masks
            noisy = torch.where(full, self.mask_id, self.seqs[i].expand(n, -1))
            self._current[slot] = (noisy, masks, L / counts.double())
        return self._current[slot]


def _batch_loss(model, samples: _Samples, start: int, stop: int, device: torch.device) -> Tensor:
    """Weighted masked NLL of rows ``start:stop`` (in batching order), which may span several requests: one
    forward pass whatever ``mc_num`` is, so small requests do not leave the batch half empty."""
    n, mask_id = samples.config.mc_num, samples.mask_id
    noisy_rows, clean_rows, mask_rows, weights, window = [], [], [], [], 0
    for slot in range(start // n, (stop - 1) // n + 1):  # the requests this batch touches
        lo, hi = max(start, slot * n) - slot * n, min(stop, (slot + 1) * n) - slot * n
        noisy, masks, w = samples.rows(slot)
        i = samples.order[slot]
        noisy_rows.extend(noisy[lo:hi])
        clean_rows.extend([samples.seqs[i]] * (hi - lo))
        mask_rows.extend(masks[lo:hi].long())
        weights.append(w[lo:hi])
        window = max(window, samples.cont_lens[i])
    batch = left_pad(noisy_rows, mask_id, device)
    target = left_pad(clean_rows, mask_id, device).ids[:, -window:]
    masked = left_pad(mask_rows, 0, device).ids[:, -window:].bool()
    logits = _window_logits(model, batch, window)
    nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    return torch.where(masked, nll, 0.0).double().sum(dim=1) * torch.cat(weights).to(device)


@torch.no_grad()
def mc_loglikelihood(model, pairs: Sequence[Pair], mask_id: int, config: LoglikelihoodConfig,
                     on_request_done: Callable[[int], None] | None = None) -> list[float]:
    """The Monte-Carlo estimate of ``log p(continuation | context)`` for each pair (see the module docstring).

    Pairs must already fit the model (see :func:`truncate_pair`) and have a non-empty continuation.
    """
    if not pairs:
        return []
    device = next(model.parameters()).device
    samples = _Samples(pairs, mask_id, config)
    n = config.mc_num
    total_rows = len(pairs) * n
    row_loss = torch.zeros(total_rows, dtype=torch.float64, device=device)
    done = 0
    for start in range(0, total_rows, config.mc_batch_size):
        stop = min(start + config.mc_batch_size, total_rows)
        row_loss[start:stop] = _batch_loss(model, samples, start, stop, device)
        finished = stop // n
        if on_request_done is not None and finished > done:
            on_request_done(finished - done)
        done = finished
    estimates = -(row_loss.view(len(pairs), n).sum(dim=1) / n)
    out = [0.0] * len(pairs)
    for slot, value in enumerate(estimates.tolist()):
        out[samples.order[slot]] = value
    return out


@torch.no_grad()
def greedy_matches(model, pairs: Sequence[Pair], mask_id: int, batch_size: int) -> list[bool]:
    """Whether LLaDA's one-token-per-step greedy decode of the masked continuation reproduces it.

    Requests are batched ``batch_size`` at a time; each step every row unmasks its most confident masked
    position (argmax token), so a batch takes ``max L`` forward passes. Rows that finished early idle.
    """
    if not pairs:
        return []
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), i))
    out = [False] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        layout = left_pad([torch.tensor([*pairs[i][0], *pairs[i][1]], dtype=torch.long) for i in idx],
                          mask_id, device)
        cont = torch.tensor([len(pairs[i][1]) for i in idx], device=device)
        window = int(cont.max())
        target = layout.ids[:, -window:].clone()
        cont_region = torch.arange(window, device=device)[None, :] >= (window - cont)[:, None]
        x = layout.ids[:, -window:]  # a view: the decode writes here
        x[cont_region] = mask_id
        unmask_most_confident(model, layout, slice(layout.ids.shape[1] - window, None), cont_region.clone(), window)
        same = torch.where(cont_region, x == target, True).all(dim=1)
        for i, ok in zip(idx, same.tolist(), strict=True):
            out[i] = bool(ok)
    return out


def loglikelihood(model, pairs: Sequence[Pair], mask_id: int, config: LoglikelihoodConfig | None = None,
                  on_request_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """lm-eval's ``(loglikelihood, is_greedy)`` per (context ids, continuation ids) pair.

    Contexts are left-truncated to fit ``config.max_length`` (default: the model's max_sequence_length).
    """
    config = config or LoglikelihoodConfig()
    max_length = config.max_length or int(model.config.max_sequence_length)
    fitted = [truncate_pair(c, y, max_length) for c, y in pairs]
    cut = sum(len(f[0]) < len(p[0]) for f, p in zip(fitted, pairs, strict=True))
    if cut:
        log.warning("loglikelihood: %d of %d contexts left-truncated to fit max_length=%d", cut, len(pairs), max_length)
    values = mc_loglikelihood(model, fitted, mask_id, config, on_request_done)
    greedy = greedy_matches(model, fitted, mask_id, config.mc_batch_size) if config.greedy else [False] * len(fitted)
    return list(zip(values, greedy, strict=True))
