"""What a SLURM allocation holds, read from the variables SLURM sets in a job (``SLURM_*``),
so that per-node CPUs and GPUs are never repeated by hand on the command line."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Mapping

from mmvit.errors import StudyError


@dataclass(frozen=True)
class Allocation:
    """One SLURM job as its batch script sees it."""

    job_id: str
    restart: int
    """``SLURM_RESTART_COUNT``: how often this job was requeued (0 the first time)."""
    nodes: tuple[str, ...]
    """Host names, the batch host (where the driver and Ray's head run) first."""
    cpus_per_node: int
    gpus_per_node: int

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[str, ...]:
        return self.nodes[1:]


def gpu_count(request: str | None) -> int:
    """GPUs in a SLURM GPU request: ``4``, ``a100:4``, ``gpu:a100:2,gpu:v100:1``; a type without
    a count (``a100``) is one GPU."""
    total = 0
    for part in (request or "").split(","):
        if part.strip():
            count = re.sub(r"\(.*\)$", "", part.strip()).rsplit(":", 1)[-1]  # "gpu:2(IDX:0-1)" in listings
            total += int(count) if count.isdigit() else 1
    return total


def _gpus(env: Mapping[str, str]) -> int:
    """This node's GPUs: the count SLURM gives it, else its request, else the visible devices."""
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    if env.get("SLURM_GPUS_PER_NODE"):
        return gpu_count(env["SLURM_GPUS_PER_NODE"])
    if env.get("SLURM_JOB_GPUS"):
        return len([i for i in env["SLURM_JOB_GPUS"].split(",") if i.strip()])
    return 0


def _cpus(env: Mapping[str, str]) -> int:
    """This node's CPUs: ``SLURM_CPUS_ON_NODE`` (the allocation on the batch host), else the
    first entry of ``SLURM_JOB_CPUS_PER_NODE`` (``"16(x2),8"``), else the affinity mask."""
    if env.get("SLURM_CPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_CPUS_ON_NODE"])
    match = re.match(r"(\d+)", env.get("SLURM_JOB_CPUS_PER_NODE", ""))
    if match:
        return int(match.group(1))
    return len(os.sched_getaffinity(0))


def expand_nodelist(nodelist: str) -> list[str]:
    """``scontrol show hostnames`` (SLURM's own expansion of ``node[01-04,07]``)."""
    if not any(c in nodelist for c in "[],"):
        return [nodelist]
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise StudyError(f"Cannot expand the job's node list {nodelist!r} with `scontrol show hostnames` "
                         f"({error}). Run the job on a machine with SLURM's client commands.") from None
    return done.stdout.split()


def current_allocation(env: Mapping[str, str] | None = None) -> Allocation:
    """The allocation this process runs in; a clear error outside a SLURM job."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        raise StudyError("`mmvit-study slurm job` runs inside a SLURM job (it found no $SLURM_JOB_ID): submit it "
                         "with `mmvit-study slurm submit STUDY.yaml`, or run the study directly with "
                         "`mmvit-study run STUDY.yaml`.")
    nodes = expand_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    head = env.get("SLURMD_NODENAME") or (nodes[0] if nodes else "")
    ordered = tuple([head] + [n for n in nodes if n != head]) if head else tuple(nodes)
    return Allocation(job_id=env["SLURM_JOB_ID"], restart=int(env.get("SLURM_RESTART_COUNT") or 0),
                      nodes=ordered, cpus_per_node=_cpus(env), gpus_per_node=_gpus(env))
