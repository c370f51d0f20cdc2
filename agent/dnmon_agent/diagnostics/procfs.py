"""What /proc says about a process: its pid in its own namespace, start time, environment, cgroup.

Discovery needs these to find a containerised runtime's socket (protocols.md §1.1): the socket is
named by the *namespaced* pid and the start time, and lives in the target's own ``$TMPDIR`` as its
mount namespace sees it. Every reader returns ``None`` when the file is gone (the process exited)
or unreadable (another user's process and the agent is not root); callers treat both as "unknown".
The parsers below the readers are pure functions over the file's text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

# The environment variables worth keeping: where the socket is, and who runs the process.
CONTEXT_VARIABLES = frozenset(
    {
        "TMPDIR",
        "HOSTNAME",
        "POD_NAME",
        "POD_NAMESPACE",
        "KUBERNETES_SERVICE_HOST",
    }
)
# Where a pod's namespace sits when the service account token is mounted (the default).
SERVICE_ACCOUNT_NAMESPACE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"

# The last path component of a cgroup naming a container, by runtime:
#   docker            /docker/<id>, /system.slice/docker-<id>.scope
#   containerd (CRI)  /kubepods/.../pod<uid>/<id>, .../cri-containerd-<id>.scope
#   cri-o             .../crio-<id>.scope, /kubepods/.../crio-<id>
#   podman            .../libpod-<id>.scope, .../libpod-<id>.scope/container
#   ECS on EC2        /ecs/<task id>/<id>;  Fargate: /ecs/<task id>/<task id>-<digits>
_CONTAINER_SCOPE = re.compile(
    r"(?:^|/)(?:(docker|cri-containerd|containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?(?:/container)?$"
)
_ECS_PATH = re.compile(r"/ecs/([0-9a-f]{32}|[0-9a-f-]{36})/([0-9a-f]{64}|[0-9a-f]{32}-\d+)$")
_ECS_SLICE = re.compile(r"ecstasks-([0-9a-f]{32})\.slice")
_RUNTIMES = {"cri-containerd": "containerd", "libpod": "podman"}


@dataclass(frozen=True)
class ContainerRef:
    """The container a process runs in, as its cgroup path names it."""

    container_id: str
    runtime: str | None = None  # docker, containerd, crio, podman, ecs; None when only the id shows
    ecs_task_id: str | None = None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:  # gone (ENOENT, ESRCH) or not ours (EACCES): both mean "unknown"
        return None


def namespaced_pids(pid: int, proc: Path = PROC) -> list[int] | None:
    """The ``NSpid`` line: the pid in each PID namespace, outermost first (the last is its own)."""
    status = _read(f"{proc}/{pid}/status")
    return None if status is None else parse_nspid(status)


def parse_nspid(status: bytes) -> list[int] | None:
    for line in status.splitlines():
        if line.startswith(b"NSpid:"):
            return [int(part) for part in line.split()[1:]]
    return None


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """Start time in clock ticks since boot (stat field 22): the ``{key}`` of the socket name."""
    stat = _read(f"{proc}/{pid}/stat")
    return None if stat is None else parse_start_ticks(stat)


def parse_start_ticks(stat: bytes) -> int | None:
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def environment(
    pid: int, proc: Path = PROC, keep: frozenset[str] = CONTEXT_VARIABLES
) -> dict[str, str] | None:
    """The process's initial environment (only ``keep``), or None when it cannot be read."""
    raw = _read(f"{proc}/{pid}/environ")
    return None if raw is None else parse_environ(raw, keep)


def parse_environ(raw: bytes, keep: frozenset[str] = CONTEXT_VARIABLES) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name.decode(errors="replace") in keep:
            found[name.decode(errors="replace")] = value.decode(errors="replace")
    return found


def mount_namespace(pid: int | str, proc: Path = PROC) -> str | None:
    """``mnt:[inode]``: processes that share it see the same files, so one directory scan serves all."""
    try:
        return os.readlink(f"{proc}/{pid}/ns/mnt")
    except OSError:
        return None


def cgroup(pid: int, proc: Path = PROC) -> str | None:
    raw = _read(f"{proc}/{pid}/cgroup")
    return None if raw is None else raw.decode(errors="replace")


def container_of(cgroup_text: str) -> ContainerRef | None:
    """The container named by a ``/proc/<pid>/cgroup`` text (v1 or v2), or None on a plain host."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1].rstrip("/")
        ecs = _ECS_PATH.search(path)
        if ecs:
            return ContainerRef(ecs.group(2), "ecs", ecs.group(1).replace("-", ""))
        scope = _CONTAINER_SCOPE.search(path)
        if scope:
            runtime = scope.group(1)
            if runtime is None and "/docker/" in path:
                runtime = "docker"
            slice_ = _ECS_SLICE.search(path)
            if slice_:
                return ContainerRef(scope.group(2), "ecs", slice_.group(1))
            return ContainerRef(scope.group(2), _RUNTIMES.get(runtime or "", runtime))
    return None


@dataclass(frozen=True)
class Orchestration:
    """Kubernetes pod details, from what the kubelet put in the container's environment."""

    pod_name: str | None = None
    pod_namespace: str | None = None


def orchestration(pid: int, env: Mapping[str, str] | None, proc: Path = PROC) -> Orchestration:
    """Pod name and namespace, when the environment shows a Kubernetes pod.

    Kubernetes always sets ``KUBERNETES_SERVICE_HOST`` and, unless the pod sets ``hostname``,
    ``HOSTNAME`` = pod name. ``POD_NAME`` / ``POD_NAMESPACE`` are the usual downward-API names and
    win when present; otherwise the namespace comes from the mounted service-account token.
    """
    if not env or ("KUBERNETES_SERVICE_HOST" not in env and "POD_NAME" not in env):
        return Orchestration()
    namespace = env.get("POD_NAMESPACE")
    if not namespace:
        raw = _read(f"{proc}/{pid}/root/{SERVICE_ACCOUNT_NAMESPACE}")
        namespace = raw.decode(errors="replace").strip() if raw else None
    return Orchestration(env.get("POD_NAME") or env.get("HOSTNAME") or None, namespace or None)


def boot_time(proc: Path = PROC) -> float:
    """Seconds since the epoch at boot (``btime``), to turn start ticks into wall-clock time."""
    raw = _read(f"{proc}/stat") or b""
    for line in raw.splitlines():
        if line.startswith(b"btime"):
            return float(line.split()[1])
    return 0.0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
