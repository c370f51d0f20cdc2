"""Find this host's .NET processes by their diagnostics sockets and describe them.

A socket file outlives a killed process (the runtime only unlinks it on clean exit), so a socket
counts only when its pid is alive and the socket accepts a command. .NET Core 3.1 rejects the
Process commands: its description falls back to /proc with the all-zero uid, as dotnet-monitor does.
"""

from __future__ import annotations

import os
import platform
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from dnmon_core.models import ProcessInfo

from .client import DiagnosticsClient
from .errors import DiagnosticsError, IpcError, IpcServerError, IpcTimeoutError, ProcessSelectionError

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
    """A .NET process as dotnet-monitor's ProcessInfo describes it, plus where to reach it."""

    pid: int
    uid: uuid.UUID
    name: str
    command_line: str
    operating_system: str
    process_architecture: str
    managed_entry_point_assembly_name: str | None
    socket_path: str
    runtime_version: str | None = None

    def to_process_info(self) -> dict[str, object]:
        """The ProcessInfo JSON object (camelCase, as the API returns it)."""
        info = ProcessInfo(
            pid=self.pid,
            uid=self.uid,
            name=self.name,
            command_line=self.command_line,
            operating_system=self.operating_system,
            process_architecture=self.process_architecture,
            managed_entry_point_assembly_name=self.managed_entry_point_assembly_name,
        )
        return info.model_dump(mode="json")


def diagnostics_dir() -> Path:
    return Path(os.environ.get("TMPDIR") or "/tmp")


def find_sockets(directory: Path | None = None) -> dict[int, Path]:
    """pid → newest diagnostics socket of that pid, only for pids that are alive."""
    directory = directory or diagnostics_dir()
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
    return {pid: path for pid, (_, path) in newest.items() if psutil.pid_exists(pid)}


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
    """Every live, answering .NET process of this host, ordered by pid.

    ``known`` (the previous scan) covers a runtime that is alive but busy: its diagnostics server
    answers one command at a time, and while it writes a big rundown it answers nobody.
    """
    found: list[DotnetProcess] = []
    for pid, path in sorted(find_sockets(directory).items()):
        if pid == os.getpid():
            continue
        try:
            found.append(describe(pid, path, timeout=timeout))
        except IpcTimeoutError:
            previous = (known or {}).get(pid)
            if previous is not None and previous.socket_path == str(path):
                found.append(previous)
        except DiagnosticsError:
            continue  # exited between the scan and the question, or a stale socket
    return found


def select_process(
    processes: Sequence[DotnetProcess],
    *,
    pid: int | None = None,
    uid: uuid.UUID | None = None,
    name: str | None = None,
) -> DotnetProcess:
    """Apply pid/uid/name filters, or the default-process rule: exactly one process, else an error."""
    given = {k: v for k, v in (("pid", pid), ("uid", uid), ("name", name)) if v is not None}
    matches = [
        p
        for p in processes
        if (pid is None or p.pid == pid)
        and (uid is None or p.uid == uid)
        and (name is None or p.name.casefold() == name.casefold())
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
    return ", ".join(f"{p.pid} {p.name}" for p in processes)
