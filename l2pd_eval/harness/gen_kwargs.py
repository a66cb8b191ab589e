"""lm-eval's per-request generation kwargs (task YAML ``generation_kwargs`` merged with CLI ``--gen_kwargs``)
as the decoder's settings. Every key either reaches the decoder or is an error naming it.

Rules (docs/errors.md lists the messages):

* ``until``: stop strings, the answer is cut before the first one; ``max_gen_toks``: answer length (the
  decode length is it rounded up to whole blocks unless model_args ``gen_length=`` fixes it).
* ``do_sample=false``: greedy (temperature 0). ``do_sample=true``: Gumbel-max sampling at ``temperature``
  (1.0 when not given, as in transformers). Without ``do_sample``: ``temperature > 0`` samples, 0 is greedy.
  ``temperature > 0`` with ``do_sample=false``, or ``do_sample=true`` with ``temperature=0``, is a
  contradiction and an error.
* model_args ``temperature=`` (when given) is the run's setting and wins over the task's; a warning says
  so once when they differ (the same rule as ``batch_size``/``device``).
* Any other key (``top_p``, ``top_k``, ``num_beams``, ...) is an error; a key whose value is ``None`` is
  "not given" and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from l2pd_eval.errors import ConfigError
from l2pd_eval.typed_args import coerce, parse_bool

log = logging.getLogger(__name__)
HONOURED = ("until", "max_gen_toks", "temperature", "do_sample")


@dataclass(frozen=True)
class RequestSettings:
    until: tuple[str, ...]
    max_gen_toks: int | None
    temperature: float


def _temperature(kwargs: dict[str, Any]) -> float:
    temp = kwargs.get("temperature")
    sample = kwargs.get("do_sample")
    if sample is not None:
        sample = parse_bool("gen_kwargs do_sample", sample)
    value = None if temp is None else coerce("gen_kwargs temperature", temp, float)  # finite, or an error
    if value is not None and value < 0:
        raise ConfigError(f"gen_kwargs temperature={value} must be >= 0")
    if sample is False:
        if value:
            raise ConfigError(f"gen_kwargs temperature={value} with do_sample=false: the task asks for greedy "
                              "decoding; add do_sample=true to --gen_kwargs to sample, or drop temperature")
        return 0.0
    if sample is True:
        if value == 0:
            raise ConfigError("gen_kwargs do_sample=true with temperature=0: give a temperature > 0 to sample, "
                              "or do_sample=false for greedy decoding")
        return 1.0 if value is None else value
    return value or 0.0


def request_settings(gen_kwargs: dict[str, Any] | None, model_temperature: float | None,
                     warned: set[str]) -> RequestSettings:
    """One request's settings; ``warned`` collects the overrides already announced (said once a run)."""
    kwargs = {k: v for k, v in (gen_kwargs or {}).items() if v is not None}
    unknown = sorted(set(kwargs) - set(HONOURED))
    if unknown:
        raise ConfigError(f"gen_kwargs {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}: learn2pd cannot "
                          f"honour {'it' if len(unknown) == 1 else 'them'}; valid keys: {', '.join(HONOURED)}")
    until = kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else tuple(until)
    max_toks = kwargs.get("max_gen_toks")
    if max_toks is not None:
        max_toks = coerce("gen_kwargs max_gen_toks", max_toks, int)
        if max_toks < 1:
            raise ConfigError(f"gen_kwargs max_gen_toks={max_toks} must be a positive integer")
    temperature = _temperature(kwargs)
    if model_temperature is not None:
        if model_temperature != temperature and "temperature" not in warned:
            warned.add("temperature")
            log.warning("model_args temperature=%s overrides the task's generation kwargs (temperature %s)",
                        model_temperature, temperature)
        temperature = model_temperature
    return RequestSettings(until=until, max_gen_toks=max_toks, temperature=temperature)


def check_tasks(tasks: Any, cli_gen_kwargs: str | dict[str, Any] | None, task_manager: Any) -> None:
    """Every generation task's ``generation_kwargs``, updated by ``--gen_kwargs`` as lm-eval will update them,
    through :func:`request_settings`: a contradiction (``temperature=0.5`` on a ``do_sample: false`` task)
    or a key we cannot honour is one error naming the task, before the model is loaded.

    Reads the task index's configs (YAML with includes resolved, nothing built); tasks given as objects or
    dicts, or whose configs the index does not hold, are checked per request as before.
    """
    if isinstance(cli_gen_kwargs, str):
        from lm_eval.utils import simple_parse_args_string

        cli_gen_kwargs = simple_parse_args_string(cli_gen_kwargs)
    cli = dict(cli_gen_kwargs or {})
    index = getattr(task_manager, "task_index", None)
    if not isinstance(index, dict):
        return
    names = [tasks] if isinstance(tasks, str) else [t for t in tasks or [] if isinstance(t, str)]
    seen: set[str] = set()

    def configs(name: str):
        entry = index.get(name)
        if name in seen or entry is None:
            return
        seen.add(name)
        kind = getattr(entry.kind, "name", "")
        if kind == "TAG":  # its member tasks' names
            for member in sorted(entry.tags or ()):
                yield from configs(member)
        elif not isinstance(entry.cfg, dict):
            return
        elif kind == "GROUP":
            for sub in entry.cfg.get("task") or []:
                if isinstance(sub, str):
                    yield from configs(sub)
        elif entry.cfg.get("output_type", "generate_until") == "generate_until":
            yield name, entry.cfg

    for name in names:
        for task, cfg in configs(name):
            merged = {**(cfg.get("generation_kwargs") or {}), **cli}
            try:
                request_settings(merged, None, set())
            except ConfigError as err:
                raise ConfigError(f"task {task}: {err}") from None
