"""The machine's cores as a process sees them: affinity, cgroup quota, and who shares them."""

from __future__ import annotations

import hashlib
import math
import os
import socket
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (a
    container's ``--cpus``, a Kubernetes limit), which ``os.cpu_count()`` ignores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(cores, 1)


def core_pool() -> tuple[str, int]:
    """(id, cores) of the cores this process shares with its siblings.

    Processes with the same id compete for the same cores: same kernel (boot id), same control
    group (a container's CPU quota), same CPU affinity. Dask workers of one machine share a pool;
    two containers with their own CPU limits on one machine do not; worker "hosts" that are
    network namespaces of one machine do, since they run on the same cores.
    """

    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""

    try:
        affinity = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        affinity = str(os.cpu_count())
    identity = "|".join(
        [read("/proc/sys/kernel/random/boot_id") or socket.gethostname(), read("/proc/self/cgroup"), affinity]
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:12], usable_cores()
