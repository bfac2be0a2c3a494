"""The report's tables, in the forms of the thesis (Tables 7.2–7.8), as format-neutral data.

A :class:`Table` holds display cells (text, bold) for the page, Markdown and LaTeX, and a
DataFrame of the unrounded numbers for CSV; both are built here from the same
:class:`~mmvit.report.analysis.ArmResult` values, so the page and every export agree.
Rendering lives in :mod:`mmvit.report.formats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmvit.report.analysis import (ArmResult, axis_values, best_of, comparison_tests, find_arm, label_text,
                                   product_axes, training_frequency)
from mmvit.report.records import METRIC_NAMES, METRICS, StudyRecord
from mmvit.report.stats import ALPHA, MIN_PAIRS, PairedTest, Summary, summarize

DASH = "—"
"""A value that does not exist (no complete trial, a class without positives)."""
NO_STD = "–"
"""The std of a single seed."""
SIGNIFICANT = "*"


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    title: str = ""
    """Tooltip on the page (test statistics, counts)."""


@dataclass
class Table:
    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    data: pd.DataFrame
    groups: list[tuple[str, int]] = field(default_factory=list)
    """Header groups above ``header`` as (label, span); empty for a one-row header."""
    notes: list[str] = field(default_factory=list)


def number(value: float | None, digits: int = 4) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean_std(summary: Summary, digits: int = 4) -> str:
    """``0.8924 ± 0.0012``; ``0.8924 ± –`` for one seed; ``—`` for none."""
    if summary.n == 0:
        return DASH
    std = NO_STD if summary.n < 2 else f"{summary.std:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {std}"


def _count(value: float | None, digits: int = 0) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _is_best(value: float, best: float) -> bool:
    return math.isfinite(value) and math.isfinite(best) and value == best


def _test_title(test: PairedTest | None) -> str:
    return "" if test is None else test.describe()


def _delta_text(delta: float, test: PairedTest | None) -> str:
    if not math.isfinite(delta):
        return DASH
    return f"{delta:+.4f}" + (SIGNIFICANT if test is not None and test.significant else "")


def _family_notes(tests: dict[str, dict[str, PairedTest]]) -> list[str]:
    """Holm's family for this table, and the comparisons without a t-test (and why)."""
    counts = {m: sum(t.p is not None for t in tests.get(m, {}).values()) for m in METRICS}
    shown = sorted(set(counts.values()))
    family = (f"{shown[0]} t-test(s)" if len(shown) == 1 else
              ", ".join(f"{n} for {METRIC_NAMES[m]}" for m, n in counts.items()))
    notes = [f"{SIGNIFICANT} = significant under a paired t-test over the seeds both arms finished (two-sided), "
             f"Holm-corrected over the comparisons of this table, per metric ({family}; α = {ALPHA}). "
             "See \"How the tests work\" below."]
    few = sorted({name for m in METRICS for name, t in tests.get(m, {}).items() if t.pairs < MIN_PAIRS})
    if few:
        notes.append(f"No marker is possible for {', '.join(few)}: fewer than {MIN_PAIRS} seeds paired with "
                     "its comparison arm, too few for a test.")
    flat: dict[tuple[str, str], list[str]] = {}  # (arm, outcome) → metrics
    for m in METRICS:
        for name, t in tests.get(m, {}).items():
            if t.zero_variance:
                flat.setdefault((name, t.describe()), []).append(METRIC_NAMES[m])
    if flat:
        notes.append("No t-test and no marker where the paired differences have no variance: "
                     + "; ".join(f"{name} on {', '.join(ms)} ({text})" for (name, text), ms in flat.items()) + ".")
    return notes


def _vs_cell(record: StudyRecord, name: str) -> Cell:
    arm = next((a for a in record.arms if a.name == name), None)
    if arm is None or arm.compare_with is None:
        return Cell("")
    return Cell(arm.compare_with, title=f"differs in {arm.axis} only" if arm.axis else "the study's baseline arm")


def _comparison_note(record: StudyRecord) -> str:
    if not record.per_axis:
        base = record.baseline.name if record.baseline else "none"
        assumed = (" No arm equals the study's `base`, so the first arm is the baseline."
                   if record.baseline_assumed else "")
        old = (" This study was recorded before comparisons were per axis, so every Δ is against that one arm."
               if record.multi_axis else "")
        return f"Δ = arm mean − baseline mean ({base}).{old}{assumed}"
    if any(a.axis for a in record.arms):
        return ("Δ = arm mean − mean of the arm under vs., which differs from it in one axis only, at that "
                "axis's reference level (first listed, or the study's `baseline:`): within each group of the outer "
                "axes, arms are compared with the group's reference arm, and that arm along the next outer axis. "
                "A Δ never mixes two axes.")
    base = record.baseline.name if record.baseline else "none"
    return f"Δ = arm mean − mean of the baseline arm {base} (vs.)."


def aggregate_table(record: StudyRecord, results: dict[str, ArmResult],
                    tests: dict[str, dict[str, PairedTest]]) -> Table:
    """Thesis Tables 7.2/7.4/7.6: one row per arm, test metrics mean ± std, best bold, Δ against the
    arm's own comparison arm (named under vs.), marker."""
    best = {m: best_of(m, [r.metrics[m].mean for r in results.values()]) for m in METRICS}
    header = (["Arm", "n"] + [METRIC_NAMES[m] for m in METRICS] + [f"Δ {METRIC_NAMES[m]}" for m in METRICS]
              + ["vs.", "Missing"])
    arms = {a.name: a for a in record.arms}
    rows, data = [], []
    for name, result in results.items():
        arm = arms.get(name)
        other = results.get(arm.compare_with) if arm is not None and arm.compare_with else None
        is_base = record.baseline is not None and name == record.baseline.name
        row = [Cell(name + (" (baseline)" if is_base else "")), Cell(f"{result.n}/{len(result.planned)}")]
        entry: dict[str, Any] = {"arm": name, "baseline": other.arm.name if other else None,
                                 "axis": arm.axis if other and arm else None, "n": result.n,
                                 "planned": len(result.planned)}
        for m in METRICS:
            s = result.metrics[m]
            bold = _is_best(s.mean, best[m])
            row.append(Cell(mean_std(s), bold=bold))
            entry.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_best": bold})
        for m in METRICS:
            test = tests.get(m, {}).get(name)
            delta = result.metrics[m].mean - other.metrics[m].mean if other is not None else math.nan
            row.append(Cell(_delta_text(delta, test) if other is not None else "", title=_test_title(test)))
            entry.update({f"{m}_delta": delta,
                          f"{m}_pairs": test.pairs if test else None,
                          f"{m}_p": test.p if test else None,
                          f"{m}_p_holm": test.p_holm if test else None,
                          f"{m}_significant": test.significant if test else None,
                          f"{m}_outcome": test.outcome if test else None})
        row.append(_vs_cell(record, name))
        reason = "; ".join(str(m) for m in result.missing)
        if result.n == 0 and not reason:
            reason = "no complete trial"
        row.append(Cell(reason))
        entry["missing"] = reason
        rows.append(row)
        data.append(entry)
    notes = [f"Test split at the best validation epoch ({METRIC_NAMES.get(record.metric, record.metric)}); "
             "mean ± sample std (ddof = 1) over the complete seeds; n = complete/planned seeds; best per column "
             "in bold (HL: lowest)."]
    if any(a.compare_with for a in record.arms):
        notes.append(_comparison_note(record))
        notes += _family_notes(tests)
    frame = pd.DataFrame(data)
    for m in METRICS:  # whole numbers in the CSV even where the reference row has none
        frame[f"{m}_pairs"] = frame[f"{m}_pairs"].astype("Int64")
    return Table("aggregate", "Aggregate results (test split)", header, rows, frame, notes=notes)


def significance_table(record: StudyRecord, tests: dict[str, dict[str, PairedTest]]) -> Table | None:
    """The paired tests behind the aggregate table's markers, one row per arm × metric."""
    if not any(tests.values()):
        return None
    header = ["Arm", "vs.", "Metric", "Pairs", "Mean paired Δ", "t", "p", "p (Holm)", "Significant"]
    rows, data = [], []
    for arm in record.arms:
        for m in METRICS:
            test = tests.get(m, {}).get(arm.name)
            if test is None:
                continue
            verdict = {"tested": "yes" if test.significant else "no", "too few pairs": f"no test (< {MIN_PAIRS} pairs)",
                       "zero variance": test.describe()}[test.outcome]
            rows.append([Cell(arm.name), _vs_cell(record, arm.name), Cell(METRIC_NAMES[m]), Cell(str(test.pairs)),
                         Cell(number(test.mean_difference) if test.pairs else DASH),
                         Cell(number(test.t, 3) if test.tested else DASH),
                         Cell(f"{test.p:.4g}" if test.tested else DASH),
                         Cell(f"{test.p_holm:.4g}" if test.tested else DASH, bold=test.significant),
                         Cell(verdict)])
            data.append({"arm": arm.name, "baseline": arm.compare_with, "axis": arm.axis, "metric": m,
                         "pairs": test.pairs, "mean_difference": test.mean_difference, "t": test.t, "p": test.p,
                         "p_holm": test.p_holm, "significant": test.significant if test.tested else None,
                         "outcome": test.outcome})
    notes = [f"The tests behind the aggregate table's markers: each arm against the arm under vs., paired by seed "
             f"(scipy.stats.ttest_rel, two-sided); Holm's correction over the aggregate table's comparisons of each "
             f"metric; significant when p (Holm) ≤ {ALPHA}."]
    return Table("significance", "Paired tests", header, rows, pd.DataFrame(data), notes=notes)


def classwise_table(record: StudyRecord, results: dict[str, ArmResult]) -> Table:
    """Thesis Tables 7.3/7.5: test AP per class (canonical order), training frequency, best per row bold."""
    frequency = training_frequency(record)
    names = list(results)
    header = ["Class", "Training frequency"] + names
    rows, data = [], []
    for index, label in enumerate(record.class_names):
        values = [results[n].per_class[index] if index < len(results[n].per_class) else math.nan for n in names]
        best = best_of("ap_macro", values)
        count = frequency[index] if frequency and index < len(frequency) else None
        rows.append([Cell(label), Cell(f"{count:,}" if count is not None else DASH)]
                    + [Cell(number(v), bold=_is_best(v, best)) for v in values])
        data.append({"class": label, "training_frequency": count, **dict(zip(names, values))})
    notes = ["AP on the test split at the best validation epoch, mean over the complete seeds; best per row in bold. "
             "Training frequency: positive patches in the training split. — : no complete trial, or no positive "
             "test patch of the class."]
    return Table("classwise", "Class-wise AP (test split)", header, rows, pd.DataFrame(data), notes=notes)


def _within_groups(record: StudyRecord, names: list[str], group_axis: str) -> dict[str, str]:
    """arm → its comparison arm, for the arms compared within their own column group."""
    arms = {a.name: a for a in record.arms}
    out = {}
    for name in names:
        other = arms.get(arms[name].compare_with or "")
        if other is not None and other.labels.get(group_axis) == arms[name].labels.get(group_axis):
            out[name] = other.name
    return out


def two_axis_table(record: StudyRecord, results: dict[str, ArmResult]) -> Table | None:
    """Thesis Table 7.8: rows = the inner axis, column groups = the outer one, four metrics per
    group and the Δ of the selection metric within the group (against its reference row)."""
    pair = product_axes(record.arms)
    if pair is None:
        return None
    row_axis, group_axis = pair
    row_values, group_values = axis_values(record.arms, row_axis), axis_values(record.arms, group_axis)
    cells: dict[tuple[int, int], ArmResult] = {}
    for i, rv in enumerate(row_values):
        for j, gv in enumerate(group_values):
            arm = find_arm(record.arms, {row_axis: rv, group_axis: gv})
            cells[i, j] = results[arm.name]
    within = _within_groups(record, [r.arm.name for r in cells.values()], group_axis)
    tests = comparison_tests(results, within)  # this table's family: its own comparisons
    shown = record.metric if record.metric in METRICS else "ap_macro"
    best = {(j, m): best_of(m, [cells[i, j].metrics[m].mean for i in range(len(row_values))])
            for j in range(len(group_values)) for m in METRICS}
    header = [row_axis] + [name for _ in group_values
                           for name in [METRIC_NAMES[m] for m in METRICS] + [f"Δ {METRIC_NAMES[shown]}"]]
    groups = [("", 1)] + [(f"{group_axis}={label_text(gv)}", len(METRICS) + 1) for gv in group_values]
    rows, data = [], []
    for i, rv in enumerate(row_values):
        row = [Cell(label_text(rv))]
        for j, gv in enumerate(group_values):
            result = cells[i, j]
            other = results.get(within.get(result.arm.name, ""))
            entry: dict[str, Any] = {row_axis: rv, group_axis: gv, "arm": result.arm.name,
                                     "baseline": other.arm.name if other else None, "n": result.n}
            for m in METRICS:
                s = result.metrics[m]
                bold = _is_best(s.mean, best[j, m])
                row.append(Cell(mean_std(s), bold=bold, title=f"{result.arm.name}: n = {result.n}"))
                test = tests[m].get(result.arm.name)
                entry.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_best": bold,
                              f"{m}_delta": s.mean - other.metrics[m].mean if other else math.nan,
                              f"{m}_p": test.p if test else None, f"{m}_p_holm": test.p_holm if test else None,
                              f"{m}_significant": test.significant if test else None,
                              f"{m}_outcome": test.outcome if test else None})
            test = tests[shown].get(result.arm.name)
            row.append(Cell(_delta_text(entry[f"{shown}_delta"], test) if other else "",
                            title=f"vs. {other.arm.name}: {_test_title(test)}" if other
                            else "reference row of its group"))
            data.append(entry)
        rows.append(row)
    notes = [f"Rows: {row_axis}; column groups: {group_axis}. Test split, mean ± sample std over seeds; best "
             "value of each column in bold (HL: lowest)."]
    if within:
        arms = {a.name: a for a in record.arms}
        levels = ", ".join(dict.fromkeys(label_text(arms[o].labels[row_axis]) for o in within.values()))
        only = ("" if record.per_axis else " Only the baseline's group has a Δ: this study was recorded before "
                "comparisons were per axis.")
        across = ("" if not any(a.axis == group_axis for a in record.arms) else
                  f" Each group's reference row is compared along {group_axis} in the aggregate table.")
        notes.append(f"Δ {METRIC_NAMES[shown]} within each column group: arm mean − mean of the same group's "
                     f"{row_axis}={levels} row, its reference (the CSV holds Δ and tests of all four metrics)."
                     f"{across}{only}")
        notes += _family_notes(tests)
    return Table("two_axis", f"{row_axis} × {group_axis}", header, rows, pd.DataFrame(data), groups=groups,
                 notes=notes)


def reference_table(record: StudyRecord, results: dict[str, ArmResult]) -> Table | None:
    """Published numbers beside the study's, with the difference (study − published)."""
    reference = record.reference or {}
    arms = reference.get("arms") or {}
    if not arms:
        return None
    header = ["Arm", "Metric", "Published", "This study", "Δ (study − published)"]
    rows, data = [], []
    for name, metrics in arms.items():
        result = results.get(name)
        for m in [m for m in METRICS if m in metrics] + [m for m in metrics if m not in METRICS]:
            published = float(metrics[m])
            summary = None
            if result is not None:
                summary = result.metrics.get(m) or summarize(t.test.get(m, math.nan) for t in result.complete.values())
            ours = summary.mean if summary is not None and summary.n else math.nan
            shown = mean_std(summary) if summary is not None else f"{DASH} (no arm {name!r} in this study)"
            delta = ours - published
            rows.append([Cell(name), Cell(METRIC_NAMES.get(m, m)), Cell(number(published)), Cell(shown),
                         Cell(f"{delta:+.4f}" if math.isfinite(delta) else DASH)])
            data.append({"arm": name, "metric": m, "published": published, "study_mean": ours,
                         "study_std": summary.std if summary is not None else math.nan, "difference": delta})
    notes = [f"Published: {reference.get('citation', 'no citation given')}."]
    return Table("reference", "Published reference", header, rows, pd.DataFrame(data), notes=notes)


def cost_table(record: StudyRecord, results: dict[str, ArmResult]) -> Table:
    """What each arm costs: parameters, throughput, memory and trial-hours."""
    header = ["Arm", "Parameters", "Samples/s", "Peak memory (MiB)", "Hours per complete trial",
              "Trial-hours (all final trials)"]
    rows, data = [], []
    for name, r in results.items():
        rows.append([Cell(name), Cell(_count(r.parameters.mean)), Cell(_count(r.samples_per_s.mean, 1)),
                     Cell(_count(r.peak_memory_mb.mean)), Cell(number(r.hours_complete.mean, 3)),
                     Cell(number(r.hours_all, 3))])
        data.append({"arm": name, "parameters": r.parameters.mean, "samples_per_s": r.samples_per_s.mean,
                     "peak_memory_mb": r.peak_memory_mb.mean, "hours_per_complete_trial": r.hours_complete.mean,
                     "trial_hours_all": r.hours_all})
    notes = ["Means over the complete seeds; samples/s is training throughput; peak memory is each trial's own "
             "(on a GPU the memory torch allocated, on a CPU the process's resident memory, which counts the "
             "cache pages it read); trial-hours include failed and running trials of the final phase."]
    return Table("cost", "Cost per arm", header, rows, pd.DataFrame(data), notes=notes)


def search_table(record: StudyRecord) -> Table | None:
    """Per arm's search: trials by state, the best validation value and its parameters."""
    if not record.search:
        return None
    metric = METRIC_NAMES.get(record.metric, record.metric)
    header = ["Arm", "Complete", "Pruned", "Failed", "Running", f"Best validation {metric}", "Best parameters"]
    rows, data = [], []
    for search in record.search:
        counts = {s: sum(t.state == s for t in search.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        complete = [t for t in search.trials if t.complete and t.value is not None]
        pick = min if search.direction == "minimize" else max
        best = pick(complete, key=lambda t: t.value) if complete else None
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (best.params if best else {}).items())
        rows.append([Cell(search.arm)] + [Cell(str(counts[s])) for s in counts]
                    + [Cell(number(best.value) if best else DASH), Cell(params or DASH)])
        data.append({"arm": search.arm, "study": search.name, **{s.lower(): c for s, c in counts.items()},
                     "best_value": best.value if best else None, "best_trial": best.number if best else None,
                     **{f"param_{k}": v for k, v in (best.params if best else {}).items()}})
    notes = ["Each arm tunes its parameters in its own Optuna study; the final trials use the best complete "
             "search trial's parameters. Pruned: stopped by ASHA at a rung."]
    return Table("search", "Hyper-parameter search", header, rows, pd.DataFrame(data), notes=notes)


def all_tables(record: StudyRecord, results: dict[str, ArmResult],
               tests: dict[str, dict[str, PairedTest]]) -> list[Table]:
    """Every table the report shows, in page order (absent forms left out)."""
    tables = [aggregate_table(record, results, tests), significance_table(record, tests),
              reference_table(record, results), two_axis_table(record, results),
              classwise_table(record, results), cost_table(record, results), search_table(record)]
    return [t for t in tables if t is not None]


__all__ = ["Cell", "Table", "all_tables", "mean_std", "number"]
