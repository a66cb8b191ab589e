"""The report's data: rows = methods, columns = task x generation length, one :class:`ReportCell` per
(row, column) with TPS, speedup against the baseline method of the same column, accuracy (with its Wilson
interval), TPF, NFE, the run's environment stamp, and the AUP of the curve the cell lies on.

:func:`build_report` turns runs into a :class:`Report` (data only); :mod:`l2pd_eval.results.text` turns a
report into text, :mod:`l2pd_eval.results.curves` groups cells into AUP curves.

Runs that differ in a setting that changes answers (``runs.ANSWER_SETTINGS``: model, sampling, prompt
format, block schedule, fixed answer tokens) are different rows: the settings in which they differ become the row's
``Method.variant``. Runs that agree in all of them share a cell; the best one is kept and one note names
it and the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from l2pd_eval.results import environment
from l2pd_eval.results.columns import column_sort_key
from l2pd_eval.results.methods import Method, method_matches, parse_method_spec
from l2pd_eval.results.metrics import TPF_KINDS, AUPParams, accuracy_interval
from l2pd_eval.results.runs import Run, TaskResult
from l2pd_eval.results.sidecar import TPS_KINDS

Column = tuple[str, "int | None"]
DEFAULT_BASELINE = "policy=low_confidence,cache=none,eotp=false"
#: A cell's speedup (and its curve's AUP anchor) comes from a baseline run of the same model and prompt.
SAME_SETUP = ("model", "chat", "chat_template", "system_instruction", "fewshot", "fewshot_as_multiturn")

TPS_DEFINITIONS = {
    "paper": "TPS (papers') = answer tokens cut at the stop strings / wall time of the whole generate_until "
             "loop, summed over ranks, as Learn2PD and Fast-dLLM report it",
    "mean": "TPS (decode, per-sample mean) = mean over samples of (answer tokens / decode seconds)",
    "total": "TPS (decode, sum/sum) = total answer tokens / total decode seconds",
}
# Old sidecars lack the papers' fields: their cells show this kind instead, marked FALLBACK_MARK.
FALLBACK_KIND = "total"
FALLBACK_MARK = "†"


@dataclass
class ReportCell:
    method: Method
    column: Column
    run: str
    tps: float | None = None  # the report's TPS kind (or FALLBACK_KIND when ``tps_fallback``)
    tps_fallback: bool = False  # the run could not give the report's kind; tps is FALLBACK_KIND
    speedup_fallback: bool = False  # this cell's or the baseline's TPS is FALLBACK_KIND
    partial: str | None = None  # "partial: 37/200" for a run whose sidecar says it did not finish
    tps_paper: float | None = None
    tps_mean: float | None = None
    tps_total: float | None = None
    speedup: float | None = None
    accuracy: float | None = None  # fraction 0..1
    accuracy_ci: tuple[float, float] | None = None  # Wilson 95% (metrics.CI_NAME), fractions
    metric: str | None = None
    nfe_mean: float | None = None
    tokens_per_forward: float | None = None  # mean over samples of answer tokens / NFE (older reports' TPF)
    tpf: float | None = None  # the report's TPF kind, a ratio of sums (metrics.TPF_KINDS)
    tpf_by_kind: dict[str, float | None] = field(default_factory=dict)
    n_timing: int = 0
    n_eval: int | None = None
    model: str | None = None
    model_identity: object = None  # the model as the same on every machine (``model_identity_text``)
    family: str | None = None  # the run's model family, as its sidecar recorded it
    checkpoint: str | None = None  # the released checkpoint the run's model is (family_facts), if recognised
    steps: int | None = None  # the run's fixed step count; None: steps = gen_length
    n_shot: int | None = None
    limit: float | None = None  # lm-eval --limit of the run (None: every document)
    settings: dict[str, str] = field(default_factory=dict)  # runs.ANSWER_SETTINGS as recorded
    environment: dict[str, str | None] = field(default_factory=dict)  # environment.stamp of the run
    baseline_accuracy: float | None = None  # accuracy of the baseline cell this cell's speedup used
    empty_sidecar: str | None = None  # the run's sidecar, when it holds no samples at all
    filter_name: str | None = None  # a Learn2PD filter as its own manifest names it (manifest.filter_name)
    aup: float | None = None  # AUP of this cell's curve (curves.Curve); None: no curve or refused
    curve: str | None = None  # that curve's label
    best_tps: bool = False
    best_acc: bool = False


@dataclass
class Report:
    tps_kind: str
    methods: list[Method]
    columns: list[Column]
    cells: dict[tuple[Method, Column], ReportCell]
    baseline: Method | None
    baseline_spec: str
    notes: list[str] = field(default_factory=list)
    environment: dict[str, object] = field(default_factory=dict)  # stamp keys all rows agree on, else "mixed"
    tpf_kind: str = "answer"
    aup_params: AUPParams = field(default_factory=AUPParams)
    curves: list = field(default_factory=list)  # curves.Curve, one per method curve and column
    y_max: dict[Column, tuple[float, str]] = field(default_factory=dict)  # AUP reference accuracy, its source
    empty: list[tuple[Method, str]] = field(default_factory=list)  # runs that gave no cell (no samples, no results)

    def cell(self, method: Method, column: Column) -> ReportCell | None:
        return self.cells.get((method, column))

    def metrics(self, column: Column) -> list[str]:
        return sorted({c.metric for (m, col), c in self.cells.items() if col == column and c.metric})

    def is_baseline(self, method: Method) -> bool:
        return self.baseline is not None and method.base == self.baseline.base

    @property
    def on_cpu(self) -> bool:
        """Every timed cell ran on the CPU (the published tables' "our GPU" is then "CPU")."""
        hw = {environment.hardware(c.environment) for c in self.cells.values() if c.n_timing}
        return hw == {"CPU"}


def column_label(column: Column) -> str:
    task, length = column
    return f"{task} {length}" if length is not None else f"{task} (len ?)"


def _cell_quality(cell: ReportCell, started: float) -> tuple:
    return (cell.partial is None, cell.accuracy is not None, cell.tps is not None, started)


def _cell_tps(t, kind: str) -> tuple[float | None, bool]:
    """The cell's TPS of ``kind``; an old sidecar without the papers' fields gives the decode-only sum/sum,
    flagged, so a reader never mistakes it for the papers' figure."""
    if t is None:
        return None, False
    value = t.tps(kind)
    if value is None and kind == "paper" and t.paper_missing and t.count:
        return t.tps(FALLBACK_KIND), True
    return value, False


def _report_cell(run: Run, method: Method, result: TaskResult, kinds: tuple[str, str], notes: list[str]) -> ReportCell:
    """One run's result on one column as a table cell (no speedup yet); what is missing goes to ``notes``."""
    tps_kind, tpf_kind = kinds
    column, t = (result.task, result.length), result.timing
    tps, fallback = _cell_tps(t, tps_kind)
    if fallback:
        notes.append(f"{run.name}: TPS (papers') n/a, {t.paper_missing}; its cells show TPS (decode, "
                     f"sum/sum), marked {FALLBACK_MARK}")
    if run.partial:
        notes.append(f"{run.name}: {run.partial} requests (the run was interrupted or is still going)")
    if result.metric is None and run.results is not None:
        notes.append(f"{column_label(column)}: {result.source_task} has no metric in {run.results.path}")
    tpfs = {k: t.tpf(k) for k in TPF_KINDS} if t else {}
    return ReportCell(
        method=method, column=column, run=run.name,
        tps=tps, tps_fallback=fallback, partial=run.partial, tps_paper=t.tps_paper if t else None,
        tps_mean=t.tps_mean if t else None, tps_total=t.tps_total if t else None,
        accuracy=result.accuracy, accuracy_ci=accuracy_interval(result.accuracy, result.n_eval),
        metric=result.metric, nfe_mean=t.nfe_mean if t else None,
        tokens_per_forward=t.tokens_per_forward_mean if t else None,
        tpf=tpfs.get(tpf_kind), tpf_by_kind=tpfs,
        n_timing=t.count if t else 0, n_eval=result.n_eval, model=run.model,
        model_identity=model_identity_text(run.manifest) if run.manifest else run.model, family=run.family,
        checkpoint=run.checkpoint, steps=run.steps, n_shot=result.n_shot, limit=run.limit,
        settings=dict(result.settings),
        environment=environment.stamp(run.manifest) if run.sidecar is not None else {},
        empty_sidecar=str(run.sidecar.path) if run.sidecar is not None and not run.sidecar.samples else None,
        filter_name=_filter_name(run),
    )


def _filter_name(run: Run) -> str | None:
    """The run's filter by its manifest: recorded by the adapter, else read now if the path is here."""
    from l2pd_eval.results.manifest import filter_name

    path = (run.manifest.get("policy_params") or {}).get("filter")
    return run.manifest.get("filter_name") or (filter_name(path) if isinstance(path, str) else None)


#: Settings that differ from task to task within one run (a split by them is made per column only).
PER_TASK = ("fewshot",)


def _differing(group: list[tuple[ReportCell, float]]) -> set[str]:
    """Answer settings whose recorded values differ between these runs (unrecorded ones do not count)."""
    keys = {k for c, _ in group for k in c.settings}
    return {k for k in keys if len({c.settings[k] for c, _ in group if k in c.settings}) > 1}


def _distinct_labels(cells: dict[tuple[Method, Column], ReportCell]) -> dict[tuple[Method, Column], ReportCell]:
    """Rows whose labels would read alike (they differ in a parameter no run's model_args named, e.g. a
    default that changed between versions) show every parameter."""
    by_label: dict[str, set[Method]] = {}
    for method, _ in cells:
        by_label.setdefault(method.label, set()).add(method)
    clash = {m for alike in by_label.values() if len(alike) > 1 for m in alike}
    out: dict[tuple[Method, Column], ReportCell] = {}
    for (method, column), cell in cells.items():
        if method in clash:
            method = cell.method = replace(method, shown=None)
        out[(method, column)] = cell
    return out


def _split(groups: dict[tuple[Method, Column], list[tuple[ReportCell, float]]]
           ) -> dict[tuple[Method, Column], dict[tuple[tuple[str, str], ...], list]]:
    """Each (method, column) group split by its variant: the answer settings in which runs of the method
    differ in some column (so a run keeps one row label across columns), plus the per-task ones (shots)
    where they differ in this column."""
    across: dict[Method, set[str]] = {}
    for (method, _), group in groups.items():
        across.setdefault(method, set()).update(_differing(group) - set(PER_TASK))
    out = {}
    for (method, column), group in groups.items():
        keys = sorted(across[method] | (_differing(group) & set(PER_TASK)))
        parts: dict[tuple[tuple[str, str], ...], list] = {}
        for cell, started in group:
            variant = tuple((k, cell.settings.get(k, "?")) for k in keys)
            parts.setdefault(variant, []).append((cell, started))
        out[(method, column)] = parts
    return out


def _collect_cells(runs: list[Run], kinds: tuple[str, str], metric_overrides: dict[str, str] | None,
                   notes: list[str], empty: list[tuple[Method, str]]) -> dict[tuple[Method, Column], ReportCell]:
    """Every run's cells. Runs of one method and column that differ in answer settings become rows of
    their own; where several runs agree in all of them, the best (finished, with accuracy and TPS, then the
    later one) is kept and one note names it and the others."""
    groups: dict[tuple[Method, Column], list[tuple[ReportCell, float]]] = {}
    limited: dict[float, list[str]] = {}
    for run in runs:
        method = run.method
        results = run.task_results(metric_overrides)
        notes.extend(run.notes)
        if not results:
            empty.append((method, run.name))
        if run.limit is not None:
            limited.setdefault(run.limit, []).append(run.name)
        for result in results:
            cell = _report_cell(run, method, result, kinds, notes)
            groups.setdefault((method, cell.column), []).append((cell, run.started_at))
    cells: dict[tuple[Method, Column], ReportCell] = {}
    for (method, column), parts in _split(groups).items():
        for variant, part in parts.items():
            ranked = sorted(part, key=lambda item: _cell_quality(*item))  # ties: the later run last
            keep = ranked[-1][0]
            keep.method = replace(method, variant=variant)
            if len(ranked) > 1:
                others = ", ".join(c.run for c, _ in ranked[:-1])
                notes.append(f"{column_label(column)} / {keep.method.label}: {len(ranked)} runs with the same "
                             f"settings; kept {keep.run} (finished, scored and timed first, then the latest); "
                             f"not shown: {others}")
            cells[(keep.method, column)] = keep
    for limit, names in limited.items():
        which = "every run" if len(names) == len(runs) else f"{len(names)} run(s): {environment.names(names)}"
        notes.append(f"lm-eval --limit {limit:g} was used by {which}: each task is a subset, n counts only the "
                     "documents scored")
    return cells


def _choose_baseline(methods: list[Method], spec: str, notes: list[str]) -> Method | None:
    matching = [m for m in methods if m.label == spec]  # a row label copied from a table
    if not matching:
        fields = parse_method_spec(spec)
        matching = [m for m in methods if method_matches(m, fields)]
    bases = list(dict.fromkeys(m.base for m in matching))
    baseline = matching[0] if matching else None
    if baseline is None:
        notes.append(f"no run matches the baseline method ({spec}): every speedup is n/a")
    elif len(bases) > 1:
        notes.append(f"several methods match the baseline ({spec}); using {baseline.label}")
    return baseline


def _baseline_cell(cells: dict[tuple[Method, Column], ReportCell], cell: ReportCell,
                   baseline: Method) -> ReportCell | None:
    """The baseline cell a cell is compared with: the baseline method in the same column, of the same
    model and prompt format (:data:`SAME_SETUP`), the same variant where there is a choice."""
    candidates = [c for (m, col), c in cells.items() if col == cell.column and m.base == baseline.base
                  and all(c.settings.get(k) == cell.settings.get(k) for k in SAME_SETUP
                          if k in c.settings and k in cell.settings)]
    same = [c for c in candidates if c.method.variant == cell.method.variant]
    return (same or candidates or [None])[0]


def _fill_column(cells: dict[tuple[Method, Column], ReportCell], column: Column, baseline: Method | None,
                 notes: list[str]) -> None:
    """Speedups against the baseline's cell of ``column``, and the column's best TPS and accuracy."""
    column_cells = [c for (m, col), c in cells.items() if col == column]
    if baseline is not None and not any(c.method.base == baseline.base and c.tps for c in column_cells):
        notes.append(f"{column_label(column)}: no baseline ({baseline.base.label}) timing, speedup n/a")
    for c in column_cells:
        base_cell = _baseline_cell(cells, c, baseline) if baseline is not None else None
        if base_cell is None:
            if baseline is not None and any(x.method.base == baseline.base for x in column_cells):
                notes.append(f"{column_label(column)} / {c.method.label}: no baseline run of the same model and "
                             "prompt format, speedup n/a")
            continue
        c.baseline_accuracy = base_cell.accuracy
        if base_cell.tps and c.tps is not None:
            c.speedup = c.tps / base_cell.tps
            c.speedup_fallback = c.tps_fallback or base_cell.tps_fallback
            if c.n_timing != base_cell.n_timing:  # e.g. an unfinished run: not the same questions
                notes.append(f"{column_label(column)} / {c.method.label}: {c.n_timing} timed samples vs "
                             f"{base_cell.n_timing} for the baseline")
    tps_values = [c.tps for c in column_cells if c.tps is not None]
    acc_values = [c.accuracy for c in column_cells if c.accuracy is not None]
    for c in column_cells:
        c.best_tps = len(tps_values) > 1 and c.tps is not None and c.tps == max(tps_values)
        c.best_acc = len(acc_values) > 1 and c.accuracy is not None and c.accuracy == max(acc_values)


def build_report(
    runs: list[Run],
    tps_kind: str = "paper",
    metric_overrides: dict[str, str] | None = None,
    baseline_spec: str | None = None,
    tpf_kind: str = "answer",
    aup_params: AUPParams | None = None,
    aup_y_max: dict[str, float] | None = None,
) -> Report:
    """The table of ``runs``: one row per method, one column per (task, length), speedups against the
    baseline method (``baseline_spec``, default low_confidence without cache or EoTP) in each column.

    ``tpf_kind``: which TPF the cells and the AUP curves use (:data:`~l2pd_eval.results.metrics.TPF_KINDS`);
    ``aup_params``: d3LLM's parameters and the curves' anchor; ``aup_y_max``: reference accuracies pinned
    per ``task`` or ``task:length`` (percent; default: the best accuracy of any row in the column).
    """
    from l2pd_eval.results.curves import build_curves

    if tps_kind not in TPS_KINDS:
        raise ValueError(f"--tps {tps_kind!r} is not valid; valid choices: {', '.join(TPS_KINDS)}")
    if tpf_kind not in TPF_KINDS:
        raise ValueError(f"--tpf {tpf_kind!r} is not valid; valid choices: {', '.join(TPF_KINDS)}")
    notes: list[str] = list(getattr(runs, "notes", []))
    empty: list[tuple[Method, str]] = []
    cells = _distinct_labels(_collect_cells(runs, (tps_kind, tpf_kind), metric_overrides, notes, empty))
    methods = sorted({m for m, _ in cells}, key=Method.sort_key)
    columns = sorted({col for _, col in cells}, key=column_sort_key)
    spec = baseline_spec or DEFAULT_BASELINE
    baseline = _choose_baseline(methods, spec, notes)
    for column in columns:
        _fill_column(cells, column, baseline, notes)
    report = Report(tps_kind=tps_kind, methods=methods, columns=columns, cells=cells, baseline=baseline,
                    baseline_spec=spec, tpf_kind=tpf_kind, aup_params=aup_params or AUPParams(), empty=empty)
    build_curves(report, aup_y_max or {}, notes)
    report.environment = _common_environment(report)
    notes.extend(environment.difference_lines(
        ((c.method.label, c.environment) for c in sorted(cells.values(), key=lambda c: c.method.sort_key())
         if c.environment), what="rows"))
    report.notes = _dedupe(notes)
    return report


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def model_identity_text(manifest: dict) -> object:
    """The model as the same on every machine: its recorded identity (``name (fingerprint)``, no absolute
    path; model.loading.checkpoint_identity), else ``model`` as given (sidecars written before)."""
    ident = manifest.get("model_identity")
    if isinstance(ident, dict) and ident.get("fingerprint"):
        return f"{ident.get('name')} ({ident['fingerprint']})"
    return manifest.get("model")


def _common_environment(report: Report) -> dict[str, object]:
    """The model and each environment stamp key of the timed rows: the value where all agree, "mixed"
    where they differ (TPS compares only on one setup); keys no row recorded are left out."""
    found: dict[str, list] = {}
    for c in report.cells.values():
        if not c.environment:
            continue
        found.setdefault("model", []).append(c.model_identity)
        for key, _ in environment.STAMP_KEYS:
            found.setdefault(key, []).append(c.environment.get(key))
    out: dict[str, object] = {}
    for key, values in found.items():
        known = [v for v in values if v is not None]
        if known:
            out[key] = known[0] if all(v == known[0] for v in known) else "mixed"
    return out


# --------------------------------------------------------------------------------------------------
# Number formats (shared by the text renderers, the published comparison and the baseline check)


def fmt_tps(value: float | None, fallback: bool = False) -> str:
    return "n/a" if value is None else f"{value:.2f}{FALLBACK_MARK if fallback else ''}"


def fmt_speedup(value: float | None, fallback: bool = False) -> str:
    return "n/a" if value is None else f"{value:.2f}x{FALLBACK_MARK if fallback else ''}"


def fmt_acc(value: float | None) -> str:
    """Accuracy fraction as percent with two decimals (the papers' 79.83)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def fmt_tpf(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def fmt_aup(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
