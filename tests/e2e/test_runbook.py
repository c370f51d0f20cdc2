"""The runbook client (`dnmon ps|metrics|trace|ops`) as a subprocess against `dnmon up` and real .NET targets.

Every run checks what a runbook relies on: the documented exit code, no traceback, and the token
never echoed. Terminal behaviour (the live table) is read through a real pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from dnmon_core.models import iter_json_seq
from tests.conftest import StartTarget
from tests.e2e.test_up import SEED_TRACE_BODY, Up, start_up, stop_up
from tests.traces import assert_cpu_trace

pytestmark = pytest.mark.dotnet
ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
OPERATION = re.compile(r"operation ([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    stack = start_up("--interval", "1", "--artifacts", str(tmp_path_factory.mktemp("artifacts")))
    yield stack
    stop_up(stack)


def client_env(up: Up, config_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNMON_")}
    env.update(
        {
            "DNMON_URL": f"http://127.0.0.1:{up.port}",
            "DNMON_TOKEN": str(up.token),
            "XDG_CONFIG_HOME": str(config_home),  # never the user's own profiles
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dnmon_agent.cli", *args]


def checked(up: Up, result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    """What every run must show: the exit code, no traceback, and never the token."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    assert str(up.token) not in output
    return result


def dnmon(up: Up, tmp_path: Path, *args: str, code: int = 0, timeout: float = 120, **env: str):
    result = subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
        env=client_env(up, tmp_path, **env),
    )  # fmt: skip
    return checked(up, result, code)


def background(
    up: Up, tmp_path: Path, *args: str, stderr: IO[str] | int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """The client running; ``stderr`` may be a log file, to read its progress while it runs."""
    return subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path,
        env=client_env(up, tmp_path),
    )  # fmt: skip


def finish(
    up: Up, process: subprocess.Popen[str], code: int, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Its end; with ``log``, its stderr is that file's text."""
    stdout, stderr = process.communicate(timeout=120)
    if log is not None:
        stderr = log.read_text()
    return checked(up, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), code)


def wait_for_file(path: Path, size: int = 1000, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        assert time.monotonic() < deadline, f"{path} never reached {size} bytes"
        time.sleep(0.2)


def operation_ids(up: Up, tmp_path: Path, tags: str) -> list[str]:
    listed = json.loads(dnmon(up, tmp_path, "ops", "list", "--tags", tags, "--json").stdout)
    return [o["operationId"] for o in listed]


def wait_for_operation(up: Up, tmp_path: Path, tags: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (ids := operation_ids(up, tmp_path, tags)):
        assert time.monotonic() < deadline, f"no operation tagged {tags}"
        time.sleep(0.3)
    return ids[0]


def status_of(up: Up, tmp_path: Path, operation_id: str) -> str:
    shown = json.loads(dnmon(up, tmp_path, "ops", "show", operation_id, "--json").stdout)
    assert shown["operationId"] == operation_id
    return str(shown["status"])


# --- ps ------------------------------------------------------------------------------------------


def test_ps_table_and_json(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    listed = json.loads(dnmon(up, tmp_path, "ps", "--json").stdout)
    entry = next(p for p in listed if p["pid"] == target.pid)
    assert entry["name"] == "dotnet" and uuid.UUID(entry["uid"]) and entry["host"]
    table = dnmon(up, tmp_path, "ps").stdout
    assert "PID" in table and re.search(rf"\s{target.pid}\s+dotnet\s+{entry['uid']}", table), table
    assert json.loads(dnmon(up, tmp_path, "ps", "--host", "no-such-host", "--json").stdout) == []


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_json_seq_writes_the_records(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    result = dnmon(up, tmp_path, "metrics", "--pid", str(target.pid), "--duration", "3",
                   "--meter", "CustomMeter:myUpDown", "--provider", "CustomProvider:counter2",
                   "--json-seq")  # fmt: skip
    records = list(iter_json_seq(result.stdout.encode()))
    assert {r["name"] for r in records} == {"myUpDown", "counter2"}
    assert all(r["value"] == 126 for r in records if r["name"] == "counter2")
    assert OPERATION.search(result.stderr)


def test_metrics_until_ctrl_c_stops_gracefully(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    process = background(up, tmp_path, "metrics", "--pid", str(target.pid), "--duration", "-1",
                         "--meter", "CustomMeter:myGauge", "--json-seq")  # fmt: skip
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    assert ready, "no record within 30 s"
    process.send_signal(signal.SIGINT)
    result = finish(up, process, 0)
    records = list(iter_json_seq(result.stdout.encode()))
    assert records and {r["name"] for r in records} == {"myGauge"}
    found = OPERATION.search(result.stderr)
    assert found and status_of(up, tmp_path, found.group(1)) == "Succeeded"


def test_metrics_table_off_a_terminal_prints_each_interval(
    up: Up, dotnet_target: StartTarget, tmp_path: Path
) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"includeDefaultProviders": False, "meters": [{"meterName": "CustomMeter"}]}))
    out = dnmon(up, tmp_path, "metrics", "--name", "dotnet", "--pid", str(target.pid), code=2).stderr
    assert "not allowed with argument" in out  # one selector only, as the API
    table = dnmon(
        up, tmp_path, "metrics", "--pid", str(target.pid), "--duration", "4", "--body", str(body)
    ).stdout
    values = [int(v.replace(",", "")) for v in re.findall(r"│ myUpDown\s*│[^│]*│\s*([\d,]+) │", table)]
    assert len(values) >= 3 and values == sorted(values) and values[-1] > values[0], table


def _read_pty(fd: int, process: subprocess.Popen[bytes], timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_metrics_live_view_changes_across_intervals(
    up: Up, dotnet_target: StartTarget, tmp_path: Path
) -> None:
    """On a terminal the table is redrawn in place each interval; its values and history move."""
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = client_env(up, tmp_path, TERM="xterm-256color")
    env.pop("COLUMNS")
    process = subprocess.Popen(
        command("metrics", "--pid", str(target.pid), "--duration", "5",
                "--meter", "CustomMeter:myUpDown,myGauge"),
        stdin=follower, stdout=follower, stderr=follower, env=env, cwd=tmp_path,
    )  # fmt: skip
    os.close(follower)
    try:
        screen = _read_pty(leader, process, timeout=60)
        assert process.wait(timeout=30) == 0, screen
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    assert "\x1b[1A\x1b[2K" in screen, "on a terminal the table is redrawn in place (cursor up, erase)"
    assert "Traceback" not in screen and str(up.token) not in screen
    text = ANSI.sub("", screen)
    rows = re.findall(r"│ myUpDown\s*│[^│]*│\s*([\d,]+) │[^│]*│ (\S+)\s*│", text)
    values = [int(v.replace(",", "")) for v, _ in rows]
    histories = [h for _, h in rows]
    assert len(set(values)) >= 3 and values == sorted(values), text
    assert len(histories[-1]) > len(histories[0]), "each interval adds to the sparkline"


# --- trace ---------------------------------------------------------------------------------------


def test_trace_ctrl_c_stops_gracefully_with_rundown(
    up: Up, dotnet_target: StartTarget, tmp_path: Path
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    out = tmp_path / "cpu.nettrace"
    process = background(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "600",
                         "--profile", "Cpu", "-o", str(out))  # fmt: skip
    wait_for_file(out.with_name("cpu.nettrace.part"))
    assert not out.exists(), "the file appears only whole"
    process.send_signal(signal.SIGINT)
    result = finish(up, process, 0)
    assert "Stopping" in result.stderr and f"wrote {out.stat().st_size} bytes" in result.stderr
    assert_cpu_trace(out.read_bytes())
    found = OPERATION.search(result.stderr)
    assert found and status_of(up, tmp_path, found.group(1)) == "Succeeded"


def test_endless_trace_is_kept_and_downloaded_after_ctrl_c(
    up: Up, dotnet_target: StartTarget, tmp_path: Path
) -> None:
    """``-1`` cannot fit in a streamed response: the API answers 202, the trace is kept; Ctrl-C
    stops it gracefully and the client downloads the whole file."""
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    out = tmp_path / "endless.nettrace"
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        process = background(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "-1",
                             "--profile", "Cpu", "-o", str(out), stderr=stderr)  # fmt: skip
        deadline = time.monotonic() + 30
        while not OPERATION.search(log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        found = OPERATION.search(log.read_text())
        assert found
        while status_of(up, tmp_path, found.group(1)) != "Running":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert not out.with_name("endless.nettrace.part").exists()  # nothing streams for -1
        process.send_signal(signal.SIGINT)
        result = finish(up, process, 0, log)
    assert f"wrote {out.stat().st_size} bytes" in result.stderr
    assert_cpu_trace(out.read_bytes())


def test_trace_second_ctrl_c_cancels(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    out = tmp_path / "cancelled.nettrace"
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        process = background(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "600",
                             "--profile", "Cpu", "-o", str(out), stderr=stderr)  # fmt: skip
        wait_for_file(out.with_name("cancelled.nettrace.part"))
        process.send_signal(signal.SIGINT)
        # The second Ctrl-C once the client shows the stop under way: the stop reaches the agent
        # within milliseconds as a control message, so waiting longer could find the trace whole.
        deadline = time.monotonic() + 30
        while "Stopping" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        result = finish(up, process, 130, log)
    assert "cancelled" in result.stderr
    assert not out.exists() and not out.with_name("cancelled.nettrace.part").exists()
    found = OPERATION.search(result.stderr)
    assert found
    deadline = time.monotonic() + 30
    while (state := status_of(up, tmp_path, found.group(1))) != "Cancelled":
        assert time.monotonic() < deadline, state
        time.sleep(0.3)


def test_trace_egress_followed_then_ops_download_resumes(
    up: Up, dotnet_target: StartTarget, tmp_path: Path
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    out = tmp_path / "egressed.nettrace"
    result = dnmon(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "2", "--profile", "Cpu",
                   "--egress", "s3", "--tags", "rb-egress,second", "-o", str(out))  # fmt: skip
    assert "Downloading" in result.stderr
    data = out.read_bytes()
    assert_cpu_trace(data)
    [operation_id] = operation_ids(up, tmp_path, "rb-egress")
    listed = json.loads(dnmon(up, tmp_path, "ops", "list", "--pid", str(target.pid), "--json").stdout)
    assert operation_id in {o["operationId"] for o in listed}
    table = dnmon(up, tmp_path, "ops", "list", "--tags", "rb-egress").stdout
    assert operation_id in table and "Succeeded" in table and "s3" in table
    shown = dnmon(up, tmp_path, "ops", "show", operation_id).stdout
    assert "Succeeded" in shown and "rb-egress,second" in shown

    again = tmp_path / "again.nettrace"
    dnmon(up, tmp_path, "ops", "download", operation_id, "-o", str(again))
    assert again.read_bytes() == data
    # A download cut half-way resumes with a Range request from where its part file ends.
    resumed = tmp_path / "resumed.nettrace"
    resumed.with_name(f"resumed.nettrace.{operation_id[:8]}.part").write_bytes(data[: len(data) // 2])
    result = dnmon(up, tmp_path, "ops", "download", operation_id, "-o", str(resumed))
    assert "resuming" in result.stderr and f"at {len(data) // 2} bytes" in result.stderr
    assert resumed.read_bytes() == data
    # Without -o the artifact keeps its own name.
    dnmon(up, tmp_path, "ops", "download", operation_id)
    assert [p.read_bytes() == data for p in tmp_path.glob(f"*_{target.pid}.nettrace")] == [True]


def test_ops_stop_and_cancel_a_followed_capture(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    stopped = background(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "-1",
                         "--profile", "Cpu", "--egress", "local", "--tags", "rb-stop")  # fmt: skip
    operation_id = wait_for_operation(up, tmp_path, "rb-stop")
    time.sleep(1)
    result = dnmon(up, tmp_path, "ops", "stop", operation_id, "--wait")
    assert "Succeeded" in result.stderr
    assert "kept by egress provider 'local'" in finish(up, stopped, 0).stderr
    local_copy = tmp_path / "local.nettrace"
    dnmon(up, tmp_path, "ops", "download", operation_id, "-o", str(local_copy))
    assert_cpu_trace(local_copy.read_bytes())

    cancelled = background(up, tmp_path, "trace", "--pid", str(target.pid), "--duration", "-1",
                           "--egress", "s3", "--tags", "rb-cancel",
                           "-o", str(tmp_path / "never.nettrace"))  # fmt: skip
    operation_id = wait_for_operation(up, tmp_path, "rb-cancel")
    dnmon(up, tmp_path, "ops", "cancel", operation_id)
    assert "was cancelled" in finish(up, cancelled, 1).stderr
    assert status_of(up, tmp_path, operation_id) == "Cancelled"
    again = dnmon(up, tmp_path, "ops", "stop", operation_id, code=1).stderr
    assert "cannot be stopped gracefully (it is Cancelled)" in again


# --- failures a runbook branches on --------------------------------------------------------------


def test_exit_codes_and_problem_details(up: Up, dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    pid = str(target.pid)
    # auth
    assert "Authentication is required" in dnmon(up, tmp_path, "ps", code=3, DNMON_TOKEN="").stderr
    assert "not accepted" in dnmon(up, tmp_path, "ps", "--token", "x.y.z", code=3).stderr
    # not found
    assert "not found" in dnmon(up, tmp_path, "ops", "show", str(uuid.uuid4()), code=4).stderr
    missing = dnmon(up, tmp_path, "trace", "--name", "NoSuchApp", "--duration", "1", "-o", "x", code=4).stderr
    assert "Unable to discover a target process." in missing
    nowhere = dnmon(up, tmp_path, "trace", "--pid", pid, "--host", "nowhere", "-o", "x", code=4).stderr
    assert "host: No live dnmon agent runs on host 'nowhere'" in nowhere
    # usage: flags, then the API's validation problem with its field errors
    assert "-o FILE is required" in dnmon(up, tmp_path, "trace", "--pid", pid, code=2).stderr
    assert "not an operation id (GUID)" in dnmon(up, tmp_path, "ops", "show", "nope", code=2).stderr
    body = tmp_path / "bad.json"
    body.write_text(json.dumps({"Providers": [{"Name": "P"}], "BufferSizeInMB": 0}))
    invalid = dnmon(up, tmp_path, "trace", "--pid", pid, "--body", str(body), "-o", "x", code=2).stderr
    assert "(HTTP 400)" in invalid and "bufferSizeInMB: " in invalid
    egress = dnmon(up, tmp_path, "trace", "--pid", pid, "--egress", "nope", code=4).stderr
    assert "egressProvider: Egress provider 'nope' does not exist" in egress
    body.write_text("{not json")
    assert "is not JSON" in dnmon(up, tmp_path, "metrics", "--pid", pid, "--body", str(body), code=2).stderr
    # network
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    refused = dnmon(up, tmp_path, "--url", f"http://127.0.0.1:{closed}", "ps", code=6).stderr
    assert "cannot reach the API" in refused
    # throttled: three traces hold every slot
    held = [
        up.request("POST", f"/trace?pid={pid}&durationSeconds=-1&egressProvider=s3", SEED_TRACE_BODY)
        for _ in range(3)
    ]
    try:
        assert [r.status for r in held] == [202, 202, 202]
        over = dnmon(up, tmp_path, "trace", "--pid", pid, "--duration", "2", "-o", "x", code=5).stderr
        assert "Rate limit reached. (HTTP 429)" in over
    finally:
        for response in held:
            dnmon(up, tmp_path, "ops", "cancel", str(response.getheader("Location")).rsplit("/", 1)[1])


def test_profiles_from_the_config_file(up: Up, tmp_path: Path) -> None:
    folder = tmp_path / "dnmon"
    folder.mkdir()
    (folder / "config.toml").write_text(
        f'default = "lab"\n\n[profiles.lab]\nurl = "http://127.0.0.1:{up.port}"\ntoken_env = "LAB_TOKEN"\n'
        '\n[profiles.down]\nurl = "http://127.0.0.1:9"\n'
    )
    unset = {"DNMON_URL": "", "DNMON_TOKEN": "", "LAB_TOKEN": str(up.token)}
    assert isinstance(
        json.loads(dnmon(up, tmp_path, "--profile", "lab", "ps", "--json", **unset).stdout), list
    )
    assert isinstance(json.loads(dnmon(up, tmp_path, "ps", "--json", **unset).stdout), list)  # the default
    dnmon(up, tmp_path, "ps", code=6, **unset, DNMON_PROFILE="down")
    assert "no profile 'prod'" in dnmon(up, tmp_path, "--profile", "prod", "ps", code=2, **unset).stderr
