"""Containers without a container runtime: real .NET 8 targets in their own PID and mount
namespaces with a private /tmp (tests/namespaces.py), found and captured from the host."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnmon_agent.diagnostics.client import DiagnosticsClient
from dnmon_agent.diagnostics.discovery import (
    ZERO_UID,
    DotnetProcess,
    SocketScanner,
    find_sockets,
    list_processes,
    select_process,
)
from dnmon_agent.diagnostics.errors import IpcConnectionError
from dnmon_agent.local.stack import SEED_LIVEMETRICS_BODY
from dnmon_agent.pipelines.counters import CountersPipeline, MemoryCounterSink
from dnmon_agent.pipelines.runner import CaptureError, StopControl, run_live_metrics, run_trace
from dnmon_agent.pipelines.trace import DEFAULT_TRACE_CONFIGURATION, session_configuration
from dnmon_core.models import EventMetricsConfiguration
from tests.conftest import StartTarget
from tests.namespaces import Container, unshare_unavailable
from tests.traces import assert_cpu_trace

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def _closed_to_others() -> str | None:
    """The first directory above this checkout or its interpreter that other users cannot enter
    (a clone into ``mktemp -d`` is 0700): host processes of other users cannot run from there."""
    for start in (ROOT, Path(sys.prefix).resolve()):
        for folder in (start, *start.parents):
            if not folder.stat().st_mode & 0o001:
                return str(folder)
    return None


pytestmark = [
    pytest.mark.dotnet,
    pytest.mark.skipif(unshare_unavailable() is not None, reason=str(unshare_unavailable())),
]


@pytest.fixture
def container() -> Iterator[Container]:
    box = Container()
    yield box
    box.close()


def listed(pid: int, known: dict[int, DotnetProcess] | None = None) -> DotnetProcess:
    return select_process(list_processes(known=known), pid=pid)


def test_a_namespaced_process_is_listed_by_host_pid(container: Container) -> None:
    target = container.start("Sleeper.cs", "120")
    assert target.namespaced_pid != target.pid
    assert target.pid not in find_sockets(Path("/tmp")), "its socket is in the container's own /tmp"
    assert find_sockets()[target.pid] == target.socket_path
    info = listed(target.pid)
    assert info.namespaced_pid == target.namespaced_pid
    assert info.socket_path == f"/proc/{target.pid}/root/tmp/{target.socket_path.name}"
    assert info.uid.version == 4 and info.managed_entry_point_assembly_name == "Sleeper"
    assert info.unavailable is None and info.container_id is None  # no container runtime here
    shape = info.to_process_info().model_dump(mode="json")
    assert shape["pid"] == target.pid and shape["namespacedPid"] == target.namespaced_pid
    assert "containerId" not in shape and "unavailable" not in shape


def test_the_targets_own_tmpdir_and_the_same_pid_in_two_containers(container: Container) -> None:
    other = Container()
    try:
        first = container.start("Sleeper.cs", "120", pid=50, env={"TMPDIR": "/tmp/app"})
        second = other.start("Sleeper.cs", "120", pid=50)
        assert first.namespaced_pid == second.namespaced_pid == 50
        found = {p.pid: p for p in list_processes()}
        assert found[first.pid].socket_path == f"/proc/{first.pid}/root/tmp/app/{first.socket_path.name}"
        assert found[second.pid].socket_path.startswith(f"/proc/{second.pid}/root/tmp/dotnet-diagnostic-50-")
        assert found[first.pid].uid != found[second.pid].uid
    finally:
        other.close()


def test_a_socket_path_longer_than_sun_path_is_still_reached(container: Container) -> None:
    """The runtime's own path fits in 108 bytes; through /proc/<pid>/root the agent's does not."""
    tmpdir = "/tmp/" + "d" * 58
    target = container.start("Sleeper.cs", "120", env={"TMPDIR": tmpdir})
    info = listed(target.pid)
    assert len(info.socket_path.encode()) > 107 and info.unavailable is None
    assert info.managed_entry_point_assembly_name == "Sleeper"


def test_live_metrics_and_a_trace_with_rundown_in_a_namespace(container: Container) -> None:
    app = container.start("DemoApp.cs", "metrics")
    busy = container.start("Busy.cs", "120")
    metrics_target = listed(app.pid)
    pipeline = CountersPipeline(EventMetricsConfiguration.model_validate(SEED_LIVEMETRICS_BODY), 1)
    sink = MemoryCounterSink()
    result = run_live_metrics(
        DiagnosticsClient(metrics_target.socket_path), pipeline, sink, duration=3.5, control=StopControl.new()
    )
    assert result.complete
    assert {m.name for m in sink.metrics} == {"counter1", "counter2", "myHistogram"}
    assert {m.value for m in sink.metrics if m.name == "counter1"} == {3}

    trace = io.BytesIO()
    config = session_configuration(DEFAULT_TRACE_CONFIGURATION)
    result = run_trace(
        DiagnosticsClient(listed(busy.pid).socket_path), config, trace, duration=2, control=StopControl.new()
    )
    assert result.complete and result.stopped
    assert_cpu_trace(trace.getvalue())
    busy.stop()
    assert busy.pid not in {p.pid for p in list_processes()}


def test_another_users_process_in_a_namespace_is_captured_as_root(container: Container) -> None:
    target = container.start("Busy.cs", "120", user=NOBODY)
    assert target.socket_path.stat().st_uid == NOBODY
    info = listed(target.pid)
    assert info.unavailable is None and info.uid != ZERO_UID
    trace = io.BytesIO()
    config = session_configuration(DEFAULT_TRACE_CONFIGURATION)
    run_trace(DiagnosticsClient(info.socket_path), config, trace, duration=2, control=StopControl.new())
    assert_cpu_trace(trace.getvalue())


@pytest.mark.skipif(
    _closed_to_others() is not None,
    reason=f"{_closed_to_others()} is closed to other users: the agent and target run as them here",
)
def test_a_socket_the_agent_may_not_open_is_listed_with_the_reason(dotnet_target: StartTarget) -> None:
    """An agent that is neither root nor the target's user still lists it, and says why not more."""
    with tempfile.TemporaryDirectory(prefix="dnmon-shared-") as shared:
        os.chmod(shared, 0o1777)
        target = dotnet_target("Sleeper.cs", "120", env={"TMPDIR": shared}, user=NOBODY)
        listing = subprocess.run(
            ["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups",
             sys.executable, "-m", "dnmon_agent.cli", "processes", "--local"],
            capture_output=True, text=True, check=False, cwd=ROOT, timeout=60,
            env={**os.environ, "TMPDIR": shared, "HOME": shared},
        )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    entry = {p["pid"]: p for p in json.loads(listing.stdout)}[target.pid]
    assert entry["uid"] == str(ZERO_UID) and entry["name"] == "dotnet"
    assert "permission denied" in entry["unavailable"] and "root" in entry["unavailable"]
    assert "Sleeper.dll 120" in entry["commandLine"]  # /proc/<pid>/cmdline is readable by anyone


def test_exited_and_killed_processes_never_break_a_listing_or_a_capture(container: Container) -> None:
    stays = container.start("Sleeper.cs", "120")
    stopped = container.start("Sleeper.cs", "120")
    killed = container.start("Sleeper.cs", "120")
    before = {p.pid: p for p in list_processes()}
    assert {stays.pid, stopped.pid, killed.pid} <= before.keys()
    stopped.stop()
    killed.kill()
    stale = Path(f"/proc/{container.init_pid}/root/tmp/{killed.socket_path.name}")
    assert stale.exists(), "a killed runtime leaves its socket in the container's /tmp"
    after = {p.pid: p for p in list_processes(known=before)}
    assert stays.pid in after and stopped.pid not in after and killed.pid not in after
    with pytest.raises(IpcConnectionError, match=r"does not exist|refuses connections"):
        DiagnosticsClient(before[killed.pid].socket_path).process_info()
    with pytest.raises(CaptureError, match="could not start the EventPipe session"):
        run_trace(
            DiagnosticsClient(before[killed.pid].socket_path),
            session_configuration(DEFAULT_TRACE_CONFIGURATION),
            io.BytesIO(),
            duration=1,
            control=StopControl.new(),
        )


def test_a_pid_recycled_while_listed_gets_its_own_socket(container: Container) -> None:
    first = container.start("Sleeper.cs", "120", pid=77)
    before = {p.pid: p for p in list_processes()}
    old = before[first.pid]
    first.kill()  # its socket dotnet-diagnostic-77-<key>-socket stays in the container's /tmp
    second = container.start("Sleeper.cs", "120", pid=77)
    assert second.namespaced_pid == 77 and second.socket_path.name != first.socket_path.name
    leftovers = sorted(p.name for p in Path(f"/proc/{second.pid}/root/tmp").glob("dotnet-diagnostic-77-*"))
    assert leftovers == sorted([first.socket_path.name, second.socket_path.name])
    after = {p.pid: p for p in list_processes(known=before)}
    assert first.pid not in after or after[first.pid].uid != old.uid  # the host pid may recur too
    new = after[second.pid]
    assert new.socket_path.endswith(second.socket_path.name) and new.uid != old.uid
    # The cheap scan, run by the change watcher, agrees with the full listing.
    assert SocketScanner().scan()[second.pid].path == Path(new.socket_path)


def test_the_scanner_sees_a_process_that_appears_after_its_first_scan(container: Container) -> None:
    scanner = SocketScanner()
    first = scanner.scan()
    target = container.start("Sleeper.cs", "120")
    assert target.pid not in first
    candidate = scanner.scan()[target.pid]
    assert (candidate.namespaced_pid, candidate.path) == (target.namespaced_pid, target.socket_path)


@pytest.fixture
def docker_cgroup() -> Iterator[tuple[str, Path]]:
    """A cgroup named like Docker's (``/docker/<id>``) in the v1 pids hierarchy, removed after."""
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    parent = Path("/sys/fs/cgroup/pids/docker")
    made_parent = not parent.exists()
    path = parent / container_id
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here ({exc}): the cgroup patterns are unit-tested")
    yield container_id, path
    for leftover in [path, parent] if made_parent else [path]:
        for _ in range(50):
            try:
                leftover.rmdir()
                break
            except OSError:
                threading.Event().wait(0.1)  # the last task leaves the cgroup just after it exits


def test_container_and_pod_are_reported_and_selectable(
    container: Container, docker_cgroup: tuple[str, Path]
) -> None:
    container_id, cgroup_dir = docker_cgroup
    pod_env = {"HOSTNAME": "web-7d9c5-xq2lp", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAMESPACE": "shop"}
    target = container.start("Sleeper.cs", "120", env=pod_env)
    (cgroup_dir / "cgroup.procs").write_text(str(target.pid))
    processes = list_processes()
    info = select_process(processes, pid=target.pid)
    assert (info.container_id, info.container_runtime) == (container_id, "docker")
    assert (info.pod_name, info.pod_namespace) == ("web-7d9c5-xq2lp", "shop")
    shape = info.to_process_info().model_dump(mode="json")
    assert shape["containerId"] == container_id and shape["podName"] == "web-7d9c5-xq2lp"
    assert select_process(processes, name="WEB-7d9c5-xq2lp").pid == target.pid
    assert select_process(processes, name=container_id[:12]).pid == target.pid
    target.stop()
