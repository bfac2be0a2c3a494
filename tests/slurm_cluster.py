"""A real one-node SLURM for the tests, from Debian's ``slurm-wlm`` and ``munge`` packages.

``slurm_cluster`` (session scope) writes a ``slurm.conf`` into a temporary folder and starts
``munged`` (its own key and socket), ``slurmctld`` and ``slurmd`` from there — no system service,
no file under ``/etc`` — with ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``
(no cgroups in a container). Its ``env`` (``SLURM_CONF``) makes ``sbatch``, ``squeue``,
``scontrol`` and ``scancel`` talk to it. The daemons run as root (they must, to start jobs), so
the tests skip elsewhere. Use it with ``from tests.slurm_cluster import slurm_cluster``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.pg_server import _free_port

MISSING = "SLURM not installed: apt-get install slurm-wlm munge (.ci/run does)"
DAEMONS = ("munged", "slurmctld", "slurmd")


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return max(1024, total_kb // 1024 - 1024)


class SlurmCluster:
    """``slurmctld`` + ``slurmd`` for this machine's CPUs in ``root``; ``env`` selects it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._processes: list[subprocess.Popen] = []

    def write_config(self) -> None:
        for folder in ("munge", "ctld", "d", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text("\n".join([
            "ClusterName=mmvit-tests",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'ctld'}",
            f"SlurmdSpoolDir={self.root / 'd'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobRequeue=1",
            "ReturnToService=2",
            "KillWait=30",
            "MinJobAge=3600",
            "InactiveLimit=0",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self) -> None:
        self.write_config()
        munged = [_binary("munged"), "--force", f"--socket={self.munge_socket}",
                  f"--key-file={self.root / 'munge' / 'munge.key'}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                  f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={self.root / 'munge' / 'seed'}"]
        subprocess.run(munged, check=True, timeout=60, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            # -D: stay in the foreground as a child of the test session, so nothing outlives it.
            self._processes.append(subprocess.Popen([_binary(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.wait_idle()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until the node takes jobs (``sinfo`` says idle)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True,
                                  timeout=30)
            state = done.stdout.strip()
            if state.startswith("idle") or state.startswith("mix") or state.startswith("alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up in {timeout:.0f} s (node state {state!r}); logs in "
                           f"{self.root / 'log'}")

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check)

    def job_state(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as key=value pairs (JobState, RestartCnt, …)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(part.split("=", 1) for part in out.split() if "=" in part)

    def release_if_requeued(self, info: dict[str, str]) -> None:
        """SLURM holds a requeued batch job for about two minutes (``Reason=BeginTime``) before it
        may start again; a cluster with free nodes would start it then. The tests do not wait."""
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            self.run("scontrol", "update", f"JobId={info['JobId']}", "StartTime=now", check=False)

    def wait_job(self, job_id: str, timeout: float, states: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED",
                                                                               "TIMEOUT", "NODE_FAIL")) -> dict:
        """Until the job is in one of ``states`` (requeued runs released at once)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_state(job_id)
            if info.get("JobState") in states:
                time.sleep(5)  # a job that requeues itself may pass through an end state on its way back
                again = self.job_state(job_id)
                if again.get("JobState") == info.get("JobState"):
                    return again
                info = again
            self.release_if_requeued(info)
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s: {info}")

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        pid_file = self.root / "munge" / "munged.pid"
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass


def slurm_available() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if any(_binary(name) is None for name in (*DAEMONS, "sbatch")):
        return MISSING
    if os.geteuid() != 0:
        return "the one-node SLURM of the tests runs its daemons as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="mmvit-slurm-"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
