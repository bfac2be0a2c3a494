"""The report page in a real browser: Debian's headless Chromium, no network, no GPU.

The page collects JavaScript errors (uncaught exceptions, failed script loads, console.error)
into ``<pre id="js-errors">``; Chromium's ``--dump-dom`` gives the DOM after the scripts ran, so
the test reads the errors and checks that Plotly drew an SVG into every figure. A screenshot is
kept in ``test-artifacts/report.png``.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report_fixtures import full_scenario

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (no /usr/bin/chromium): `apt-get install chromium`; "
           ".ci/run installs it before the tests")


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local file with networking cut off (every host name unresolvable)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *extra, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def js_errors(dom: str) -> str:
    match = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, flags=re.S)
    assert match, "the page lost its error box"
    return html.unescape(match.group(1)).strip()


def uncaught(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from mmvit.report import build_report

    folder = tmp_path_factory.mktemp("browser")
    scenario = full_scenario(folder)
    return build_report(scenario.name, scenario.url, folder / "report")


def test_the_error_box_catches_errors(tmp_path):
    """Guards the check below: a broken page does report its errors."""
    from mmvit.report.page import _ERROR_HOOK

    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head>" + _ERROR_HOOK + '<script src="https://cdn.example.org/x.js">'
                    '</script></head><body><pre id="js-errors" hidden></pre><script>notDefined();</script></body>'
                    "</html>")
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    errors = js_errors(result.stdout)
    assert "notDefined is not defined" in errors
    assert "failed to load https://cdn.example.org/x.js" in errors


def test_report_renders_every_table_and_figure_without_errors(report, tmp_path):
    result = chromium(report, tmp_path / "profile", "--dump-dom")
    dom = result.stdout
    assert "</html>" in dom, result.stderr[-2000:]
    assert js_errors(dom) == ""
    assert uncaught(result.stderr) == []
    for key in ("aggregate", "significance", "reference", "two_axis", "classwise", "cost", "search"):
        table = re.search(rf'<table class="report-table" id="table-{key}">(.*?)</table>', dom, flags=re.S)
        assert table and table.group(1).count("<tr>") >= 3, key
    sections = re.split(r'(?=<section class="figure-section")', dom)[1:]
    figures = [s for s in sections if 'data-rendered="yes"' in s]
    assert len(figures) >= 10
    for section in figures:
        key = re.search(r'id="section-figure-([^"]+)"', section).group(1)
        assert f'id="figure-{key}"' in section and 'class="main-svg"' in section, f"figure {key} was not drawn"


def test_screenshot_is_saved_as_an_artefact(report, tmp_path):
    shot = tmp_path / "report.png"
    result = chromium(report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3000",
                      "--hide-scrollbars")
    assert shot.is_file() and shot.stat().st_size > 20_000, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert uncaught(result.stderr) == []
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
