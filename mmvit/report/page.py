"""``index.html``: the header, the tables and the figures on one self-contained page.

The page must open offline (on a plane, on a cluster node without internet, years later), so
plotly.js is copied once from the installed ``plotly`` package into the report folder as
``plotly.min.js`` and referenced relatively — never a CDN. Every string that came from the
study (names, descriptions, labels, errors) passes through :func:`html.escape`; study files
are written by people, and a report is opened by others. A small script at the top collects
JavaScript errors into ``<pre id="js-errors">`` so a broken figure is visible on the page and
testable in a headless browser.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path

from mmvit.report.figures import FigureSection
from mmvit.report.formats import to_html
from mmvit.report.overview import Overview
from mmvit.report.records import METRIC_NAMES, StudyRecord
from mmvit.report.stats import ALPHA, MIN_PAIRS
from mmvit.report.tables import SIGNIFICANT, Table
from mmvit.storage.disk import format_bytes

PLOTLY_JS = "plotly.min.js"

_ERROR_HOOK = """<script>
(function () {
  var pending = [];
  function record(message) {
    var box = document.getElementById("js-errors");
    if (!box) { pending.push(message); return; }
    box.hidden = false;
    box.textContent += message + "\\n";
  }
  window.addEventListener("error", function (event) {
    var target = event.target || {};
    var where = event.filename ? " (" + event.filename + ":" + event.lineno + ")" : "";
    record(event.message ? event.message + where : "failed to load " + (target.src || target.href || target.tagName));
  }, true);
  window.addEventListener("unhandledrejection", function (event) { record("unhandled rejection: " + event.reason); });
  var consoleError = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", function () { pending.splice(0).forEach(record); });
})();
</script>"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1rem 2rem 4rem; color: #1d2330; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #d5d9e0; padding-bottom: .2rem; }
.description { font-size: 1.1rem; color: #39414f; }
.banner { padding: .7rem 1rem; border-radius: 6px; margin: .8rem 0; font-weight: 600; }
.banner.quick { background: #fff3cd; border: 1px solid #e0b94a; }
.banner.warn { background: #fde2e1; border: 1px solid #d9534f; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 1rem 0; }
dl.meta dt { font-weight: 600; color: #4a5466; } dl.meta dd { margin: 0; word-break: break-all; }
nav ul { columns: 3; padding-left: 1.2rem; }
.table-wrap { overflow-x: auto; }
table.report-table { border-collapse: collapse; font-size: .88rem; margin: .6rem 0; }
table.report-table th, table.report-table td { padding: .25rem .6rem; border-bottom: 1px solid #e3e6eb;
       text-align: left; vertical-align: top; }
table.report-table thead th { border-bottom: 2px solid #1d2330; white-space: nowrap; }
table.report-table th.group { text-align: center; border-bottom: 1px solid #1d2330; }
table.report-table td:first-child { min-width: 16rem; }
table.report-table td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.note { color: #4a5466; font-size: .88rem; margin: .2rem 0; }
.exports { font-size: .85rem; }
.figures { display: grid; grid-template-columns: 1fr; gap: 1.5rem; }
.figure-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1rem; }
pre#js-errors { background: #fde2e1; border: 1px solid #d9534f; padding: .6rem; white-space: pre-wrap; }
footer { margin-top: 3rem; color: #6b7385; font-size: .8rem; }
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _partial_counts(presence: dict[str, list[int]]) -> str:
    """"train 4 of 269,695, validation 0 of 123,723, …" — what a partial archive held."""
    return ", ".join(f"{split} {present:,} of {listed:,}" for split, (present, listed) in presence.items())


def _presence_text(presence: dict[str, list[int]] | None) -> str:
    """" — partial: train 4 of 269,695, … official patches present" (or "complete: …") for the header."""
    if not presence:
        return ""
    if all(present == listed for present, listed in presence.values()):
        return f" — complete: {', '.join(f'{split} {listed:,}' for split, (_, listed) in presence.items())} patches"
    return f" — partial: {_partial_counts(presence)} official patches present"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"


def _states(counts: dict[str, int]) -> str:
    names = {"COMPLETE": "complete", "RUNNING": "running", "PRUNED": "pruned", "FAIL": "failed"}
    return ", ".join(f"{n} {names.get(s, s.lower())}" for s, n in counts.items())


def _hours(parts: dict[str, float]) -> str:
    names = {"COMPLETE": "complete", "RUNNING": "running", "PRUNED": "pruned", "FAIL": "failed"}
    return ", ".join(f"{names.get(s, s.lower())} {h:.2f}" for s, h in parts.items() if h > 0) or "none"


def _commits_text(env: dict) -> str:
    """The working directory's commit and mmvit-study's own (studies before 2026-12 recorded the
    first only); one commit when both are the same repository."""
    here, code = env.get("git_commit"), env.get("mmvit_commit")
    if here and here == code:
        return f"{here} (working directory and mmvit-study)"
    parts = ([f"working directory {here}"] if here else []) + ([f"mmvit-study {code}"] if code else [])
    return "; ".join(parts) or "not recorded"


def _checkpoints_text(record: StudyRecord) -> str:
    """"1.2 GB in 36 trial folders (…), measured … by the last run; 4.8 MB per final trial (best
    weights)": what the runner recorded (the report reads storage, never the checkpoints)."""
    disk = record.checkpoint_disk
    if not disk or "bytes" not in disk:
        return "not recorded (a study run before mmvit-study recorded it; `mmvit-study status` measures it)"
    measured = str(disk.get("measured") or "?").replace("T", " ")[:16]
    text = (f"{format_bytes(disk['bytes'])} in {disk.get('folders', '?')} trial folders ({disk.get('path', '?')}), "
            f"measured {measured} by the last run")
    kept = [t.checkpoint_bytes for t in record.trials if t.complete and t.checkpoint_bytes is not None]
    if kept:
        text += f"; {format_bytes(sum(kept) / len(kept))} per finished final trial (its best weights)"
    return text


def header_html(record: StudyRecord, view: Overview) -> str:
    env = record.environment or {}
    versions = env.get("versions") or {}
    versions_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded"
    out = [f"<h1>Study {e(record.name)}</h1>"]
    if record.description:
        out.append(f'<p class="description">{e(record.description)}</p>')
    if record.profile in ("quick", "smoke"):
        out.append(f'<div class="banner quick" id="quick-banner">{e(record.profile.capitalize())} profile: numbers '
                   f"from the {e(record.profile)} profile are not thesis-scale (short training at reduced width, "
                   "for checking the pipeline).</div>")
    if len(record.seeds) < MIN_PAIRS:
        cut = (f" (the {e(record.profile or '')} profile kept {len(record.seeds)} of the file's "
               f"{len(record.file_seeds)} seeds to stay within its time budget)"
               if len(record.seeds) < len(record.file_seeds) else "")
        out.append(f'<div class="banner warn" id="seeds-note">{len(record.seeds)} seed(s) per arm{cut}: fewer than '
                   f"{MIN_PAIRS} paired seeds, so no paired test ran and no difference in these tables is "
                   "evidence. Run the full profile, or a study with fewer arms, for the tests.</div>")
    presence = record.archive_presence or {}
    if any(present < listed for present, listed in presence.values()):
        out.append(f'<div class="banner warn" id="partial-archive">The archive held part of BigEarthNet'
                   f" ({e(_partial_counts(presence))} official patches present): every trial trained and was measured on "
                   "those patches only, so these figures are not comparable with the full benchmark.</div>")
    if record.baseline_assumed and record.baseline is not None:
        out.append(f'<div class="banner warn" id="baseline-note">No arm equals the study&#x27;s <code>base</code>; '
                   f"Δ and the paired tests use the first arm, {e(record.baseline.name)}, as the baseline.</div>")
    rows = [("Spec hash", record.spec_hash or "not recorded"), ("Profile", record.profile or "not recorded"),
            ("Archive", (record.archive or "not recorded") + _presence_text(record.archive_presence)),
            ("Storage", record.storage),
            ("Selection metric", f"validation {METRIC_NAMES.get(record.metric, record.metric)} (best epoch)"),
            ("Seeds", ", ".join(str(s) for s in record.seeds) or "not recorded"),
            ("Arms", f"{len(record.arms)}" + (f"; reference {record.baseline.name}" if record.baseline else "")
             + ("; Δ per axis (see the vs. columns)" if record.per_axis and any(a.axis for a in record.arms) else "")),
            ("Git commit", _commits_text(env)), ("Package versions", versions_text),
            ("First trial started", _when(view.first_start)), ("Last trial finished", _when(view.last_complete)),
            ("Report generated", _when(record.loaded_at)),
            ("Final trials", _states(view.final_states))]
    if record.search:
        rows.append(("Search trials", _states(view.search_states)))
    compute = f"{view.hours_total:.2f} trial-hours (final: {_hours(view.hours_final)}"
    compute += f"; search: {_hours(view.hours_search)})" if record.search else ")"
    rows.append(("Compute spent", compute))
    rows.append(("Checkpoints on disk", _checkpoints_text(record)))
    out.append('<dl class="meta" id="study-meta">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
               + "</dl>")
    if view.missing:
        out.append('<h3>Missing</h3><ul id="missing">' + "".join(f"<li>{e(m)}</li>" for m in view.missing) + "</ul>")
    elif record.arms:
        out.append('<p class="note" id="missing">Every planned arm × seed is complete.</p>')
    if record.notes:
        out.append('<ul class="note">' + "".join(f"<li>{e(n)}</li>" for n in record.notes) + "</ul>")
    return "\n".join(out)


def table_html(table: Table, exports: dict[str, str]) -> str:
    links = " · ".join(f'<a href="{e(path)}">{e(label)}</a>' for label, path in
                       (("CSV", exports.get("csv")), ("Markdown", exports.get("md")), ("LaTeX", exports.get("tex")))
                       if path)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in table.notes)
    return (f'<section class="table-section" id="section-{e(table.key)}"><h2>{e(table.title)}</h2>'
            f'<div class="table-wrap">{to_html(table)}</div>{notes}<p class="exports">Export: {links}</p></section>')


TESTS_NOTE = (
    "Each Δ is an arm's mean minus the mean of the arm named under vs. (its comparison arm). The marker "
    "{star} comes from a paired t-test over the seeds both arms finished — seed k of one arm against seed k of "
    "the other (scipy.stats.ttest_rel, two-sided, α = {alpha}). Holm's step-down correction runs over one "
    "family: the comparisons of one table and one metric, so each table states how many tests it corrected "
    "for. The test assumes paired seeds (the same data order, augmentation draws and initialisation where "
    "shapes allow), approximately normal paired differences, and at least {pairs} pairs; with fewer there is "
    "no test and no marker. Zero variance means all n paired differences are the same number (identical runs, "
    "or a shift that is exactly equal in every seed): t would divide by zero, so the tables say \"zero "
    "variance: all n differences equal X; no t-test\" instead of a p-value, and never mark it significant. "
    "No marker is not evidence of no difference: three seeds detect only large, consistent differences.")


def tests_html() -> str:
    """The short method note every Δ and marker on the page refers to."""
    text = TESTS_NOTE.format(star=SIGNIFICANT, alpha=ALPHA, pairs=MIN_PAIRS)
    return f'<section id="section-tests"><h2>How the tests work</h2><p class="note">{e(text)}</p></section>'


def figure_html(section: FigureSection) -> str:
    body = ""
    if section.figure is not None:
        body = section.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{section.key}",
                                      config={"displaylogo": False, "responsive": True})
    note = f'<p class="note">{e(section.note)}</p>' if section.note else ""
    return (f'<section class="figure-section" id="section-figure-{e(section.key)}" '
            f'data-rendered="{"yes" if section.figure is not None else "no"}"><h3>{e(section.title)}</h3>{body}{note}'
            "</section>")


def render_page(record: StudyRecord, view: Overview, tables: list[tuple[Table, dict[str, str]]],
                figures: list[FigureSection], trials_csv: str) -> str:
    """The whole page as a string; ``tables`` pairs each table with its export paths (relative)."""
    toc = [f'<li><a href="#section-{e(t.key)}">{e(t.title)}</a></li>' for t, _ in tables]
    toc.append('<li><a href="#section-tests">How the tests work</a></li>')
    toc += [f'<li><a href="#section-figure-{e(f.key)}">{e(f.title)}</a></li>' for f in figures]
    parallel = [f for f in figures if f.key.startswith("search-parallel")]
    single = [f for f in figures if f not in parallel]
    body = [header_html(record, view),
            '<pre id="js-errors" hidden></pre>',
            '<nav><h2>Contents</h2><ul>' + "".join(toc) + "</ul></nav>",
            *(table_html(t, paths) for t, paths in tables), tests_html(),
            f'<p class="exports">Every trial of the main study: <a href="{e(trials_csv)}">trials.csv</a></p>',
            '<h2 id="figures">Figures</h2><div class="figures">', *(figure_html(f) for f in single), "</div>"]
    if parallel:
        body += ['<div class="figure-grid">', *(figure_html(f) for f in parallel), "</div>"]
    body.append(f"<footer>Generated by <code>mmvit-study report</code> from Optuna storage "
                f"{e(record.storage)} at {_when(record.loaded_at)}.</footer>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(record.name)}: mmvit-study report</title>", f"<style>{_CSS}</style>", _ERROR_HOOK,
        f'<script src="{PLOTLY_JS}" charset="utf-8"></script>', "</head>", "<body>", *body, "</body>", "</html>", ""])


def write_plotly_js(folder: Path) -> Path:
    """Copy the installed plotly.js once; rewrite it only when the installed version differs."""
    from plotly.offline import get_plotlyjs

    path = folder / PLOTLY_JS
    source = get_plotlyjs()
    data = source.encode("utf-8")
    if not path.is_file() or path.stat().st_size != len(data):
        temporary = path.with_name(f".{PLOTLY_JS}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
    return path
