"""The sbatch script of a study, and its submission.

The script is a file the user can read, edit and submit again by hand; the logic that must be
right on every cluster (starting Ray, stopping it, requeueing) is not in it but in the command
it runs, ``mmvit-study slurm job`` (:mod:`mmvit.slurm.job`)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmvit.errors import StudyError

TEMPLATE = "study.sbatch.j2"
SIGNAL_LEAD_S = 300
"""Default seconds between the stop signal and the time limit: a trial's epoch at thesis scale
takes about a minute on one GPU, the stop and Ray's shutdown a few seconds."""
MAX_RESTARTS = 10
PASSED_ENVIRONMENT = ("MMVIT_DATA", "MMVIT_CACHE_DIR", "MMVIT_DEMO_DIR", "MMVIT_HEARTBEAT_S")
"""The submitting shell's settings the job keeps (written into the script, so a requeued job and
a hand-edited script see the same)."""
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")


@dataclass
class JobRequest:
    """What ``slurm submit`` asks SLURM for, and the ``run`` options the job's driver gets."""

    study_file: Path
    study: str
    nodes: int = 1
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_lead: int = SIGNAL_LEAD_S
    max_restarts: int = MAX_RESTARTS
    extra: list[str] = field(default_factory=list)
    """Further ``#SBATCH`` lines, as given (``--constraint=a100``)."""
    run_options: list[str] = field(default_factory=list)
    """``mmvit-study run`` options for the driver, already as arguments."""
    studies_dir: Path = Path("studies")

    def check(self) -> None:
        """The rules sbatch would apply only after the job waited in the queue, or never."""
        if self.nodes < 1:
            raise StudyError(f"--nodes must be at least 1, but got {self.nodes}.")
        for name, value in (("--gpus-per-node", self.gpus_per_node), ("--cpus-per-node", self.cpus_per_node)):
            if value is not None and value < 0:
                raise StudyError(f"{name} must be 0 or more, but got {value}.")
        if self.max_restarts < 0:
            raise StudyError(f"--max-restarts must be 0 or more, but got {self.max_restarts}.")
        if self.signal_lead < 10:
            raise StudyError(f"--signal-lead must be at least 10 s (the driver needs time to stop the trials and "
                             f"Ray), but got {self.signal_lead}.")
        if self.time is not None and not _TIME.match(self.time):
            raise StudyError(f"--time must be a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS, "
                             f"e.g. 04:00:00), but got {self.time!r}.")

    @property
    def folder(self) -> Path:
        """``studies/<study>/slurm/``: the script and the job logs."""
        return (self.studies_dir / self.study / "slurm").resolve()

    @property
    def script_path(self) -> Path:
        return self.folder / f"{self.study.replace('/', '_')}.sbatch"


def _activate_line() -> str | None:
    """How the job gets this environment: a virtual environment's activate script (a conda
    environment has none; the script then runs this interpreter by its path)."""
    activate = Path(sys.prefix) / "bin" / "activate"
    return shlex.quote(str(activate)) if sys.prefix != sys.base_prefix and activate.is_file() else None


def driver_command(request: JobRequest) -> list[str]:
    return [sys.executable, "-m", "mmvit", "slurm", "job", str(request.study_file.resolve()),
            f"--max-restarts={request.max_restarts}", f"--studies-dir={request.studies_dir.resolve()}",
            *request.run_options]


def render_script(request: JobRequest, *, now: _dt.datetime | None = None) -> str:
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("mmvit.slurm", "templates"),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    when = (now or _dt.datetime.now().astimezone()).isoformat(timespec="seconds")
    return environment.get_template(TEMPLATE).render(
        study=request.study, written=when, script=shlex.quote(str(request.script_path)),
        job_name=f"mmvit-{re.sub(r'[^A-Za-z0-9_.-]', '_', request.study)}", nodes=request.nodes,
        cpus_per_node=request.cpus_per_node, gpus_per_node=request.gpus_per_node, mem=request.mem,
        time=request.time, partition=request.partition, account=request.account, qos=request.qos,
        signal_lead=request.signal_lead, log=request.folder / "job-%j.out", extra=request.extra,
        workdir=shlex.quote(os.getcwd()), activate=_activate_line(), max_restarts=request.max_restarts,
        environment=[(name, shlex.quote(os.environ[name])) for name in PASSED_ENVIRONMENT if os.environ.get(name)],
        command=shlex.join(driver_command(request)))


def write_script(request: JobRequest) -> Path:
    """The script, owner-only (a storage URL in it may hold a password)."""
    request.folder.mkdir(parents=True, exist_ok=True)
    path = request.script_path
    path.write_text(render_script(request))
    path.chmod(0o700)
    return path


def submit(script: Path) -> str:
    """``sbatch --parsable``; the job id."""
    if shutil.which("sbatch") is None:
        raise StudyError(f"sbatch is not on PATH, so the job was not submitted; the script is {script}. Run "
                         "`mmvit-study slurm submit` on the cluster's login node, or `sbatch` that file there.")
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())
        raise StudyError(f"sbatch refused {script}: {message} Fix the option it names (or edit the script) and "
                         "submit again.")
    return done.stdout.strip().split(";")[0]
