"""The report's Plotly figures, built from the same per-arm results as the tables.

The number of figures does not grow with the number of trials: learning curves draw all
trials of an arm as one trace (gaps between trials), so a 500-trial study renders as fast as a
10-trial one without WebGL (which headless and remote-desktop browsers often lack). Every text
from the study goes into Plotly HTML-escaped, because Plotly renders a subset of HTML in
names and titles.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from mmvit.report.analysis import ArmResult, axes, axis_values, label_text
from mmvit.report.records import LOWER_IS_BETTER, METRIC_NAMES, METRICS, SearchRecord, StudyRecord, TrialRecord

PALETTE = qualitative.Dark24
MAX_PARALLEL = 24
"""Parallel-coordinate plots (one per searched arm) drawn at most."""
FANOVA_TREES = 32
"""Half Optuna's default forest: importances of 20 searched arms in ~1 s instead of ~3 s."""
END_MARKERS = {"PRUNED": ("x", "stopped by ASHA (pruned)"), "FAIL": ("triangle-down", "failed"),
               "RUNNING": ("circle-open", "running")}


@dataclass
class FigureSection:
    key: str
    title: str
    figure: go.Figure | None
    note: str = ""


def _e(text: Any) -> str:
    """Text for Plotly, which reads ``&lt;`` ``&gt;`` ``&amp;`` as entities (but not ``&quot;``)."""
    return html.escape(str(text), quote=False)


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    # Plotly's default template: naming another one deep-copies it per figure (~30 ms each).
    fig.update_layout(title=dict(text=_e(title)), height=height,
                      margin=dict(l=60, r=20, t=70, b=50), legend=dict(font=dict(size=11)))
    return fig


# ---------------------------------------------------------------------------- metric vs. axis

def axis_figures(record: StudyRecord, results: dict[str, ArmResult]) -> list[FigureSection]:
    """Per ablated axis: the four test metrics over its values, one line per setting of the other axes."""
    out = []
    names = axes(record.arms)
    for axis in names:
        values = axis_values(record.arms, axis)
        if len(values) < 2:
            continue
        categories = [_e(label_text(v)) for v in values]
        fig = make_subplots(rows=2, cols=2, subplot_titles=[_e(METRIC_NAMES[m]) for m in METRICS],
                            horizontal_spacing=0.1, vertical_spacing=0.16)
        groups: dict[str, list[ArmResult]] = {}
        for result in results.values():
            if axis not in result.arm.labels:
                continue
            others = ", ".join(f"{k}={label_text(v)}" for k, v in result.arm.labels.items() if k != axis)
            groups.setdefault(others or "all arms", []).append(result)
        for g, (group, members) in enumerate(groups.items()):
            for i, m in enumerate(METRICS):
                points = [(_e(label_text(r.arm.labels[axis])), r.metrics[m]) for r in members if r.n]
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in points], y=[p[1].mean for p in points], name=_e(group), legendgroup=str(g),
                    showlegend=i == 0, mode="lines+markers", line=dict(color=_color(g)),
                    error_y=dict(type="data", array=[p[1].std if p[1].n > 1 else 0.0 for p in points], visible=True),
                    customdata=[[p[1].n] for p in points],
                    hovertemplate="%{fullData.name}<br>%{x}: %{y:.4f} (n = %{customdata[0]})<extra></extra>"),
                    row=i // 2 + 1, col=i % 2 + 1)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=categories, title_text=_e(axis))
        out.append(FigureSection(f"axis-{len(out)}", f"Test metrics over {axis}", _layout(fig, f"Test metrics over {axis} "
                                 "(mean ± std over seeds)", height=620)))
    return out


# ---------------------------------------------------------------------------- learning curves

def _curves(trials: list[TrialRecord], arm_order: list[str], metric: str, title: str) -> go.Figure | None:
    by_arm: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        by_arm.setdefault(trial.arm or "?", []).append(trial)
    order = [a for a in arm_order if a in by_arm] + [a for a in by_arm if a not in arm_order]
    fig = go.Figure()
    ends: dict[str, list[tuple[int, float, str, list]]] = {s: [] for s in END_MARKERS}
    drawn = 0
    for index, arm in enumerate(order):
        xs: list[Any] = []
        ys: list[Any] = []
        custom: list[Any] = []
        for trial in sorted(by_arm[arm], key=lambda t: t.number):
            epochs, values = trial.curve(metric)
            if not epochs:
                continue
            drawn += 1
            info = [trial.seed if trial.seed is not None else "–", trial.number]
            xs += epochs + [None]
            ys += [v if math.isfinite(v) else None for v in values] + [None]
            custom += [info] * len(epochs) + [[None, None]]
            if trial.state in ends:
                ends[trial.state].append((epochs[-1], values[-1], _color(index), info + [_e(arm)]))
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, customdata=custom, mode="lines", name=_e(arm), connectgaps=False,
                                     line=dict(color=_color(index), width=1.2), opacity=0.85,
                                     hovertemplate="%{fullData.name}<br>trial %{customdata[1]}, seed %{customdata[0]}"
                                                   "<br>epoch %{x}: %{y:.4f}<extra></extra>"))
    if not drawn:
        return None
    for state, points in ends.items():
        if points:
            symbol, label = END_MARKERS[state]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name=label,
                marker=dict(symbol=symbol, size=10, color=[p[2] for p in points], line=dict(width=2, color="#222")),
                customdata=[p[3] for p in points],
                hovertemplate=f"{label}: %{{customdata[2]}}<br>trial %{{customdata[1]}}, seed %{{customdata[0]}}"
                              "<br>last epoch %{x}: %{y:.4f}<extra></extra>"))
    last = max((x for trace in fig.data if trace.mode == "lines" for x in trace.x if x is not None), default=1)
    fig.update_xaxes(title_text="epoch", dtick=1 if last <= 20 else None)  # whole epochs, no "1.5"
    fig.update_yaxes(title_text=_e(f"validation {METRIC_NAMES.get(metric, metric)}"))
    return _layout(fig, title, height=480)


def curve_figures(record: StudyRecord) -> list[FigureSection]:
    names = [a.name for a in record.arms]
    out = []
    final = _curves(record.trials, names, record.metric, "Learning curves of the final trials")
    out.append(FigureSection("curves-final", "Learning curves: final trials", final,
                             "" if final else "No final trial has finished an epoch yet."))
    if record.search:
        trials = [t for s in record.search for t in s.trials]
        fig = _curves(trials, names, record.metric, "Learning curves of the search trials (✕: stopped at an ASHA rung)")
        out.append(FigureSection("curves-search", "Learning curves: search trials", fig,
                                 "" if fig else "No search trial has finished an epoch yet."))
    return out


# ---------------------------------------------------------------------------- cost

def pareto_front(points: list[tuple[float, float]], cost_lower_is_better: bool, ap_lower_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both cost and AP, ordered by cost."""
    sign_c = 1.0 if cost_lower_is_better else -1.0
    sign_a = 1.0 if ap_lower_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (sign_c * points[i][0], sign_a * points[i][1]))
    front, best = [], math.inf
    for i in order:
        score = sign_a * points[i][1]
        if score < best:
            front.append(i)
            best = score
    return front


def cost_figure(record: StudyRecord, results: dict[str, ArmResult]) -> FigureSection:
    ap = record.metric if record.metric.startswith("ap_") else "ap_macro"
    costs = [("parameters", "parameters", True), ("samples_per_s", "training samples/s", False),
             ("hours_complete", "trial-hours per complete trial", True)]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[_e(c[1]) for c in costs], shared_yaxes=True,
                        horizontal_spacing=0.05)
    any_point = False
    for col, (attr, label, lower) in enumerate(costs, start=1):
        rows = [(r, getattr(r, attr).mean) for r in results.values()
                if r.n and math.isfinite(getattr(r, attr).mean) and math.isfinite(r.metrics[ap].mean)]
        if not rows:
            continue
        any_point = True
        points = [(c, r.metrics[ap].mean) for r, c in rows]
        front = pareto_front(points, lower, ap in LOWER_IS_BETTER)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name="arms", showlegend=col == 1,
            legendgroup="arms", marker=dict(size=9, color=[_color(list(results).index(r.arm.name)) for r, _ in rows]),
            error_y=dict(type="data", array=[r.metrics[ap].std if r.metrics[ap].n > 1 else 0.0 for r, _ in rows],
                         color="#9aa3b2"),
            text=[_e(r.arm.name) for r, _ in rows],
            hovertemplate="%{text}<br>" + _e(label) + ": %{x:,.4g}<br>%{y:.4f}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[points[i][0] for i in front], y=[points[i][1] for i in front], mode="lines+markers",
            name="Pareto front", showlegend=col == 1, legendgroup="front", line=dict(color="#d62728", dash="dash",
                                                                                  shape="hv" if lower else "vh"),
            marker=dict(size=12, symbol="circle-open", color="#d62728"), text=[_e(rows[i][0].arm.name) for i in front],
            hovertemplate="Pareto: %{text}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=_e(label), type="log" if attr == "parameters" else "linear", row=1, col=col)
    fig.update_yaxes(title_text=_e(f"test {METRIC_NAMES[ap]}"), row=1, col=1)
    if not any_point:
        return FigureSection("cost", "Cost vs. AP", None, "No arm has a complete trial with cost records yet.")
    return FigureSection("cost", "Cost vs. AP", _layout(fig, f"Cost vs. test {METRIC_NAMES[ap]} (per arm, mean over "
                                                        "seeds; dashed: Pareto front)", height=460))


# ---------------------------------------------------------------------------- search (Optuna)

def _memory_study(search: SearchRecord) -> optuna.Study:
    """An in-memory copy without user attributes: Optuna's plots re-read trials several times."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name=_e(search.arm),
                                direction=search.direction)
    study.add_trials(search.frozen)
    return study


def _complete(search: SearchRecord) -> list[TrialRecord]:
    return [t for t in search.trials if t.complete and t.value is not None]


def search_figures(record: StudyRecord) -> list[FigureSection]:
    if not record.search:
        return []
    from optuna import visualization as vis

    studies = {s.name: _memory_study(s) for s in record.search}
    metric = METRIC_NAMES.get(record.metric, record.metric)
    out = []
    with_complete = [s for s in record.search if _complete(s)]
    if with_complete:
        fig = vis.plot_optimization_history([studies[s.name] for s in with_complete], target_name=_e(f"validation {metric}"))
        out.append(FigureSection("search-history", "Optimisation history", _layout(fig, "Optimisation history per arm")))
    else:
        out.append(FigureSection("search-history", "Optimisation history", None, "No search trial is complete yet."))

    importances, skipped, missing_sklearn = {}, [], False
    for s in record.search:
        complete = _complete(s)
        varying = {k for k in {k for t in complete for k in t.params}
                   if len({repr(t.params.get(k)) for t in complete}) > 1}
        if len(complete) < 2 or not varying:
            skipped.append(f"{s.arm} ({len(complete)} complete, {len(varying)} varying parameter(s))")
            continue
        try:
            importances[s.arm] = optuna.importance.get_param_importances(
                studies[s.name], evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=0))
        except ImportError:  # Optuna's fANOVA fits scikit-learn's random forests
            missing_sklearn = True
            break
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            skipped.append(f"{s.arm} ({type(error).__name__}: {error})")
    note = ("Importances need at least 2 complete trials whose parameters vary; not computed for: "
            + "; ".join(skipped) + ".") if skipped else ""
    if missing_sklearn:
        importances, note = {}, ("Parameter importances (Optuna's fANOVA) need scikit-learn, which is not installed: "
                                 "`pip install scikit-learn`, then build the report again.")
    if importances:
        fig = go.Figure()
        params = sorted({p for values in importances.values() for p in values})
        for index, (arm, values) in enumerate(importances.items()):
            fig.add_trace(go.Bar(y=[_e(p) for p in params], x=[values.get(p, 0.0) for p in params], orientation="h",
                                 name=_e(arm), marker_color=_color([a.name for a in record.arms].index(arm)
                                                                   if arm in [a.name for a in record.arms] else index)))
        fig.update_layout(barmode="group")
        fig.update_xaxes(title_text="importance (fANOVA, share of the objective's variance)")
        out.append(FigureSection("search-importance", "Parameter importances",
                                 _layout(fig, "Parameter importances per arm", height=max(320, 60 + 28 * len(params)
                                                                                           * len(importances))), note))
    else:
        out.append(FigureSection("search-importance", "Parameter importances", None, note or "No search study."))

    drawn = 0
    for s in with_complete:
        if drawn >= MAX_PARALLEL:
            out.append(FigureSection("search-parallel-more", "Parallel coordinates", None,
                                     f"Parallel coordinates are drawn for the first {MAX_PARALLEL} arms only."))
            break
        fig = vis.plot_parallel_coordinate(studies[s.name], target_name=_e(f"validation {metric}"))
        out.append(FigureSection(f"search-parallel-{drawn}", f"Parallel coordinates: {s.arm}",
                                 _layout(fig, f"Parallel coordinates: {s.arm}", height=400)))
        drawn += 1
    return out


def all_figures(record: StudyRecord, results: dict[str, ArmResult]) -> list[FigureSection]:
    return (axis_figures(record, results) + curve_figures(record) + [cost_figure(record, results)]
            + search_figures(record))
