"""`--storage postgresql://…` end to end, against a real PostgreSQL server the test starts
(:mod:`tests.pg_server`): run a study as a real process, kill the whole process tree mid-study,
run the same command again, report from the storage — and the password in the URL never shows up
in the output, `status`, the report or the study's records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmvit.errors import StudyError
from mmvit.storage.connection import open_storage
from tests.pg_server import PASSWORD, postgres_url  # noqa: F401 (the fixture)
from tests.study_process import descendants, wait_mid_study

NAME = "pg-killed"
EPOCHS = 40  # train.epochs in SPEC: long enough to be killed mid-trial on a fast machine
ARMS = ("model.fusion=early", "model.fusion=sct", "model.fusion=modality_token")
SPEC = """\
study: pg-killed
ablate:
  model.fusion: [early, sct, modality_token]
seeds: [0]
base:
  model: {patch_size: 30, depth: 1, embed_dim: 32, num_heads: 2}
  train: {epochs: 40, batch_size: 32}
  data: {num_workers: 0}
resources: {cpu: 1}
max_concurrent: 2
"""
CLI = str(Path(sys.executable).parent / "mmvit-study")
# RAY_ADDRESS=local: a private Ray per run, even while a cluster started with `ray start` on this
# machine is recorded in /tmp/ray/ray_current_cluster (ray.init() would join that one otherwise).
ENV = {**os.environ, "COLUMNS": "200", "RAY_ADDRESS": "local"}


def _run_command(tmp_path: Path, url: str, demo_root: Path) -> list[str]:
    return [CLI, "run", str(tmp_path / "study.yaml"), "--storage", url, "--data", str(demo_root),
            "--profile", "full", "--studies-dir", str(tmp_path / "studies"),
            "--reports-dir", str(tmp_path / "reports")]


def _start(tmp_path: Path, url: str, demo_root: Path) -> subprocess.Popen:
    return subprocess.Popen(_run_command(tmp_path, url, demo_root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=tmp_path, env=ENV)


def _trials(storage) -> list:
    try:
        return optuna.load_study(study_name=NAME, storage=storage).get_trials()
    except KeyError:
        return []


def _kill_tree(process: subprocess.Popen) -> str:
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output, _ = process.communicate(timeout=30)
    return output


def _checkpointed_epochs(tmp_path: Path, trials) -> dict[str, int]:
    """config_key → the epoch of the RUNNING trials' last checkpoint, read before the resume."""
    import torch

    from mmvit.train.loop import CHECKPOINT

    epochs = {}
    for trial in trials:
        key = trial.user_attrs.get("config_key")
        path = tmp_path / "studies" / NAME / "checkpoints" / "final" / str(key) / CHECKPOINT
        if trial.state == TrialState.RUNNING and path.is_file():
            epochs[key] = torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    return epochs


def _everything_stored(storage) -> str:
    """Every row of every table of the storage (studies, trials, their attributes …), as one text."""
    from sqlalchemy import MetaData

    tables = MetaData()
    tables.reflect(bind=storage.engine)
    with storage.engine.connect() as connection:
        return json.dumps({name: [list(row) for row in connection.execute(table.select())]
                           for name, table in tables.tables.items()}, default=str)


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


@pytest.mark.slow  # end to end on a real server (~50 s); tests/test_claims.py and test_storage.py run
# PostgreSQL's claim, heartbeat and storage rules in the default suite
@pytest.mark.timeout(400)
def test_postgresql_storage_kill_resume_report_and_the_password_never_leaks(tmp_path, demo_root, postgres_url):
    (tmp_path / "study.yaml").write_text(SPEC)
    wrong = postgres_url.replace(PASSWORD, "wrong-pw")
    with pytest.raises(StudyError, match="password authentication failed") as refused:
        open_storage(wrong)  # the server really checks the URL's password …
    assert "wrong-pw" not in str(refused.value) and "postgres:***@" in str(refused.value)  # … and errors redact it
    storage = open_storage(postgres_url)
    assert storage.engine.dialect.driver == "psycopg", "SQLAlchemy ≥ 2.1 maps postgresql:// to psycopg 3"
    try:
        process = _start(tmp_path, postgres_url, demo_root)
        wait_mid_study(lambda: optuna.load_study(study_name=NAME, storage=storage), process, EPOCHS)
        killed_output = _kill_tree(process)
        before = _trials(storage)
        assert any(t.state == TrialState.RUNNING for t in before), "the kill left trials RUNNING in storage"
        checkpointed = _checkpointed_epochs(tmp_path, before)

        again = subprocess.run(_run_command(tmp_path, postgres_url, demo_root), capture_output=True, text=True,
                               cwd=tmp_path, env=ENV, timeout=300)
        resumed_output = again.stdout + again.stderr
        assert again.returncode == 0, resumed_output

        # The same guarantees as with SQLite (tests/test_resume.py).
        trials = _trials(storage)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 3, "the final count equals the plan"
        assert len({t.user_attrs["config_key"] for t in complete}) == 3, "no configuration twice"
        done_before = {t.number for t in before if t.state == TrialState.COMPLETE}
        assert done_before and done_before <= {t.number for t in complete}, "finished trials are kept, not re-run"
        interrupted = [t for t in trials if t.state == TrialState.FAIL]
        assert interrupted and all(t.user_attrs["error"].startswith("interrupted") for t in interrupted)
        for stopped in interrupted:
            key = stopped.user_attrs["config_key"]
            recorded, saved = len(stopped.user_attrs.get("history", [])), checkpointed.get(key, 0)
            # The loop saves the checkpoint, then records the epoch in storage: a kill in between
            # leaves storage one epoch behind the checkpoint, never more.
            assert saved in (recorded, recorded + 1), (recorded, saved)
            rerun = next(t for t in complete if t.user_attrs["config_key"] == key)
            assert rerun.user_attrs.get("resumed_from_epoch", 0) == saved, \
                f"the interrupted trial resumed after its last checkpointed epoch {saved}"
            assert [record["epoch"] for record in rerun.user_attrs["history"]] == list(range(1, EPOCHS + 1)), \
                "the history holds every epoch, the one only the checkpoint had included"
            assert rerun.user_attrs["epochs_run"] == EPOCHS
        assert any(len(t.user_attrs.get("history", [])) >= 1 for t in interrupted), \
            "one interrupted trial had finished an epoch before the kill"

        # Report and status from the PostgreSQL storage alone.
        report = subprocess.run([CLI, "report", NAME, "--storage", postgres_url, "--out", str(tmp_path / "report")],
                                capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120)
        assert report.returncode == 0, report.stdout + report.stderr
        page = (tmp_path / "report" / "index.html").read_text()
        for arm in ARMS:
            assert arm in page, arm
        status = subprocess.run([CLI, "status", NAME, "--storage", postgres_url], capture_output=True, text=True,
                                cwd=tmp_path, env=ENV, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("COMPLETE") == 3, status.stdout

        # The password is used (SCRAM over TCP) but never shown: only the redacted URL is.
        stored = _everything_stored(storage)
        assert "postgresql://postgres:***@127.0.0.1" in resumed_output, resumed_output
        for what, text in {"the killed run's output": killed_output, "the resumed run's output": resumed_output,
                           "`report`'s output": report.stdout + report.stderr,
                           "`status`'s output": status.stdout + status.stderr,
                           "the storage's rows": stored}.items():
            assert PASSWORD not in text, f"the password appears in {what}"
        assert NAME in stored and "config_key" in stored, "the storage dump holds the study's records"
        assert _files_holding(tmp_path / "report", PASSWORD) == [], "the password appears in the report"
        assert _files_holding(tmp_path / "reports", PASSWORD) == [], "the password appears in the live report"
        assert _files_holding(tmp_path / "studies", PASSWORD) == [], \
            "the password appears in the studies folder (checkpoints, Ray's experiment state)"
    finally:
        storage.engine.dispose()
