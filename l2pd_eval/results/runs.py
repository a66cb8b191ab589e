"""Find lm-eval results and timing sidecars on disk and pair them into runs.

``report RUN...`` accepts a results folder (searched recursively), an lm-eval results JSON, or a
sidecar JSON. Files are recognised by content, not by name.

Pairing rule (one lm-eval invocation = one results file + at most one sidecar, in the same folder):
a sidecar belongs to a results file when

1. the sidecar's ``started_at`` (when the model was built) lies inside the results file's evaluation
   window ``[date - 10 min, date + total_evaluation_time_seconds + 1 min]`` (``date`` is lm-eval's start
   time; when ``total_evaluation_time_seconds`` is absent the end is the ``date_id`` in the file name, then
   the file's mtime);
2. their ``model_args`` agree on every key both define (so two models evaluated concurrently into the
   same folder are not mixed up); and
3. their task sets overlap (when both are known).

Among candidates the pair with the smallest ``|started_at - date|`` wins; each file is used once.
Before all that, a sidecar named ``l2pd_<stamp>.json`` (or ``l2pd_<stamp>_<i>.json``) pairs with
``results_<stamp>.json``: the ``learn2pd`` model writes it right after lm-eval saved that file.
A sidecar without results is a run that did not finish (its timing is reported, accuracy "n/a");
results without a sidecar report accuracy only, with the method read from ``model_args``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2pd_eval.results.columns import choose_metric, metric_keys, split_task
from l2pd_eval.results.methods import (
    CACHE_PARAMS,
    MODEL_ARGS_PARAMS,
    Method,
    knob_params,
    method_from_settings,
)
from l2pd_eval.results.sidecar import (
    SCHEMA,
    Sidecar,
    TaskAggregate,
    is_sidecar_json,
    parse_date_id,
    read_json,
)
from l2pd_eval.typed_args import comparable

WINDOW_BEFORE_S = 600.0  # model built before lm-eval's clock started (python API with an LM instance)
WINDOW_AFTER_S = 60.0

# --------------------------------------------------------------------------------------------------
# lm-eval results files


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def is_results_json(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("results"), dict) and ("configs" in data or "config" in data)


def model_args_as_text(model_args: Any) -> dict[str, str]:
    """Recorded model_args (lm-eval's ``key=value,key=value`` string, or a dict) as text values, unchecked;
    the adapter's strict, typed parse is :func:`l2pd_eval.harness.model_args.parse_model_args`."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    out: dict[str, str] = {}
    if isinstance(model_args, str):
        for part in model_args.split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                out[key.strip()] = value.strip()
    return out


def _spell(value: Any) -> str:
    """A recorded setting spelt one way for comparing and for a row label: ``8`` / ``8.0`` / ``"8"`` -> ``8``,
    booleans and true/false words lower case (typed_args.comparable, with numbers as short as they go)."""
    text = comparable(value)
    try:
        return f"{float(text):g}"
    except (TypeError, ValueError):
        return str(text)


@dataclass
class ResultsFile:
    path: Path
    data: dict[str, Any]

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.data.get("results", {})

    @property
    def model_args(self) -> dict[str, str]:
        return model_args_as_text((self.data.get("config") or {}).get("model_args"))

    def subtasks(self) -> dict[str, list[str]]:
        return {g: list(s) for g, s in (self.data.get("group_subtasks") or {}).items()}

    def top_level(self) -> list[str]:
        """What a table shows: outermost tasks and groups, where a group without aggregate metrics (a
        suite such as ``l2pd_suite``) is replaced by its members."""
        subs = self.subtasks()
        inner = {t for members in subs.values() for t in members}
        out: list[str] = []

        def visit(name: str) -> None:
            if name in subs and not metric_keys(self.results.get(name, {})):
                for child in subs[name]:
                    visit(child)
            elif name not in out:
                out.append(name)

        for name in self.results:
            if name not in inner:
                visit(name)
        return out

    def leaves(self, name: str) -> list[str]:
        subs = self.subtasks()
        if name not in subs or not subs[name]:
            return [name]
        out: list[str] = []
        for child in subs[name]:
            out.extend(self.leaves(child))
        return out

    def n_samples(self, name: str) -> int | None:
        table = self.data.get("n-samples") or {}
        counts = [table.get(leaf, {}).get("effective") for leaf in self.leaves(name)]
        if not counts or any(not isinstance(c, int) for c in counts):
            return None
        return sum(counts)

    @property
    def start(self) -> float | None:
        return _as_float(self.data.get("date"))

    @property
    def end(self) -> float | None:
        start, total = self.start, self.data.get("total_evaluation_time_seconds")
        try:
            if start is not None and total is not None:
                return start + float(total)
        except (TypeError, ValueError):
            pass
        stamp = parse_date_id(self.path.stem.rsplit("_", 1)[-1])
        if stamp is not None:
            return stamp
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def check_results_json(path: Path, data: dict[str, Any]) -> None:
    """The parts of an lm-eval results file the report reads must have their types, or one error names
    the file and the key (a hand-edited or half-copied file would otherwise surface as a traceback)."""
    for key in ("results", "n-samples", "group_subtasks", "config"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}: corrupt lm-eval results file (\"{key}\" must be an object, "
                             f"got {type(value).__name__})")
    for task, entry in data["results"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: corrupt lm-eval results file (results[{task!r}] must be an object, "
                             f"got {type(entry).__name__})")


# --------------------------------------------------------------------------------------------------
# Runs and what they measured per task


@dataclass
class TaskResult:
    """What one run measured for one task: accuracy and timing, one column of the report."""

    task: str  # base task name (column)
    length: int | None
    source_task: str  # the lm-eval task or group name
    accuracy: float | None = None  # fraction 0..1
    metric: str | None = None
    accuracy_stderr: float | None = None
    n_eval: int | None = None
    timing: TaskAggregate | None = None
    n_shot: int | None = None  # few-shot count lm-eval recorded ("n-shot")
    # Settings that change the answers (ANSWER_SETTINGS), spelt by typed_args.comparable; runs that differ
    # in any of them are different rows of the report, never one cell.
    settings: dict[str, str] = field(default_factory=dict)


#: What changes a run's answers besides the method (policy, parameters, cache, EoTP) and the column (task,
#: length): the model, the block schedule, sampling, the prompt format, and fixed answer tokens.
ANSWER_SETTINGS = ("model", "block_length", "steps", "temperature", "do_sample", "chat", "chat_template",
                   "system_instruction", "fewshot", "fewshot_as_multiturn", "constraints")

#: The policies' default fixed answer tokens (``Policy.default_constraints``, what ``constraints=auto`` gives),
#: spelt out to keep results torch-free: sidecars from before the manifest recorded ``constraints`` are read
#: by them (tests/test_results_rows.py checks they agree with the registry).
DEFAULT_CONSTRAINTS = {"prophet": "200:The|201:answer|202:is"}


def spell_constraints(text: str | None) -> str:
    """Fixed answer tokens (``constraints=`` text, ``OFFSET:WORD|...``) spelt one way, so two runs with the
    same tokens compare equal whatever order or spacing they were typed in: parts by offset, ``none`` for
    none (also for ``""`` and None: a run without fixed tokens)."""
    parts = [p.strip() for p in (text or "").split("|") if p.strip()]
    if not parts or [p.lower() for p in parts] == ["none"]:
        return "none"
    pairs = []
    for part in parts:
        offset, _, word = (s.strip() for s in part.partition(":"))
        number = int(offset) if offset.isdigit() else -1
        pairs.append((number, f"{number if number >= 0 else offset}:{word}"))
    return "|".join(spelt for _, spelt in sorted(pairs))


@dataclass
class Run:
    sidecar: Sidecar | None = None
    results: ResultsFile | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        paths = [str(x.path) for x in (self.results, self.sidecar) if x is not None and x.path is not None]
        return " + ".join(paths) or "<in-memory run>"

    @property
    def started_at(self) -> float:
        if self.sidecar is not None and self.sidecar.started_at is not None:
            return self.sidecar.started_at
        if self.results is not None and self.results.start is not None:
            return self.results.start
        return 0.0

    @property
    def model(self) -> str | None:
        """The evaluated model's name or path (sidecar manifest, else lm-eval's ``pretrained``)."""
        name = self.manifest.get("model")
        if name is None and self.results is not None:
            name = self.results.model_args.get("pretrained")
        return str(name) if name is not None else None

    @property
    def family(self) -> str | None:
        """The model family the adapter recorded (``llada``/``dream``); None for sidecars older than that."""
        family = self.manifest.get("family")
        return str(family) if family is not None else None

    @property
    def checkpoint(self) -> str | None:
        """The released checkpoint the adapter recognised the model as (``family_facts.CHECKPOINTS``' hub id);
        None when it recognised none or the sidecar is older than that."""
        known = self.manifest.get("checkpoint")
        return str(known) if known is not None else None

    @property
    def steps(self) -> int | None:
        """The run's fixed step count (``steps=``), None when it followed gen_length (or was not recorded)."""
        steps = self.manifest.get("steps")
        return steps if isinstance(steps, int) and not isinstance(steps, bool) else None

    @property
    def partial(self) -> str | None:
        """``"partial: 37/200"`` when the run's sidecar was written mid-run (interrupted or still going)."""
        return self.sidecar.progress_label() if self.sidecar is not None else None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.sidecar.manifest if self.sidecar is not None else {}

    @property
    def method(self) -> Method:
        """From the sidecar manifest (a boolean ``eotp: true`` there is the committed rule: only sidecars
        from before the rules were told apart wrote one), else from ``model_args`` (today's spellings)."""
        m = self.manifest
        try:
            if "policy" in m:  # a cache's parameters are named after it: one namespace with the policy's
                knobs = knob_params(m)
                params = {**(m.get("policy_params") or {}), **(m.get("cache_params") or {}), **knobs}
                args = m.get("model_args")
                named = None if args is None else {*model_args_as_text(args), *knobs}
                return method_from_settings(m.get("policy"), params, m.get("cache"), m.get("eotp"), named=named)
            args = self.results.model_args if self.results is not None else {}
            params = {**{k: args[k] for k in (*MODEL_ARGS_PARAMS, *CACHE_PARAMS) if k in args}, **knob_params(args)}
            return method_from_settings(args.get("policy", "unknown"), params, args.get("cache"), args.get("eotp"))
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from None

    @property
    def constraints(self) -> str:
        """The run's fixed answer tokens (:func:`spell_constraints`): the manifest's, else what ``constraints=``
        in its model_args gives (absent or ``auto``: its policy's default, :data:`DEFAULT_CONSTRAINTS`), so a
        sidecar from before the manifest recorded them reads as a new one with the same tokens does."""
        m = self.manifest
        if "constraints" in m:
            return spell_constraints(m["constraints"])
        args = self.results.model_args if self.results is not None else model_args_as_text(m.get("model_args"))
        given = args.get("constraints", "auto")
        policy = str(m.get("policy", args.get("policy", "")))
        return spell_constraints(DEFAULT_CONSTRAINTS.get(policy) if given.strip().lower() == "auto" else given)

    @property
    def limit(self) -> float | None:
        """lm-eval's ``--limit`` of the run (a count, or a fraction below 1), None when all documents ran."""
        if self.results is None:
            return None
        return _as_float((self.results.data.get("config") or {}).get("limit"))

    def answer_settings(self, leaves: list[str], n_shot: int | None) -> dict[str, str]:
        """:data:`ANSWER_SETTINGS` of this run on a task (its ``leaves``), as far as its files record them."""
        m, data = self.manifest, self.results.data if self.results is not None else {}
        args = self.results.model_args if self.results is not None else model_args_as_text(m.get("model_args"))
        gen: dict[str, set[str]] = {}
        for leaf in leaves:
            kwargs = ((data.get("configs") or {}).get(leaf) or {}).get("generation_kwargs") or {}
            for key in ("temperature", "do_sample"):
                if key in kwargs:
                    gen.setdefault(key, set()).add(_spell(kwargs[key]))
        found: dict[str, Any] = {
            "model": self.model,
            "block_length": m.get("block_length", args.get("block_length")),
            "steps": m.get("steps", args.get("steps")),
            "temperature": ",".join(sorted(gen["temperature"])) if "temperature" in gen else None,
            "do_sample": ",".join(sorted(gen["do_sample"])) if "do_sample" in gen else None,
            "chat": m.get("chat", args.get("chat")),
            "system_instruction": data.get("system_instruction_sha"),
            "fewshot": n_shot,
            "fewshot_as_multiturn": data.get("fewshot_as_multiturn"),
            "constraints": self.constraints,
        }
        if isinstance(m.get("temperature"), (int, float)) or args.get("temperature") is not None:
            found["temperature"] = m.get("temperature") if isinstance(m.get("temperature"), (int, float)) \
                else args.get("temperature")  # the adapter's temperature= wins over the task's
        if "chat_template" in data:  # lm-eval's --apply_chat_template (None: not applied)
            sha = data.get("chat_template_sha")
            found["chat_template"] = "none" if data.get("chat_template") is None else (str(sha)[:12] if sha else "yes")
        return {k: _spell(v) for k, v in found.items() if v is not None}

    def _length_for(self, name: str, leaves: list[str]) -> int | None:
        _, length = split_task(name)
        lengths = {s.gen_length for s in self.sidecar.samples if s.task in leaves} if self.sidecar else set()
        if length is not None:
            if lengths and lengths != {length}:
                # The column says one length, the decoder used another (e.g. gen_length in model_args).
                note = (f"{name} was decoded with gen_length {', '.join(map(str, sorted(lengths)))}, not {length} "
                        "as its name says")
                if note not in self.notes:
                    self.notes.append(note)
            return length
        if len(lengths) == 1:
            return lengths.pop()
        for source in (self.manifest.get("gen_length"),
                       (self.results.model_args if self.results else {}).get("gen_length")):
            try:
                if source is not None:
                    return int(source)
            except (TypeError, ValueError):
                pass
        return None

    def task_results(self, metric_overrides: dict[str, str] | None = None) -> list[TaskResult]:
        out: list[TaskResult] = []
        covered: set[str] = set()
        if self.results is not None:
            for name in self.results.top_level():
                leaves = self.results.leaves(name)
                covered.update(leaves)
                covered.add(name)
                base, _ = split_task(name)
                entry = self.results.results.get(name, {})
                overrides = metric_overrides or {}
                metric = choose_metric(base, entry, overrides.get(name) or overrides.get(base))
                shots = (self.results.data.get("n-shot") or {}).get(name)
                shots = shots if isinstance(shots, int) else None
                result = TaskResult(base, self._length_for(name, leaves), name, metric=metric,
                                    n_eval=self.results.n_samples(name), n_shot=shots,
                                    settings=self.answer_settings(leaves, shots))
                if metric is not None:
                    result.accuracy = _as_float(entry.get(metric))
                    mname, _, filt = metric.partition(",")
                    result.accuracy_stderr = _as_float(entry.get(f"{mname}_stderr,{filt}"))
                if self.sidecar is not None:
                    rows = [s for s in self.sidecar.samples if s.task in leaves]
                    result.timing = self.sidecar.aggregate(leaves, name=name) if rows else None
                out.append(result)
        if self.sidecar is not None:
            for task in self.sidecar.tasks():
                if task in covered:
                    continue
                base, _ = split_task(task)
                out.append(TaskResult(base, self._length_for(task, [task]), task, timing=self.sidecar.aggregate(task),
                                      settings=self.answer_settings([task], None)))
        return out


# --------------------------------------------------------------------------------------------------
# Discovery and pairing


def _compatible(sidecar: Sidecar, results: ResultsFile) -> bool:
    mine = model_args_as_text(sidecar.manifest.get("model_args"))
    theirs = results.model_args
    if any(comparable(mine[k]) != comparable(theirs[k]) for k in mine.keys() & theirs.keys()):
        return False
    tasks = set(sidecar.tasks())
    known = set(results.results) | {t for subs in results.subtasks().values() for t in subs}
    return not tasks or not known or bool(tasks & known)


def _file_stamp(path: Path | None, prefix: str) -> str | None:
    """``results_<stamp>.json`` / ``l2pd_<stamp>[_<i>].json`` -> ``<stamp>`` (lm-eval's date_id)."""
    if path is None or not path.name.startswith(prefix):
        return None
    stem = re.sub(r"_\d+$", "", path.stem[len(prefix):])
    return stem if parse_date_id(stem) is not None else None


def _pair_score(sidecar: Sidecar, results: ResultsFile) -> float | None:
    stamp = _file_stamp(sidecar.path, "l2pd_")
    if stamp is not None and stamp == _file_stamp(results.path, "results_"):
        # The learn2pd model names its sidecar after the results file lm-eval just wrote: exact. Several
        # sidecars of one stamp (l2pd_<stamp>_1.json, ...): the one built closest to lm-eval's start wins.
        if not _compatible(sidecar, results):
            return None
        started, start = sidecar.started_at, results.start
        closeness = abs(started - start) if started is not None and start is not None else 0.0
        return -1e12 + closeness
    started = sidecar.started_at
    start, end = results.start, results.end
    if started is None or end is None:
        return None
    low = (start if start is not None else float("-inf")) - WINDOW_BEFORE_S
    if not (low <= started <= end + WINDOW_AFTER_S):
        return None
    if not _compatible(sidecar, results):
        return None
    return abs(started - start) if start is not None else end - started


def pair(sidecars: Iterable[Sidecar], results: Iterable[ResultsFile]) -> list[Run]:
    """Pair files of ONE folder by the rule in the module docstring."""
    sidecars, results = list(sidecars), list(results)
    candidates = []
    for i, s in enumerate(sidecars):
        for j, r in enumerate(results):
            score = _pair_score(s, r)
            if score is not None:
                candidates.append((score, i, j))
    used_s: set[int] = set()
    used_r: set[int] = set()
    runs: list[Run] = []
    for _, i, j in sorted(candidates):
        if i in used_s or j in used_r:
            continue
        used_s.add(i)
        used_r.add(j)
        runs.append(Run(sidecar=sidecars[i], results=results[j]))
    for i, s in enumerate(sidecars):
        if i not in used_s:
            runs.append(Run(sidecar=s, notes=[f"no lm-eval results for sidecar {s.path} (unfinished run?): "
                                              "accuracy n/a"]))
    for j, r in enumerate(results):
        if j not in used_r:
            runs.append(Run(results=r, notes=[f"no timing sidecar for {r.path}: TPS n/a"]))
    runs.sort(key=lambda run: (run.started_at, run.name))
    return runs


@dataclass
class _Folder:
    sidecars: list[Sidecar] = field(default_factory=list)
    results: list[ResultsFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # files that look like ours but are not (skipped)


class RunList(list):
    """:func:`discover`'s runs, plus ``notes`` on the files it skipped or found empty."""

    notes: list[str]

    def __init__(self, runs: Iterable[Run] = (), notes: Iterable[str] = ()) -> None:
        super().__init__(runs)
        self.notes = list(notes)


_OURS = re.compile(r"^(results|l2pd)_.*\.json$")


def _classify(path: Path, folder: _Folder, explicit: bool = False) -> str | None:
    """Add ``path`` to ``folder`` as a sidecar or a results file. Unrelated JSON in a folder is skipped;
    a file that is (by name or content) a sidecar or results file but cannot be read is an error."""
    named_ours = bool(_OURS.match(path.name))
    try:
        data = read_json(path, "JSON file")
    except ValueError as exc:
        try:
            with path.open("rb") as fh:
                looks_ours = SCHEMA.encode() in fh.read(4096)
        except OSError:
            looks_ours = False
        if explicit or named_ours or looks_ours:
            what = "sidecar" if path.name.startswith("l2pd_") or looks_ours else (
                "lm-eval results file" if path.name.startswith("results_") else "file")
            raise ValueError(str(exc).replace("JSON file", what)) from exc
        return None
    if is_sidecar_json(data):
        sidecar = Sidecar.from_json(data, path=path)
        if not sidecar.samples:
            folder.notes.append(f"{path}: the sidecar has no samples (the run recorded no answers); its cells "
                                "have no timing")
        folder.sidecars.append(sidecar)
        return "sidecar"
    if is_results_json(data):
        check_results_json(path, data)
        folder.results.append(ResultsFile(path, data))
        return "results"
    if path.name.startswith("results_") and isinstance(data, dict) and "results" in data:
        raise ValueError(f"{path}: corrupt lm-eval results file (\"results\" must be an object and "
                         "\"config\"/\"configs\" present)")
    if named_ours:
        what, mark = (("an l2pd-eval sidecar", f'"schema": "{SCHEMA}"') if path.name.startswith("l2pd_")
                      else ("an lm-eval results file", '"results" and "config"'))
        folder.notes.append(f"{path}: named like {what} but is not one (valid JSON without {mark}); skipped")
    return None


def discover(paths: Iterable[str | os.PathLike]) -> RunList:
    """Runs for ``report RUN...``; a file argument keeps only the run it belongs to. ``notes`` of the
    result name the files skipped (named like ours, but not ours) and sidecars without samples."""
    runs = RunList()
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            by_folder: dict[Path, _Folder] = {}
            for file in sorted(path.rglob("*.json")):
                folder = by_folder.setdefault(file.parent, _Folder())
                _classify(file, folder)
            found = [run for f in by_folder.values() for run in pair(f.sidecars, f.results)]
            skipped = [n for f in by_folder.values() for n in f.notes]
            if not found:
                detail = f" ({'; '.join(skipped)})" if skipped else ""
                raise ValueError(f"RUN {path}: no lm-eval results or l2pd sidecar JSON found under this folder{detail}")
            runs.notes.extend(n for n in skipped if n not in runs.notes)
        elif path.is_file():
            single = _Folder()
            kind = _classify(path, single, explicit=True)
            if kind is None:
                raise ValueError(f"RUN {path}: neither an lm-eval results JSON nor an l2pd-eval sidecar")
            siblings = _Folder()
            for file in sorted(path.parent.glob("*.json")):
                if file.resolve() != path.resolve():
                    _classify(file, siblings)
            runs.notes.extend(n for n in single.notes if n not in runs.notes)
            if kind == "sidecar":
                candidates = pair(single.sidecars, siblings.results)
                found = [r for r in candidates if r.sidecar is single.sidecars[0]]
            else:
                candidates = pair(siblings.sidecars, single.results)
                found = [r for r in candidates if r.results is single.results[0]]
        else:
            raise ValueError(f"RUN {path}: no such file or folder")
        for run in found:
            if run.name not in seen:
                seen.add(run.name)
                runs.append(run)
    runs.sort(key=lambda run: (run.started_at, run.name))
    return runs
