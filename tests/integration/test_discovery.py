"""Discovery and the IPC client against real .NET 8 and .NET Core 3.1 processes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dnmon_agent.diagnostics.client import DiagnosticsClient
from dnmon_agent.diagnostics.discovery import ZERO_UID, list_processes, select_process
from dnmon_agent.diagnostics.errors import IpcConnectionError, IpcServerError, ProcessSelectionError
from tests.conftest import StartTarget

pytestmark = pytest.mark.dotnet


def test_net8_process_is_described_by_the_runtime(dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "60")
    found = {p.pid: p for p in list_processes()}
    assert target.pid in found
    info = found[target.pid]
    assert info.uid != ZERO_UID and info.uid.version == 4
    assert info.name == "dotnet"
    assert info.managed_entry_point_assembly_name == "Sleeper"
    assert "Sleeper.dll 60" in info.command_line
    assert (info.operating_system, info.process_architecture) == ("Linux", "x64")
    assert info.runtime_version == "8.0.4"
    # The same runtime instance answers with the same cookie every time.
    assert select_process(list_processes(), uid=info.uid).pid == target.pid


def test_netcore31_falls_back_to_proc_with_the_zero_uid(dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "60", runtime="netcore31")
    with pytest.raises(IpcServerError) as refused:
        DiagnosticsClient(target.socket_path).process_info()
    assert refused.value.unknown_command
    info = select_process(list_processes(), pid=target.pid)
    assert info.uid == ZERO_UID
    assert info.managed_entry_point_assembly_name is None
    assert "Sleeper.dll 60" in info.command_line


def test_environment_of_a_real_process(dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "60", env={"DNMON_TEST_MARKER": "a=b;c"})
    env = DiagnosticsClient(target.socket_path).environment()
    assert env["DNMON_TEST_MARKER"] == "a=b;c"
    assert env["DOTNET_ROOT"]


def test_stale_socket_of_a_killed_process_is_ignored(dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "60")
    socket_path = Path(target.socket_path)
    target.kill()
    assert socket_path.exists(), "the runtime leaves its socket behind when killed"
    assert target.pid not in {p.pid for p in list_processes()}
    with pytest.raises(IpcConnectionError, match=r"refuses connections|does not exist"):
        DiagnosticsClient(socket_path).process_info()


def test_default_process_rule(
    dotnet_target: StartTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private TMPDIR, and discovery limited to it, give these targets their own world.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("DNMON_DISCOVERY", "tmpdir")
    with pytest.raises(ProcessSelectionError, match=r"no \.NET process found"):
        select_process(list_processes())
    first = dotnet_target("Sleeper.cs", "60", env={"TMPDIR": str(tmp_path)})
    assert select_process(list_processes()).pid == first.pid
    second = dotnet_target("Sleeper.cs", "60", env={"TMPDIR": str(tmp_path)})
    processes = list_processes()
    with pytest.raises(ProcessSelectionError, match=r"no default process: 2 \.NET processes") as err:
        select_process(processes)
    assert str(first.pid) in str(err.value) and str(second.pid) in str(err.value)
    with pytest.raises(ProcessSelectionError, match=r"2 \.NET processes match name=DOTNET"):
        select_process(processes, name="DOTNET")
    assert select_process(processes, pid=second.pid).pid == second.pid
    with pytest.raises(ProcessSelectionError, match=rf"no \.NET process matches pid={os.getpid()}"):
        select_process(processes, pid=os.getpid())
    with pytest.raises(ProcessSelectionError, match="matches uid"):
        select_process(processes, uid=uuid.uuid4())
