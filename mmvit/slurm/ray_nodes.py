"""A Ray cluster over one SLURM allocation: the head on the batch host, one worker per other node
(through ``srun``), each sized by the allocation, and all of it gone when the job's driver ends.

Ray's documented SLURM pattern, with what a shared cluster adds: a node may run other users'
jobs (and this user's other jobs), so every port is chosen free on its own node rather than
Ray's fixed defaults; each job has its own temporary folder and its own token (token
authentication: anyone who reaches an open head can run code on every node), handed to the
workers in their environment, never on a command line. ``ray start --block`` keeps the Ray
processes its children, and SIGTERM makes it stop them, so ending the two ``ray start`` processes
ends Ray; whatever still runs from this job's folder afterwards is killed and named in the log.

``python -m mmvit.slurm.ray_nodes worker ADDRESS TEMP_DIR`` is what ``srun`` starts on each worker
node: it reads that node's CPUs and GPUs from its own ``SLURM_*`` variables and picks its ports
there."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmvit.errors import StudyError
from mmvit.slurm.allocation import Allocation, current_allocation

log = logging.getLogger(__name__)
STOP_WAIT_S = 60.0
"""How long each ``ray start --block`` gets to stop its processes before it is killed."""


def free_port() -> int:
    """A TCP port free on this node now (Ray binds it a moment later; a clash fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` script of this interpreter's environment (the job may not have it on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise StudyError(f"No `ray` command beside {sys.executable} or on PATH: install mmvit-study in the "
                         "environment the job activates (pip install -e .).")
    return found


def node_options(cpus: int, gpus: int) -> list[str]:
    """``ray start`` options every node of the job shares: its resources and its own free ports."""
    return ["--block", f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--dashboard-agent-listen-port={free_port()}"]


HEAD_OPTIONS = ("--include-dashboard=false", "--disable-usage-stats")
"""Only the head takes these (``ray start`` refuses them on a worker): no dashboard (the progress
view and storage tell what a study does) and no usage report (compute nodes may have no internet)."""


def job_environment(temp_dir: Path) -> dict[str, str]:
    """The environment of the job's Ray processes and driver: token authentication with a token of
    this job's own, and immediate shutdown on SIGTERM (Ray's node drain waits for running work;
    at the end of a job nothing runs that is not already stopping)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "MMVIT_RAY_TEMP_DIR": str(temp_dir)}


@dataclass
class RayNodes:
    """The job's Ray cluster: ``address`` for the driver; :meth:`stop` ends it."""

    address: str
    temp_dir: Path
    head: subprocess.Popen
    workers: subprocess.Popen | None = None
    log_dir: Path | None = None
    leftovers: list[int] = field(default_factory=list)

    def stop(self) -> None:
        """Workers first (their ``srun`` forwards SIGTERM to every task), then the head; then
        anything of this job's Ray that outlived them."""
        for process in (self.workers, self.head):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("Ray (pid %d) did not stop in %.0f s: killed.", process.pid, STOP_WAIT_S)
                process.kill()
                process.wait()
        self.leftovers = kill_leftovers(self.temp_dir)
        if self.leftovers:
            log.warning("Killed %d Ray process(es) that outlived `ray start`: %s", len(self.leftovers),
                        ", ".join(map(str, self.leftovers)))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def processes_using(marker: str) -> list[int]:
    """Processes of this user whose command line names ``marker`` (the job's Ray folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


LEFTOVER_GRACE_S = 10.0
"""Ray's worker processes exit on their own within a second or two of their raylet."""


def kill_leftovers(temp_dir: Path) -> list[int]:
    """Kill what of this job's Ray still runs once the grace period is over; the pids killed."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (pids := processes_using(str(temp_dir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _wait_for_port(host: str, port: int, head: subprocess.Popen, timeout: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise StudyError(f"Ray's head did not start (exit code {head.returncode}); its output is in {log_file}.")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise StudyError(f"Ray's head did not listen on {host}:{port} within {timeout:.0f} s; its output is in {log_file}.")


def start_ray(allocation: Allocation, log_dir: Path, *, timeout: float = 120.0) -> RayNodes:
    """Start the job's Ray: the head here (the batch host), then one worker on every other node.
    Sets the job's Ray environment (:func:`job_environment`) in this process for the driver,
    before Ray is imported: Ray reads its authentication settings once, at import."""
    temp_dir = Path("/tmp") / f"mmvit-ray-{allocation.job_id}-{allocation.restart}"
    shutil.rmtree(temp_dir, ignore_errors=True)  # a requeued job on the same node starts clean
    os.environ.update(job_environment(temp_dir))
    from ray.util import get_node_ip_address
    log_dir.mkdir(parents=True, exist_ok=True)
    ip, port = get_node_ip_address(), free_port()
    address = f"{ip}:{port}"
    head_log = log_dir / f"ray-head-{allocation.job_id}-{allocation.restart}.log"
    command = [ray_executable(), "start", "--head", f"--node-ip-address={ip}", f"--port={port}", f"--temp-dir={temp_dir}",
               *HEAD_OPTIONS, *node_options(allocation.cpus_per_node, allocation.gpus_per_node)]
    with open(head_log, "ab") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    nodes = RayNodes(address, temp_dir, head, log_dir=log_dir)
    try:
        _wait_for_port(ip, port, head, timeout, head_log)
        if allocation.workers:
            nodes.workers = _start_workers(allocation, address, temp_dir, log_dir)
    except BaseException:
        nodes.stop()
        raise
    return nodes


def _start_workers(allocation: Allocation, address: str, temp_dir: Path, log_dir: Path) -> subprocess.Popen:
    """One ``srun`` step: a Ray worker on each node but the head."""
    count = len(allocation.workers)
    srun = ["srun", f"--nodes={count}", f"--ntasks={count}", "--ntasks-per-node=1",
            f"--nodelist={','.join(allocation.workers)}", "--kill-on-bad-exit=0"]
    if allocation.gpus_per_node:
        srun.append(f"--gres=gpu:{allocation.gpus_per_node}")
    worker_log = log_dir / f"ray-workers-{allocation.job_id}-{allocation.restart}.log"
    with open(worker_log, "ab") as out:
        return subprocess.Popen([*srun, sys.executable, "-m", "mmvit.slurm.ray_nodes", "worker", address,
                                 str(temp_dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_nodes(count: int, timeout: float, nodes: RayNodes) -> None:
    """Until ``count`` Ray nodes are alive (the driver has joined Ray): a study started on part of
    its allocation would plan its concurrency on too few nodes."""
    import ray

    deadline = time.monotonic() + timeout
    alive, why = 0, f"within {timeout:.0f} s"
    while time.monotonic() < deadline:
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= count:
            return
        if nodes.workers is not None and nodes.workers.poll() is not None:
            why = f"(the workers' srun step ended with exit code {nodes.workers.returncode})"
            break
        time.sleep(1)
    where = f"; their output is in {nodes.log_dir}" if nodes.log_dir else ""
    raise StudyError(f"Only {alive} of the job's {count} nodes joined Ray {why}{where}.")


def _worker_main(address: str, temp_dir: str) -> int:
    """On a worker node (started by ``srun``): ``ray start --block`` sized by this node's share."""
    here = current_allocation()
    os.execv(ray_executable(), [ray_executable(), "start", f"--address={address}", f"--temp-dir={temp_dir}",
                                *node_options(here.cpus_per_node, here.gpus_per_node)])
    return 0  # not reached


if __name__ == "__main__":  # pragma: no cover - run by srun on worker nodes
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        sys.exit("usage: python -m mmvit.slurm.ray_nodes worker HEAD_ADDRESS TEMP_DIR")
    sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
