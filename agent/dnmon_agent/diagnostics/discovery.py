"""Find this host's .NET processes by their diagnostics sockets and describe them.

Two layers: ``find_sockets`` / ``SocketScanner`` (no IPC, cheap enough to run every second) find
each process's socket in its own mount namespace and $TMPDIR, named by its namespaced pid
(protocols.md §1.1); ``list_processes`` then asks each runtime about itself and adds the
container, pod and namespaced pid from /proc.

A socket file outlives a killed process (the runtime only unlinks it on clean exit), so a socket
counts only when its process is alive, started when the socket's name says, and accepts a command.
.NET Core 3.1 rejects the Process commands: its description falls back to /proc with the all-zero
uid, as dotnet-monitor does.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from dnmon_core.models import ProcessInfo, name_matches

from . import procfs
from .client import DiagnosticsClient
from .errors import (
    DiagnosticsError,
    IpcError,
    IpcPermissionError,
    IpcServerError,
    IpcTimeoutError,
    ProcessSelectionError,
)

log = logging.getLogger(__name__)
# Facts of a process younger than this are read again: runc, unshare and shell wrappers exec the
# app (new environment, sometimes a new mount namespace) just after the pid appears.
SETTLE_SECONDS = 10.0
SOCKET_PATTERN = re.compile(r"^dotnet-diagnostic-(\d+)-(\d+)-socket$")
ZERO_UID = uuid.UUID(int=0)
_ARCH = {
    "x86_64": "x64",
    "amd64": "x64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i686": "x86",
    "armv7l": "arm",
}


@dataclass(frozen=True)
class DotnetProcess:
    """A .NET process as dotnet-monitor's ProcessInfo describes it, plus where to reach it.

    The fields after ``runtime_version`` say where a containerised process runs (all None on a
    plain host) and, in ``unavailable``, why the agent cannot talk to it (then ``uid`` is all-zero).
    """

    pid: int
    uid: uuid.UUID
    name: str
    command_line: str
    operating_system: str
    process_architecture: str
    managed_entry_point_assembly_name: str | None
    socket_path: str
    runtime_version: str | None = None
    namespaced_pid: int | None = None  # the pid inside its own PID namespace, when that differs
    container_id: str | None = None
    container_runtime: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    ecs_task_id: str | None = None
    unavailable: str | None = None

    def to_process_info(self) -> ProcessInfo:
        """The ProcessInfo this process is published as (unset extras are left out of its JSON)."""
        extras = {
            "namespaced_pid": self.namespaced_pid,
            "container_id": self.container_id,
            "container_runtime": self.container_runtime,
            "pod_name": self.pod_name,
            "pod_namespace": self.pod_namespace,
            "ecs_task_id": self.ecs_task_id,
            "unavailable": self.unavailable,
        }
        info = ProcessInfo(
            pid=self.pid,
            uid=self.uid,
            name=self.name,
            command_line=self.command_line,
            operating_system=self.operating_system,
            process_architecture=self.process_architecture,
            managed_entry_point_assembly_name=self.managed_entry_point_assembly_name,
            **extras,
        )
        return info

    def matches_name(self, name: str) -> bool:
        return name_matches(name, self.name, self.pod_name, self.container_id)


def diagnostics_dir() -> Path:
    return Path(os.environ.get("TMPDIR") or "/tmp")


def discovery_scope() -> str:
    """``DNMON_DISCOVERY``: ``all`` (default) or ``tmpdir`` (only the agent's own $TMPDIR).

    An unknown value is logged and read as ``all``: discovery runs on the agent's background
    threads, where an exception would only stop the heartbeat.
    """
    scope = os.environ.get("DNMON_DISCOVERY", "all").strip().lower() or "all"
    if scope not in ("all", "tmpdir"):
        log.warning("DNMON_DISCOVERY=%r is neither 'all' nor 'tmpdir': using 'all'", scope)
        return "all"
    return scope


def find_sockets(directory: Path | None = None) -> dict[int, Path]:
    """Host pid → diagnostics socket of every live .NET process; no IPC, cheap enough for each second.

    With ``directory`` (or ``DNMON_DISCOVERY=tmpdir``) only that directory is read, as
    ``dotnet-trace ps`` does; otherwise every process the agent may inspect, in any namespace.
    """
    return {pid: c.path for pid, c in _candidates(directory).items()}


def _candidates(directory: Path | None) -> dict[int, SocketCandidate]:
    if directory is None and discovery_scope() == "all":
        with _SCANNER_LOCK:
            return _default_scanner().scan()
    return _scan_directory(directory or diagnostics_dir())


def _scan_directory(directory: Path) -> dict[int, SocketCandidate]:
    newest: dict[int, tuple[float, Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    for entry in entries:
        match = SOCKET_PATTERN.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        if pid not in newest or mtime > newest[pid][0]:  # pid reuse: the newest socket wins
            newest[pid] = (mtime, Path(entry.path))
    return {
        pid: SocketCandidate(pid, path, pid) for pid, (_, path) in newest.items() if psutil.pid_exists(pid)
    }


@dataclass(frozen=True)
class SocketCandidate:
    """A live process with a diagnostics socket, as a scan finds it (no IPC spoken yet)."""

    pid: int  # in the agent's PID namespace (the host's, with hostPID)
    path: Path  # as the agent reaches it: through /proc/<pid>/root for another mount namespace
    namespaced_pid: int  # the pid the runtime knows itself by (and names its socket with)
    environment: Mapping[str, str] | None = None  # CONTEXT_VARIABLES, None when unreadable


@dataclass(frozen=True)
class _Facts:
    """What never changes during one process's life, read once per process (per /proc inode)."""

    namespaced_pid: int
    start_ticks: int | None
    started: float  # wall-clock seconds; a young process may still exec with a new environment
    environment: dict[str, str] | None
    group: tuple[str, str] | None  # (mount namespace, TMPDIR): processes sharing one socket dir
    directory: str  # the socket directory as the agent reaches it


class SocketScanner:
    """Finds every process's diagnostics socket, in any mount and PID namespace, without IPC.

    A process's socket is ``<its TMPDIR>/dotnet-diagnostic-<its namespaced pid>-<start ticks>-socket``
    in its own mount namespace, reached from here through ``/proc/<pid>/root``. A scan lists /proc
    once, reads status/stat/environ only for processes it has not seen (a /proc inode names one
    process, so a recycled pid is a new entry), then reads each distinct socket directory once.
    Processes it may not inspect (another user's, agent not root) fall back to the agent's own
    $TMPDIR: the socket may be there, and the IPC layer then reports why it cannot be opened.
    """

    def __init__(
        self, proc: Path = procfs.PROC, own_dir: Path | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.proc = proc
        self.own_dir = own_dir
        self.clock = clock
        self._facts: dict[int, tuple[int, _Facts | None]] = {}
        self._boot = procfs.boot_time(proc)

    def scan(self) -> dict[int, SocketCandidate]:
        """Host pid → candidate, for every process whose socket exists now (it may still be stale)."""
        own_mount = procfs.mount_namespace("self", self.proc)
        own_dir = str(self.own_dir or diagnostics_dir())
        settled = self.clock() - SETTLE_SECONDS
        seen: dict[int, tuple[int, _Facts | None]] = {}
        groups: dict[tuple[str, str] | str, list[tuple[int, _Facts]]] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            pid, inode = int(entry.name), entry.inode()
            cached = self._facts.get(pid)
            if cached and cached[0] == inode and (cached[1] is None or cached[1].started < settled):
                facts = cached[1]
            else:
                facts = self._read_facts(pid, own_mount, own_dir)
            seen[pid] = (inode, facts)
            if facts is not None:
                groups.setdefault(facts.group or facts.directory, []).append((pid, facts))
        self._facts = seen
        found: dict[int, SocketCandidate] = {}
        for members in groups.values():
            found.update(self._match(members))
        return found

    def _read_facts(self, pid: int, own_mount: str | None, own_dir: str) -> _Facts | None:
        nspids = procfs.namespaced_pids(pid, self.proc)
        if not nspids:
            return None  # exited (kernels before 4.1 lack NSpid: DNMON_DISCOVERY=tmpdir there)
        env = procfs.environment(pid, self.proc)
        mount = procfs.mount_namespace(pid, self.proc)
        ticks = procfs.start_ticks(pid, self.proc)
        started = self._boot + (ticks or 0) / procfs.CLOCK_TICKS
        if env is None or mount is None:
            if len(nspids) > 1:
                return None  # in another PID namespace and not ours to inspect: out of reach
            return _Facts(nspids[-1], ticks, started, env, None, own_dir)
        tmpdir = env.get("TMPDIR") or "/tmp"
        if mount == own_mount:
            return _Facts(nspids[-1], ticks, started, env, (mount, tmpdir), tmpdir)
        directory = f"{self.proc}/{pid}/root/{tmpdir.lstrip('/')}".rstrip("/")
        return _Facts(nspids[-1], ticks, started, env, (mount, tmpdir), directory)

    def _match(self, members: list[tuple[int, _Facts]]) -> dict[int, SocketCandidate]:
        """Give each member the socket named by its namespaced pid and start time."""
        by_nspid: dict[int, list[tuple[int, _Facts]]] = {}
        for pid, facts in members:
            by_nspid.setdefault(facts.namespaced_pid, []).append((pid, facts))
        sockets: dict[int, list[tuple[int, str]]] = {}
        for _, facts in members:  # any live member's view of the shared directory will do
            try:
                with os.scandir(facts.directory) as entries:
                    for entry in entries:
                        match = SOCKET_PATTERN.match(entry.name)
                        if match and int(match.group(1)) in by_nspid:
                            sockets.setdefault(int(match.group(1)), []).append(
                                (int(match.group(2)), entry.name)
                            )
                break
            except OSError:
                continue
        found: dict[int, SocketCandidate] = {}
        for nspid, named in sockets.items():
            for pid, facts in by_nspid[nspid]:
                name = self._socket_for(facts, named)
                if name is not None:
                    found[pid] = SocketCandidate(pid, Path(facts.directory) / name, nspid, facts.environment)
        return found

    def _socket_for(self, facts: _Facts, named: list[tuple[int, str]]) -> str | None:
        """The socket whose key is the process's start time; else the newest one made since it started.

        The fallback covers a runtime whose start time reads differently inside its container (a
        time namespace); a socket older than the process is a dead predecessor's, never its own.
        """
        for key, name in named:
            if key == facts.start_ticks:
                return name
        best: tuple[float, str] | None = None
        for _, name in named:
            try:
                mtime = os.stat(f"{facts.directory}/{name}").st_mtime
            except OSError:
                continue
            if mtime >= facts.started - 1 and (best is None or mtime > best[0]):
                best = (mtime, name)
        return best[1] if best else None


_SCANNER: SocketScanner | None = None
_SCANNER_LOCK = threading.Lock()


def _default_scanner() -> SocketScanner:
    """One scanner per agent process, so its per-process cache serves every listing."""
    global _SCANNER
    if _SCANNER is None:
        _SCANNER = SocketScanner()
    return _SCANNER


def describe(pid: int, socket_path: Path | str, *, timeout: float = 3.0) -> DotnetProcess:
    """Ask the runtime about itself; fall back to /proc for runtimes without Process commands."""
    client = DiagnosticsClient(socket_path, connect_timeout=timeout, reply_timeout=timeout)
    os_name, arch = platform.system(), _ARCH.get(platform.machine().lower(), platform.machine())
    try:
        name = psutil.Process(pid).name()
    except psutil.Error as exc:
        raise IpcError(f"process {pid} has exited", "ProcessInfo") from exc
    try:
        info = client.process_info()
    except IpcServerError as exc:
        if not exc.unknown_command:
            raise
        return DotnetProcess(
            pid, ZERO_UID, name, _proc_command_line(pid), os_name, arch, None, str(socket_path)
        )
    return DotnetProcess(
        pid=pid,
        uid=info.runtime_instance_cookie,
        name=name,
        command_line=info.command_line,
        operating_system=info.operating_system or os_name,
        process_architecture=info.process_architecture or arch,
        managed_entry_point_assembly_name=info.managed_entrypoint_assembly_name or None,
        socket_path=str(socket_path),
        runtime_version=info.clr_product_version or None,
    )


def _proc_command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def list_processes(
    directory: Path | None = None,
    *,
    timeout: float = 3.0,
    known: Mapping[int, DotnetProcess] | None = None,
) -> list[DotnetProcess]:
    """Every live .NET process the agent can see, ordered by (host) pid.

    ``known`` (the previous scan) covers a runtime that is alive but busy: its diagnostics server
    answers one command at a time, and while it writes a big rundown it answers nobody. A process
    whose socket the agent may not open, or that stays silent, is listed with ``unavailable``
    saying why; a stale socket (its process died) is left out.
    """
    found: list[DotnetProcess] = []
    for pid, candidate in sorted(_candidates(directory).items()):
        if pid == os.getpid():
            continue
        try:
            process = describe(pid, candidate.path, timeout=timeout)
        except IpcTimeoutError as exc:
            previous = (known or {}).get(pid)
            if previous is not None and previous.socket_path == str(candidate.path):
                found.append(previous)
                continue
            process = _unavailable(pid, candidate.path, exc)
        except IpcPermissionError as exc:
            process = _unavailable(pid, candidate.path, exc)
        except DiagnosticsError:
            continue  # exited between the scan and the question, or a stale socket
        found.append(_in_context(process, candidate))
    return found


def _unavailable(pid: int, socket_path: Path, error: IpcError) -> DotnetProcess:
    """A process seen by its socket but not reachable: described from /proc only."""
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = ""
    os_name, arch = platform.system(), _ARCH.get(platform.machine().lower(), platform.machine())
    return DotnetProcess(
        pid, ZERO_UID, name, _proc_command_line(pid), os_name, arch, None, str(socket_path),
        unavailable=error.reason,
    )  # fmt: skip


def _in_context(process: DotnetProcess, candidate: SocketCandidate) -> DotnetProcess:
    """Add the container, pod and namespaced pid, so an operator sees where the process runs."""
    container = procfs.container_of(procfs.cgroup(process.pid) or "")
    pod = procfs.orchestration(process.pid, candidate.environment)
    return replace(
        process,
        namespaced_pid=candidate.namespaced_pid if candidate.namespaced_pid != process.pid else None,
        container_id=container.container_id if container else None,
        container_runtime=container.runtime if container else None,
        ecs_task_id=container.ecs_task_id if container else None,
        pod_name=pod.pod_name,
        pod_namespace=pod.pod_namespace,
    )


def select_process(
    processes: Sequence[DotnetProcess],
    *,
    pid: int | None = None,
    uid: uuid.UUID | None = None,
    name: str | None = None,
) -> DotnetProcess:
    """Apply pid/uid/name filters, or the default-process rule: exactly one process, else an error.

    ``name`` matches the process name (``dotnet``), the pod name, or the container id (12+ chars).
    """
    given = {k: v for k, v in (("pid", pid), ("uid", uid), ("name", name)) if v is not None}
    matches = [
        p
        for p in processes
        if (pid is None or p.pid == pid)
        and (uid is None or p.uid == uid)
        and (name is None or p.matches_name(name))
    ]
    if len(matches) == 1:
        return matches[0]
    if not given:
        if not matches:
            raise ProcessSelectionError("no .NET process found on this host (is diagnostics enabled?)")
        raise ProcessSelectionError(
            f"no default process: {len(matches)} .NET processes are running ({_summary(matches)}); "
            "name one with pid, uid or name"
        )
    wanted = ", ".join(f"{k}={v}" for k, v in given.items())
    if not matches:
        raise ProcessSelectionError(
            f"no .NET process matches {wanted}; seen: {_summary(processes) or 'none'}"
        )
    raise ProcessSelectionError(
        f"{len(matches)} .NET processes match {wanted} ({_summary(matches)}); use pid or uid"
    )


def _summary(processes: Iterable[DotnetProcess]) -> str:
    return ", ".join(f"{p.pid} {p.name}{_where(p)}" for p in processes)


def _where(process: DotnetProcess) -> str:
    if process.pod_name:
        return f" in pod {process.pod_name}"
    return f" in container {process.container_id[:12]}" if process.container_id else ""
