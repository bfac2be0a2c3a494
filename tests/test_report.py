"""Reports: every number in every table and export against values computed here from the raw
trials (numpy formulas, a hand-written paired t-test and Holm correction), the header's account of
missing work, escaping, offline plotly.js, and that no torch is imported."""

from __future__ import annotations

import csv
import html
import math
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.report_fixtures import AGG, ODD, XSS, augmentation_scenario, edge_scenario, full_scenario

NAMES = {"ap_micro": "AP micro", "ap_macro": "AP macro", "f2": "F2", "hamming_loss": "HL"}


# ---------------------------------------------------------------------------- helpers

class _TableParser(HTMLParser):
    """Rows of (text, bold) of the tables on a page, by table id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[tuple[str, bool]]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.bold = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id", "").startswith("table-"):
            self.current = attrs["id"][len("table-"):]
            self.tables[self.current] = []
        elif self.current and tag == "tr":
            self.tables[self.current].append([])
        elif self.current and tag in ("td", "th"):
            self.cell, self.bold = [], False
        elif self.cell is not None and tag == "strong":
            self.bold = True

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None
        elif self.current and tag in ("td", "th") and self.cell is not None:
            self.tables[self.current][-1].append(("".join(self.cell), self.bold))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def page_tables(index: Path) -> dict[str, list[list[tuple[str, bool]]]]:
    parser = _TableParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.tables


def body_rows(rows: list[list[tuple[str, bool]]], header_rows: int = 1) -> dict[str, list[tuple[str, bool]]]:
    """Body rows keyed by their first cell."""
    return {row[0][0]: row for row in rows[header_rows:]}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def md_rows(path: Path) -> list[list[str]]:
    """Cells of the Markdown table body (backslash escapes undone)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    out = []
    for line in lines[2:]:
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        out.append([re.sub(r"\\(.)", r"\1", c.strip()) for c in cells])
    return out


def tex_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    body = text.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in re.split(r"(?<!\\)&", line.strip().removesuffix("\\\\"))]
            for line in body.strip().splitlines()]


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "—"
    return f"{mean:.4f} ± " + ("–" if n < 2 else f"{std:.4f}")


def summary(values: list[float]) -> tuple[float, float, int]:
    array = np.array(values, dtype=float)
    n = array.size
    if n == 0:
        return math.nan, math.nan, 0
    mean = array.sum() / n
    std = math.sqrt(((array - mean) ** 2).sum() / (n - 1)) if n > 1 else math.nan
    return float(mean), std, n


def paired_t(a: list[float], b: list[float]) -> tuple[float, float]:
    """Student's paired t-test by its formula: t = mean(d) / (sd(d)/√n), two-sided p from t(n−1)."""
    d = np.array(a) - np.array(b)
    n = d.size
    sd = math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1))
    t = d.mean() / (sd / math.sqrt(n))
    return float(t), float(2 * stats.t.sf(abs(t), n - 1))


def holm_by_hand(p: dict[str, float]) -> dict[str, float]:
    names = sorted(p, key=p.get)
    m, running, out = len(names), 0.0, {}
    for i, name in enumerate(names):
        running = max(running, min(1.0, (m - i) * p[name]))
        out[name] = running
    return out


def expected_arms(scenario) -> dict[str, dict]:
    """Per arm and metric: mean, std, n from the raw test values."""
    out = {}
    for arm in scenario.arms:
        seeds = scenario.test[arm["name"]]
        out[arm["name"]] = {m: summary([seeds[s][m] for s in sorted(seeds)]) for m in AGG}
    return out


def expected_tests(scenario, compare: dict[str, str]) -> dict[str, dict[str, tuple[int, float, float, float] | int]]:
    """metric → arm → (pairs, t, p, Holm p), or the number of pairs when below 3; ``compare`` maps
    each compared arm to its comparison arm (one Holm family per metric)."""
    out: dict[str, dict] = {}
    for m in AGG:
        raw, pairs = {}, {}
        for name, other in compare.items():
            base = scenario.test[other]
            seeds = sorted(set(scenario.test[name]) & set(base))
            pairs[name] = len(seeds)
            if len(seeds) >= 3:
                raw[name] = paired_t([scenario.test[name][s][m] for s in seeds], [base[s][m] for s in seeds])
        holm = holm_by_hand({n: r[1] for n, r in raw.items()})
        out[m] = {n: (pairs[n], raw[n][0], raw[n][1], holm[n]) if n in raw else pairs[n] for n in pairs}
    return out


def best(metric: str, values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return min(finite) if metric == "hamming_loss" else max(finite)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from mmvit.report import build_report

    folder = tmp_path_factory.mktemp("full")
    scenario = full_scenario(folder)
    index = build_report(scenario.name, scenario.url, folder / "report")
    return scenario, index


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    from mmvit.report import build_report

    folder = tmp_path_factory.mktemp("edge")
    scenario = edge_scenario(folder)
    index = build_report(scenario.name, scenario.url, folder / "report")
    return scenario, index


EARLY2, EARLY4 = "model.fusion=early, model.depth=2", "model.fusion=early, model.depth=4"
ODD2, ODD4 = f"model.fusion={ODD}, model.depth=2", f"model.fusion={ODD}, model.depth=4"
REFERENCE = EARLY2
"""The full scenario's reference arm: the first listed level of each axis."""
COMPARE = {EARLY4: EARLY2, ODD2: EARLY2, ODD4: ODD2}
"""Each arm's comparison arm, by hand: along depth within each fusion group, and the ODD group's
reference arm along fusion."""


# ---------------------------------------------------------------------------- aggregate

def test_aggregate_csv_holds_means_stds_deltas_and_paired_tests(full):
    scenario, index = full
    rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    expected = expected_arms(scenario)
    tests = expected_tests(scenario, COMPARE)
    assert list(rows) == [a["name"] for a in scenario.arms]
    assert {name: (row["baseline"], row["axis"]) for name, row in rows.items()} == {
        EARLY2: ("", ""), EARLY4: (EARLY2, "model.depth"), ODD2: (EARLY2, "model.fusion"), ODD4: (ODD2, "model.depth")}
    for name, row in rows.items():
        assert int(row["n"]) == len(scenario.test[name]) and int(row["planned"]) == 4
        for m in AGG:
            mean, std, n = expected[name][m]
            assert float(row[f"{m}_mean"]) == pytest.approx(mean, abs=1e-12)
            if n > 1:
                assert float(row[f"{m}_std"]) == pytest.approx(std, abs=1e-12)
            is_best = mean == best(m, [expected[a][m][0] for a in expected])
            assert row[f"{m}_best"] == str(is_best)
            if name == REFERENCE:
                assert row[f"{m}_delta"] == "" and row[f"{m}_outcome"] == ""
                continue
            assert float(row[f"{m}_delta"]) == pytest.approx(mean - expected[COMPARE[name]][m][0], abs=1e-12)
            test = tests[m][name]
            if isinstance(test, int):
                assert int(float(row[f"{m}_pairs"])) == test and row[f"{m}_p_holm"] == ""
                assert row[f"{m}_significant"] == "False" and row[f"{m}_outcome"] == "too few pairs"
            else:
                pairs, t, p, p_holm = test
                assert int(float(row[f"{m}_pairs"])) == pairs
                assert float(row[f"{m}_p"]) == pytest.approx(p, rel=1e-9)
                assert float(row[f"{m}_p_holm"]) == pytest.approx(p_holm, rel=1e-9)
                assert row[f"{m}_significant"] == str(p_holm <= 0.05)


def test_the_scenario_has_a_significant_arm_an_untested_arm_and_a_non_significant_one(full):
    """Guards the fixture: the markers below are only meaningful if all three cases occur."""
    scenario, _ = full
    tests = expected_tests(scenario, COMPARE)
    assert all(tests[m][EARLY4][3] <= 0.05 for m in AGG)
    assert any(tests[m][ODD2][3] > 0.05 for m in AGG)
    assert all(tests[m][ODD4] == 2 for m in AGG)
    # against the old single baseline (early, 4), ODD2 would be significant: the comparison matters
    assert any(expected_tests(scenario, {ODD2: EARLY4})[m][ODD2][3] <= 0.05 for m in AGG)


def _expected_aggregate_cells(scenario, compare: dict[str, str] = COMPARE) -> dict[str, list[tuple[str, bool]]]:
    """Metric and Δ cells of each arm's aggregate row, then its vs. cell."""
    expected = expected_arms(scenario)
    tests = expected_tests(scenario, compare)
    out = {}
    for arm in scenario.arms:
        name = arm["name"]
        cells = []
        for m in AGG:
            mean, std, n = expected[name][m]
            cells.append((fmt(mean, std, n), mean == best(m, [expected[a][m][0] for a in expected])))
        for m in AGG:
            if name not in compare:
                cells.append(("", False))
                continue
            test = tests[m][name]
            mark = "*" if not isinstance(test, int) and test[3] <= 0.05 else ""
            cells.append((f"{expected[name][m][0] - expected[compare[name]][m][0]:+.4f}{mark}", False))
        out[name] = cells + [(compare.get(name, ""), False)]
    return out


def test_aggregate_table_on_the_page(full):
    scenario, index = full
    table = page_tables(index)["aggregate"]
    assert [c[0] for c in table[0]] == ["Arm", "n", "AP micro", "AP macro", "F2", "HL", "Δ AP micro",
                                        "Δ AP macro", "Δ F2", "Δ HL", "vs.", "Missing"]
    rows = {r[0][0].removesuffix(" (baseline)"): r for r in table[1:]}
    assert table[1][0][0] == f"{REFERENCE} (baseline)"
    for name, cells in _expected_aggregate_cells(scenario).items():
        row = rows[name]
        assert row[1][0] == f"{len(scenario.test[name])}/4"
        assert row[2:11] == cells, name
    assert rows[scenario.arm(3)][11][0] == ("seed 2 failed (RuntimeError: CUDA out of memory); seed 3 not started")
    assert rows[scenario.arm(2)][11][0] == "seed 3 running"
    assert rows[scenario.arm(0)][11][0] == ""
    page = index.read_text(encoding="utf-8")
    assert f"No marker is possible for {html.escape(scenario.arm(3))}: fewer than 3 seeds paired" in page
    assert "Holm-corrected over the comparisons of this table, per metric (2 t-test(s); α = 0.05)" in page
    assert 'id="section-tests"' in page and "How the tests work" in page


def test_aggregate_markdown_and_latex_show_the_page_numbers(full):
    scenario, index = full
    cells = _expected_aggregate_cells(scenario)
    md = {r[0].removesuffix(" (baseline)"): r for r in md_rows(index.parent / "tables" / "aggregate.md")}
    tex = {r[0].removesuffix(" (baseline)"): r for r in tex_rows(index.parent / "tables" / "aggregate.tex")}
    for name, expected in cells.items():
        expected = expected[:8]
        assert md[name][2:10] == [f"**{t}**" if b else t for t, b in expected]
        tex_name = name.replace("&", r"\&").replace("<", r"\textless{}").replace(">", r"\textgreater{}")
        row = tex[tex_name]
        want = [(t.replace("±", r"$\pm$").replace("–", "--")) for t, _ in expected]
        want = [rf"\textbf{{{w}}}" if b else w for w, (_, b) in zip(want, expected)]
        assert row[2:10] == want
    latex = (index.parent / "tables" / "aggregate.tex").read_text()
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    for path in (index.parent / "tables").glob("*.tex"):  # ±, Δ, α, — … are spelled in ASCII LaTeX
        text = path.read_text(encoding="utf-8")
        assert text.isascii(), (path.name, sorted({c for c in text if not c.isascii()}))


def test_significance_table_matches_the_hand_computed_tests(full):
    scenario, index = full
    tests = expected_tests(scenario, COMPARE)
    rows = read_csv(index.parent / "tables" / "significance.csv")
    assert len(rows) == 3 * 4
    for row in rows:
        assert row["baseline"] == COMPARE[row["arm"]]
        test = tests[row["metric"]][row["arm"]]
        if isinstance(test, int):
            assert int(row["pairs"]) == test and row["t"] == ""
            assert row["p_holm"] == "" and row["significant"] == ""
        else:
            pairs, t, p, p_holm = test
            assert (int(row["pairs"]), float(row["t"])) == (pairs, pytest.approx(t, rel=1e-9))
            assert float(row["p"]) == pytest.approx(p, rel=1e-9)
            assert float(row["p_holm"]) == pytest.approx(p_holm, rel=1e-9)
            assert row["significant"] == str(p_holm <= 0.05)
    page = page_tables(index)["significance"]
    assert {(r[0][0], r[1][0]) for r in page[1:]} == set(COMPARE.items())


# ---------------------------------------------------------------------------- class-wise, two-axis

def test_classwise_table(full):
    scenario, index = full
    table = page_tables(index)["classwise"]
    names = [a["name"] for a in scenario.arms]
    assert [c[0] for c in table[0]] == ["Class", "Training frequency"] + names
    from tests.report_fixtures import CLASSES

    assert [r[0][0] for r in table[1:]] == CLASSES
    csv_rows = read_csv(index.parent / "tables" / "classwise.csv")
    md = md_rows(index.parent / "tables" / "classwise.md")
    for c, (row, csv_row, md_row) in enumerate(zip(table[1:], csv_rows, md)):
        assert row[1][0] == f"{scenario.class_counts[c]:,}" and int(csv_row["training_frequency"]) == scenario.class_counts[c]
        means = []
        for name in names:
            values = [v[c] for v in scenario.per_class[name].values() if not math.isnan(v[c])]
            means.append(sum(values) / len(values) if values else math.nan)
        top = max(v for v in means if not math.isnan(v))
        for k, (name, mean) in enumerate(zip(names, means)):
            text, bold = row[2 + k]
            if math.isnan(mean):
                assert (text, bold, csv_row[name], md_row[2 + k]) == ("—", False, "", "—")
            else:
                assert (text, bold) == (f"{mean:.4f}", mean == top)
                assert float(csv_row[name]) == pytest.approx(mean, abs=1e-12)
                assert md_row[2 + k] == (f"**{mean:.4f}**" if mean == top else f"{mean:.4f}")
    # class 16 of arm 0 was stored as null in seed 1: its mean is over the other three seeds
    assert len([v for v in scenario.per_class[names[0]].values() if not math.isnan(v[16])]) == 3


def test_two_axis_table_has_depth_rows_and_fusion_groups(full):
    scenario, index = full
    table = page_tables(index)["two_axis"]
    assert [c[0] for c in table[0]] == ["", "model.fusion=early", f"model.fusion={ODD}"]
    assert [c[0] for c in table[1]] == ["model.depth"] + ([NAMES[m] for m in AGG] + ["Δ AP macro"]) * 2
    expected = expected_arms(scenario)
    within = {EARLY4: EARLY2, ODD4: ODD2}  # Δ within each fusion group; ODD2 vs. EARLY2 is across groups
    tests = expected_tests(scenario, within)
    csv_rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "two_axis.csv")}
    for r, depth in enumerate((2, 4)):
        row = table[2 + r]
        assert row[0][0] == str(depth)
        for g, fusion in enumerate(("early", ODD)):
            arm = f"model.fusion={fusion}, model.depth={depth}"
            other = f"model.fusion={fusion}, model.depth={6 - depth}"
            for k, m in enumerate(AGG):
                mean, std, n = expected[arm][m]
                text, bold = row[1 + 5 * g + k]
                assert text == fmt(mean, std, n)
                assert bold == (mean == best(m, [mean, expected[other][m][0]]))
            delta = row[1 + 5 * g + 4][0]
            assert csv_rows[arm]["baseline"] == within.get(arm, "")
            if arm not in within:
                assert delta == "" and csv_rows[arm]["ap_macro_delta"] == ""
                continue
            test = tests["ap_macro"][arm]
            mark = "*" if not isinstance(test, int) and test[3] <= 0.05 else ""
            assert delta == f"{expected[arm]['ap_macro'][0] - expected[other]['ap_macro'][0]:+.4f}{mark}"
            for m in AGG:
                if isinstance(tests[m][arm], int):
                    assert csv_rows[arm][f"{m}_p_holm"] == "" and csv_rows[arm][f"{m}_outcome"] == "too few pairs"
                else:  # one test in this table's family: Holm leaves p as it is
                    assert float(csv_rows[arm][f"{m}_p_holm"]) == pytest.approx(tests[m][arm][3], rel=1e-9)
                    assert tests[m][arm][3] == tests[m][arm][2]
    tex = (index.parent / "tables" / "two_axis.tex").read_text()
    assert r"\multicolumn{5}{c}{model.fusion=early}" in tex and r"\cmidrule(lr){2-6}" in tex
    assert r"\multicolumn{5}{c}{model.fusion=sct \&\textless{}\textgreater{}" in tex
    page = index.read_text(encoding="utf-8")
    assert "Each group&#x27;s reference row is compared along model.fusion in the aggregate table" in page


def test_reference_and_search_tables(full):
    scenario, index = full
    tables = page_tables(index)
    reference = tables["reference"][1:]
    mean = expected_arms(scenario)[scenario.arm(0)]
    assert [r[1][0] for r in reference] == ["AP micro", "AP macro"]
    for row, m, published in zip(reference, ("ap_micro", "ap_macro"), (0.8871, 0.8081)):
        assert row[2][0] == f"{published:.4f}" and row[3][0] == fmt(*mean[m])
        assert row[4][0] == f"{mean[m][0] - published:+.4f}"
    search = body_rows(tables["search"])
    for arm, counts in scenario.search_states.items():
        row = search[arm]
        assert [int(row[k][0]) for k in (1, 2, 3, 4)] == [counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL",
                                                                                    "RUNNING")]


def test_cost_table(full):
    scenario, index = full
    rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "cost.csv")}
    for name, params in scenario.parameters.items():
        assert float(rows[name]["parameters"]) == params
        assert float(rows[name]["samples_per_s"]) == scenario.samples_per_s[name]
    page = body_rows(page_tables(index)["cost"])
    assert page[scenario.arm(1)][1][0] == "8,000,000"


# ---------------------------------------------------------------------------- header

def test_header_reports_states_missing_seeds_and_compute(full):
    scenario, index = full
    page = index.read_text(encoding="utf-8")
    assert 'id="quick-banner"' in page and "numbers from the quick profile are not thesis-scale" in page
    assert "Final trials</dt><dd>13 complete, 1 running, 0 pruned, 2 failed" in page
    assert "Search trials</dt><dd>16 complete, 0 running, 8 pruned, 4 failed" in page
    missing = re.findall(r"<li>(.*?)</li>", page.split('id="missing">', 1)[1].split("</ul>", 1)[0])
    assert [html.unescape(m) for m in missing] == [
        f"{scenario.arm(2)}: 3 of 4 seeds complete, 1 running (seed 3 running)",
        f"{scenario.arm(3)}: 2 of 4 seeds complete, 1 failed, 1 not started (seed 2 failed (RuntimeError: CUDA out of "
        "memory); seed 3 not started)"]
    hours = float(re.search(r"Compute spent</dt><dd>([\d.]+) trial-hours", page).group(1))
    assert hours == pytest.approx(scenario.hours + scenario.running_hours, abs=0.02)
    for text in ("0123456789abcdef", "abc123def456", "/data/bigearthnet", "2024-05-01 09:00"):
        assert text in page


def test_user_text_is_escaped_everywhere(full):
    scenario, index = full
    page = index.read_text(encoding="utf-8")
    assert XSS not in page and html.escape(XSS) in page
    assert ODD not in page and html.escape(ODD) in page
    assert page.count("<script") == page.count("</script>")
    for script in re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S):
        assert "alert(1)" not in script and "sct &<" not in script
    md = (index.parent / "tables" / "aggregate.md").read_text()
    assert r"sct \&\<\>" in md and "<" not in md.replace(r"\<", "")
    tex = (index.parent / "tables" / "aggregate.tex").read_text()
    assert r"sct \&\textless{}\textgreater{}" in tex
    raw = read_csv(index.parent / "tables" / "aggregate.csv")
    assert raw[2]["arm"] == scenario.arm(2)  # CSV keeps the text as it is


def test_plotly_js_is_local_and_written_once(full, tmp_path):
    from plotly.offline import get_plotlyjs

    from mmvit.report import build_report

    scenario, index = full
    script = index.parent / "plotly.min.js"
    assert script.read_text(encoding="utf-8") == get_plotlyjs()
    page = index.read_text(encoding="utf-8")
    assert re.findall(r'<script src="([^"]+)"', page) == ["plotly.min.js"]
    assert not re.search(r'(src|href)="(https?:)?//', page)
    before = script.stat().st_mtime_ns
    build_report(scenario.name, scenario.url, index.parent)
    assert script.stat().st_mtime_ns == before


def test_every_figure_is_drawn_with_pruned_trials_ending_at_their_rung(full):
    from mmvit.report.analysis import arm_results
    from mmvit.report.figures import all_figures
    from mmvit.report.records import load_study_record

    scenario, index = full
    record = load_study_record(scenario.name, scenario.url)
    figures = {f.key: f for f in all_figures(record, arm_results(record))}
    assert {"axis-0", "axis-1", "curves-final", "curves-search", "cost", "search-history", "search-importance",
            "search-parallel-0", "search-parallel-3"} <= set(figures)
    assert all(f.figure is not None for f in figures.values()), {k: f.note for k, f in figures.items() if not f.figure}
    search = figures["curves-search"].figure
    pruned = [t for t in search.data if t.name == "stopped by ASHA (pruned)"][0]
    assert sorted(pruned.x) == sorted(e for v in scenario.pruned_at.values() for e in v)
    final = figures["curves-final"].figure
    lines = [t for t in final.data if t.mode == "lines"]
    epochs = sum(1 for t in lines for x in t.x if x is not None)
    assert epochs == 13 * 5 + 2 + 1 + 1  # complete trials, the RUNNING one, two FAIL ones
    importance = figures["search-importance"].figure
    assert {t.name for t in importance.data} == {html.escape(a["name"], quote=False) for a in scenario.arms}
    page = index.read_text(encoding="utf-8")
    for key in figures:
        assert f'id="figure-{key}"' in page


def test_cost_figure_draws_the_pareto_front(full):
    from mmvit.report.analysis import arm_results
    from mmvit.report.figures import cost_figure, pareto_front
    from mmvit.report.records import load_study_record

    assert pareto_front([(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9)], True, False) == [0, 1, 3]
    assert pareto_front([(100, 0.5), (300, 0.7), (200, 0.8)], False, False) == [1, 2]
    scenario, _ = full
    record = load_study_record(scenario.name, scenario.url)
    results = arm_results(record)
    figure = cost_figure(record, results).figure
    front = [t for t in figure.data if t.name == "Pareto front"][0]  # the parameters panel
    means = {a: expected_arms(scenario)[a]["ap_macro"][0] for a in scenario.parameters}
    points = sorted((scenario.parameters[a], means[a], a) for a in means)
    want, top = [], -1.0
    for params, ap, arm in points:
        if ap > top:
            want.append(html.escape(arm, quote=False))
            top = ap
    assert list(front.text) == want


# ---------------------------------------------------------------------------- partial and odd studies

def test_edge_study_with_a_zero_complete_arm_one_seed_and_no_flagged_baseline(edge):
    scenario, index = edge
    page = index.read_text(encoding="utf-8")
    assert 'id="baseline-note"' in page and "the first arm, shallow, as the baseline" in page
    assert "quick-banner" not in page and "two_axis" not in page and "search-history" not in page
    rows = {r[0][0].removesuffix(" (baseline)"): r for r in page_tables(index)["aggregate"][1:]}
    assert [c[0] for c in rows["broken"][1:6]] == ["0/2", "—", "—", "—", "—"]
    assert rows["broken"][11][0] == "seed 0 failed (ValueError: loss is NaN); seed 1 running"
    assert rows["deep"][10][0] == "shallow" and rows["shallow"][10][0] == ""
    assert rows["deep"][2][0] == "0.7900 ± –" and rows["deep"][1][0] == "1/2"
    mean, std, _ = summary([0.81, 0.83])
    assert rows["shallow"][2] == (f"{mean:.4f} ± {std:.4f}", True)
    assert rows["deep"][6][0] == f"{0.79 - mean:+.4f}" and rows["broken"][6][0] == "—"
    assert "No marker is possible for broken, deep: fewer than 3 seeds" in page
    csv_rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    assert csv_rows["deep"]["ap_micro_std"] == "" and csv_rows["broken"]["n"] == "0"
    reference = page_tables(index)["reference"][1:]
    assert [(r[0][0], r[1][0], r[2][0]) for r in reference] == [("shallow", "AP micro", "0.8000"),
                                                               ("shallow", "HL", "0.2000"),
                                                               ("ghost", "AP macro", "0.7000")]
    assert reference[0][4][0] == f"{mean - 0.8:+.4f}" and reference[2][3][0].startswith("— (no arm")
    assert "broken: 0 of 2 seeds complete, 1 failed, 1 running" in html.unescape(page)


def test_a_study_without_trials_yet_says_every_seed_is_missing(tmp_path):
    """The live report right after `run` created the study: no numbers, and the reason."""
    from mmvit.report import build_report
    from tests.report_fixtures import spec, write_study

    url = f"sqlite:///{tmp_path}/fresh.db"
    arms = [{"name": f"model.fusion={f}", "labels": {"model.fusion": f}, "baseline": f == "sct"}
            for f in ("early", "sct")]
    write_study(url, "fresh", spec=spec("fresh", seeds=[0, 1], ablate={"model.fusion": ["early", "sct"]}),
                arms=arms, trials=[])
    index = build_report("fresh", url, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    for arm in ("early", "sct"):
        assert (f"<li>model.fusion={arm}: 0 of 2 seeds complete, 2 not started (seed 0 not started; "
                "seed 1 not started)</li>") in page
    rows = body_rows(page_tables(index)["aggregate"])
    assert [c[0] for c in rows["model.fusion=early"][1:6]] == ["0/2", "—", "—", "—", "—"]
    assert "No final trial has finished an epoch yet." in page
    assert "No arm has a complete trial with cost records yet." in page


def test_build_report_never_imports_torch(full, tmp_path):
    scenario, _ = full
    code = textwrap.dedent(f"""
        import sys
        import mmvit.report
        from pathlib import Path
        mmvit.report.build_report({scenario.name!r}, {scenario.url!r}, Path({str(tmp_path / 'r')!r}))
        heavy = [m for m in ("torch", "ray", "timm", "rasterio", "mmvit.models", "mmvit.data", "mmvit.train.loop")
                 if m in sys.modules]
        print(heavy)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_storage_and_missing_study_are_one_paragraph_errors(full, tmp_path, monkeypatch):
    from mmvit.errors import StudyError
    from mmvit.report import build_report
    from mmvit.report.cli import report_command

    missing = tmp_path / "nope.db"
    with pytest.raises(StudyError, match=r"does not exist.*--storage"):
        build_report("depth", f"sqlite:///{missing}", tmp_path / "out")
    assert not missing.exists(), "a report never creates a database"
    scenario, _ = full
    with pytest.raises(StudyError, match=r"has no study 'width' \(it holds 'depth'\)"):
        build_report("width", scenario.url, tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=r"No study 'depth' in studies.*--studies-dir"):
        report_command("depth", None, Path("studies"), None)
    folder = tmp_path / "studies" / "depth"
    folder.mkdir(parents=True)
    (folder / "optuna.db").write_bytes(Path(scenario.url.removeprefix("sqlite:///")).read_bytes())
    index = report_command("depth", None, Path("studies"), None)
    assert index == Path("reports") / "depth" / "index.html" and index.is_file()
    out = report_command("depth", scenario.url, Path("elsewhere"), tmp_path / "custom")
    assert out == tmp_path / "custom" / "index.html"


def test_holm_adjusts_step_down():
    from mmvit.report.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_paired_differences_without_variance_are_no_test_and_never_significant():
    from mmvit.report.stats import compared_tests

    base = {0: 0.80, 1: 0.83, 2: 0.79}
    shifted = {s: v + 0.01 for s, v in base.items()}  # float rounding leaves differences ~1e-17 apart
    noisy = {0: 0.90, 1: 0.92, 2: 0.905}
    with np.errstate(all="ignore"):
        assert not stats.ttest_rel(list(shifted.values()), list(base.values())).pvalue >= 0.05, "scipy: p ≈ 0 or NaN"
    tests = compared_tests({"shifted": (shifted, base), "same": (dict(base), base), "noisy": (noisy, base)})
    for name, value in (("shifted", 0.01), ("same", 0.0)):
        test = tests[name]
        assert (test.zero_variance, test.p, test.p_holm, test.significant, test.tested) == (
            True, None, None, False, False)
        assert test.outcome == "zero variance" and test.mean_difference == pytest.approx(value, abs=1e-12)
    assert tests["shifted"].describe() == "zero variance: all 3 differences equal +0.01; no t-test"
    assert tests["same"].describe() == "zero variance: all 3 differences equal 0 (identical runs); no t-test"
    t, p = paired_t(list(noisy.values()), list(base.values()))
    assert tests["noisy"].p_holm == pytest.approx(p, rel=1e-9), "the family holds only the t-tests"
    assert tests["noisy"].outcome == "tested" and tests["noisy"].t == pytest.approx(t, rel=1e-9)
    two = compared_tests({"a": ({0: 1, 1: 2}, {0: 0, 1: 0})})["a"]
    assert (two.outcome, two.p, two.zero_variance) == ("too few pairs", None, False)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    from mmvit.report import build_report

    folder = tmp_path_factory.mktemp("old")
    scenario = full_scenario(folder, per_axis=False)
    assert all("compare_with" not in arm for arm in scenario.arms), "written the way studies were stored before"
    return scenario, build_report(scenario.name, scenario.url, folder / "report")


def test_a_study_stored_before_per_axis_comparisons_reports_against_its_one_baseline(old):
    scenario, index = old
    compare = {a["name"]: EARLY4 for a in scenario.arms if a["name"] != EARLY4}
    tests, expected = expected_tests(scenario, compare), expected_arms(scenario)
    rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    assert {name: row["baseline"] for name, row in rows.items()} == {**compare, EARLY4: ""}
    for name, other in compare.items():
        for m in AGG:
            assert float(rows[name][f"{m}_delta"]) == pytest.approx(expected[name][m][0] - expected[other][m][0])
            if not isinstance(tests[m][name], int):
                assert float(rows[name][f"{m}_p_holm"]) == pytest.approx(tests[m][name][3], rel=1e-9)
    page_rows = {r[0][0].removesuffix(" (baseline)"): r for r in page_tables(index)["aggregate"][1:]}
    for name, cells in _expected_aggregate_cells(scenario, compare).items():
        assert page_rows[name][2:11] == cells, name
    page = index.read_text(encoding="utf-8")
    assert "recorded before comparisons were per axis" in page and 'id="baseline-note"' not in page
    pivot = {r["arm"]: r for r in read_csv(index.parent / "tables" / "two_axis.csv")}
    assert {name: row["baseline"] for name, row in pivot.items()} == {EARLY2: EARLY4, EARLY4: "", ODD2: "", ODD4: ""}


AUG = "model.fusion={}, augmentation={}"
AUG_COMPARE = {AUG.format("early", label): AUG.format("early", "standard")
               for label in ("desynchronised", "modality_drop", "all")}
AUG_COMPARE.update({AUG.format("sct", label): AUG.format("sct", "standard")
                    for label in ("desynchronised", "modality_drop", "all")})
AUG_COMPARE[AUG.format("sct", "standard")] = AUG.format("early", "standard")
"""search_spaces/augmentation.yaml's comparisons, by hand: early arms vs. early/standard, sct arms vs.
sct/standard, sct/standard vs. early/standard."""
FLAT = {AUG.format("early", "modality_drop"): "+0.01", AUG.format("sct", "desynchronised"): "0 (identical runs)"}
"""The augmentation scenario's zero-variance comparisons and their constant difference."""


def _holm_family(scenario, compare: dict[str, str], metric: str) -> dict[str, float]:
    """Holm p by hand over the t-tests of one table and metric (zero-variance comparisons are none)."""
    raw = {}
    for name, other in compare.items():
        if name not in FLAT:
            seeds = sorted(scenario.test[name])
            raw[name] = paired_t([scenario.test[name][s][metric] for s in seeds],
                                 [scenario.test[other][s][metric] for s in seeds])[1]
    return holm_by_hand(raw)


@pytest.fixture(scope="module")
def augmentation(tmp_path_factory):
    from mmvit.report import build_report

    folder = tmp_path_factory.mktemp("augmentation")
    scenario = augmentation_scenario(folder)
    return scenario, build_report(scenario.name, scenario.url, folder / "report")


def test_augmentation_study_compares_each_arm_within_its_fusion_group(augmentation):
    scenario, index = augmentation
    rows = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    assert {name: row["baseline"] for name, row in rows.items() if row["baseline"]} == AUG_COMPARE
    assert rows[AUG.format("early", "standard")]["baseline"] == ""
    assert rows[AUG.format("sct", "standard")]["axis"] == "model.fusion"
    assert {rows[name]["axis"] for name in AUG_COMPARE if name != AUG.format("sct", "standard")} == {"augmentation"}
    page = {r[0][0].removesuffix(" (baseline)"): r for r in page_tables(index)["aggregate"][1:]}
    assert {name: row[10][0] for name, row in page.items() if row[10][0]} == AUG_COMPARE
    expected = expected_arms(scenario)
    for name, other in AUG_COMPARE.items():
        delta = expected[name]["ap_macro"][0] - expected[other]["ap_macro"][0]
        assert float(rows[name]["ap_macro_delta"]) == pytest.approx(delta, abs=1e-12)


def test_holm_runs_over_the_comparisons_of_one_table_and_metric(augmentation):
    scenario, index = augmentation
    aggregate = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    pivot = {r["arm"]: r for r in read_csv(index.parent / "tables" / "two_axis.csv")}
    within = {k: v for k, v in AUG_COMPARE.items() if k != AUG.format("sct", "standard")}
    assert {name: row["baseline"] for name, row in pivot.items() if row["baseline"]} == within
    for m in AGG:
        whole, grouped = _holm_family(scenario, AUG_COMPARE, m), _holm_family(scenario, within, m)
        assert len(whole) == 5 and len(grouped) == 4
        for name, p in whole.items():
            assert float(aggregate[name][f"{m}_p_holm"]) == pytest.approx(p, rel=1e-9), (name, m)
        for name, p in grouped.items():
            assert float(pivot[name][f"{m}_p_holm"]) == pytest.approx(p, rel=1e-9), (name, m)
    page = index.read_text(encoding="utf-8")
    assert "per metric (5 t-test(s); α = 0.05)" in page and "per metric (4 t-test(s); α = 0.05)" in page


def test_zero_variance_comparisons_are_reported_as_such(augmentation):
    scenario, index = augmentation
    aggregate = {r["arm"]: r for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    significance = read_csv(index.parent / "tables" / "significance.csv")
    page = {r[0][0].removesuffix(" (baseline)"): r for r in page_tables(index)["aggregate"][1:]}
    for name, value in FLAT.items():
        for m in AGG:
            row = aggregate[name]
            assert (row[f"{m}_outcome"], row[f"{m}_p"], row[f"{m}_p_holm"], row[f"{m}_significant"]) == (
                "zero variance", "", "", "False")
        assert not any(cell[0].endswith("*") for cell in page[name][6:10])
        verdicts = {r["metric"]: r for r in significance if r["arm"] == name}
        assert {r["outcome"] for r in verdicts.values()} == {"zero variance"}
        assert {r["significant"] for r in verdicts.values()} == {""}
    sig_page = page_tables(index)["significance"]
    verdict = {(r[0][0], r[2][0]): r[8][0] for r in sig_page[1:]}
    assert verdict[AUG.format("early", "modality_drop"), "AP macro"] == (
        "zero variance: all 3 differences equal +0.01; no t-test")
    assert verdict[AUG.format("sct", "desynchronised"), "HL"] == (
        "zero variance: all 3 differences equal 0 (identical runs); no t-test")
    text = html.unescape(index.read_text(encoding="utf-8"))
    assert f"{AUG.format('early', 'modality_drop')} on AP micro, AP macro, F2, HL (zero variance" in text
    method = text.split('id="section-tests"', 1)[1].split("</section>", 1)[0]
    for words in ("paired t-test over the seeds both arms finished", "two-sided, α = 0.05",
                  "comparisons of one table and one metric", "approximately normal", "at least 3 pairs",
                  "Zero variance means all n paired differences are the same number"):
        assert words in method, words


def test_a_baseline_in_the_study_file_moves_the_reference_levels(tmp_path):
    from mmvit.report import build_report

    scenario = augmentation_scenario(tmp_path, baseline={"augmentation": "all", "model.fusion": "sct"})
    index = build_report(scenario.name, scenario.url, tmp_path / "report")
    rows = {r["arm"]: r["baseline"] for r in read_csv(index.parent / "tables" / "aggregate.csv")}
    assert rows == {AUG.format("early", "standard"): AUG.format("early", "all"),
                    AUG.format("early", "desynchronised"): AUG.format("early", "all"),
                    AUG.format("early", "modality_drop"): AUG.format("early", "all"),
                    AUG.format("early", "all"): AUG.format("sct", "all"),
                    AUG.format("sct", "standard"): AUG.format("sct", "all"),
                    AUG.format("sct", "desynchronised"): AUG.format("sct", "all"),
                    AUG.format("sct", "modality_drop"): AUG.format("sct", "all"),
                    AUG.format("sct", "all"): ""}
    table = page_tables(index)["aggregate"]
    assert [r[0][0] for r in table[1:] if r[0][0].endswith(" (baseline)")] == [f"{AUG.format('sct', 'all')} (baseline)"]


def test_a_profile_that_kept_one_seed_says_so_and_plans_only_that_seed(tmp_path):
    """The quick profile runs a 12-arm study on its first seed only: the page must say plainly that
    no test ran and why, and must not list the file's other seeds as 'not started'."""
    from mmvit.report import build_report
    from tests.report_fixtures import final_trial, spec, write_study

    url = f"sqlite:///{tmp_path}/cut.db"
    arms = [{"name": f"model.depth={d}", "labels": {"model.depth": d}, "baseline": d == 2,
             "compare_with": None if d == 2 else "model.depth=2", "axis": None if d == 2 else "model.depth"}
            for d in (2, 4)]
    trials = [final_trial(arm=a["name"], arm_index=i, seed=0, curve=[0.4, 0.5],
                          test={"ap_micro": 0.6, "ap_macro": 0.5, "f2": 0.4, "hamming_loss": 0.1})
              for i, a in enumerate(arms)]
    write_study(url, "cut", spec=spec("cut", seeds=[0, 1, 2], ablate={"model.depth": [2, 4]}), arms=arms,
                trials=trials, profile="quick", planned_seeds=[0])
    page = html.unescape(build_report("cut", url, tmp_path / "report").read_text(encoding="utf-8"))
    banner = page.split('id="seeds-note">', 1)[1].split("</div>", 1)[0]
    assert "1 seed(s) per arm" in banner and "kept 1 of the file's 3 seeds" in banner and "no paired test ran" in banner
    assert "not started" not in page and "Every planned arm × seed is complete." in page
