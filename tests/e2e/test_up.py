"""End to end: ``dnmon up`` as a subprocess, a plain HTTP client, real .NET targets."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dnmon_agent.local.stack import SEED_LIVEMETRICS_BODY, SEED_TRACE_BODY
from dnmon_core.models import iter_json_seq
from tests.conftest import StartTarget
from tests.dotnet import DotnetTarget
from tests.traces import assert_cpu_trace

pytestmark = pytest.mark.dotnet
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Up:
    process: subprocess.Popen[str]
    port: int
    token: str | None
    banner: list[str]

    def request(
        self, method: str, path: str, body: Any = None, *, token: bool = True, timeout: float = 120
    ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers=headers)
        return conn.getresponse()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        response = self.request(method, path, body)
        return json.loads(response.read() or b"null")

    def wait_for_process(self, pid: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while pid not in {p["pid"] for p in self.json("GET", "/processes")}:
            assert time.monotonic() < deadline, f"pid {pid} never listed"
            time.sleep(0.3)

    def operation(self, location: str) -> dict[str, Any]:
        path = "/operations/" + location.rsplit("/", 1)[1]
        status: dict[str, Any] = self.json("GET", path)
        return status

    def wait_operation(self, location: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.operation(location)
            if status["status"] in states:
                return status
            assert time.monotonic() < deadline, status
            time.sleep(0.3)


def start_up(*args: str, cwd: Path = ROOT) -> Up:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dnmon_agent.cli", "up", "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": os.environ.get("TMPDIR", "/tmp")},
    )
    banner: list[str] = []
    token = None
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        banner.append(line.rstrip("\n"))
        found = re.match(r"Authorization: Bearer (\S+)$", line.strip())
        if found:
            token = found.group(1)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert process.poll() is None, "\n".join(banner)
    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    return Up(process, port, token, banner)


def stop_up(up: Up) -> None:
    up.process.send_signal(signal.SIGINT)
    try:
        up.process.wait(timeout=120)
    finally:
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait()


@contextmanager
def listed_target(up: Up, source: str, *args: str) -> Iterator[DotnetTarget]:
    """A .NET target the stack already lists; stopped on exit (for a module's shared fixtures)."""
    target = DotnetTarget.start(source, *args)
    try:
        up.wait_for_process(target.pid)
        yield target
    finally:
        target.stop()


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    stack = start_up()
    yield stack
    stop_up(stack)
    assert stack.process.returncode == 0


def test_banner_has_a_key_and_both_seed_requests(up: Up) -> None:
    assert up.token and up.token.count(".") == 2
    text = "\n".join(up.banner)
    assert "/livemetrics?pid=" in text and "/trace?pid=" in text and "--no-buffer" in text


def test_seed_livemetrics_request_streams_json_seq(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    up.wait_for_process(target.pid)
    started = time.monotonic()
    response = up.request("POST", f"/livemetrics?pid={target.pid}&durationSeconds=12", SEED_LIVEMETRICS_BODY)
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json-seq"
    assert response.getheader("Transfer-Encoding") == "chunked"
    location = response.getheader("Location")
    assert location and re.fullmatch(rf"http://127\.0\.0\.1:{up.port}/operations/[0-9a-f-]{{36}}", location)
    first = response.read1(1 << 16)
    first_after = time.monotonic() - started
    assert first.startswith(b"\x1e")
    assert first_after < 5 + 3, "the first record comes within one counter interval (5 s) of the start"
    raw = first + response.read()
    frames = raw.split(b"\x1e")
    assert frames[0] == b"" and all(f.endswith(b"\n") and f.count(b"\n") == 1 for f in frames[1:])
    records = list(iter_json_seq(raw))
    names = {r["name"] for r in records}
    assert names == {"counter1", "counter2", "myHistogram"}
    assert all(r["value"] == 3 and r["unit"] == "B" for r in records if r["name"] == "counter1")
    assert all(r["value"] == 126 and r["unit"] == "MB" for r in records if r["name"] == "counter2")
    histogram = [r for r in records if r["name"] == "myHistogram"]
    assert {r["tags"] for r in histogram} == {"Percentile=50", "Percentile=95", "Percentile=99"}
    assert all(r["value"] == 42 and r["counterType"] == "Metric" for r in histogram)
    assert up.wait_operation(location, "Succeeded")["egressProviderName"] is None


def test_seed_trace_request_streams_nettrace(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    response = up.request("POST", f"/trace?pid={target.pid}&durationSeconds=4", SEED_TRACE_BODY)
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert_cpu_trace(response.read())
    up.wait_operation(str(response.getheader("Location")), "Succeeded")


@pytest.mark.parametrize("provider", ["s3", "local"])
def test_egress_provider_202_and_download(up: Up, dotnet_target: StartTarget, provider: str) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    path = f"/trace?pid={target.pid}&durationSeconds=3&egressProvider={provider}&tags=e2e"
    response = up.request("POST", path, SEED_TRACE_BODY)
    assert response.status == 202 and response.read() == b""
    status = up.wait_operation(str(response.getheader("Location")), "Succeeded")
    assert status["egressProviderName"] == provider and status["tags"] == ["e2e"]
    link = up.request("GET", "/operations/" + status["operationId"] + "/artifact")
    body = json.loads(link.read())
    if provider == "s3":
        assert link.status == 302 and link.getheader("Location") == body["url"]
        with urllib.request.urlopen(body["url"]) as download:  # presigned: no Authorization header
            data = download.read()
        assert len(data) == body["size"]
    else:
        data = Path(body["location"]).read_bytes()
    assert_cpu_trace(data)


def test_long_trace_stopped_gracefully_while_streaming(up: Up, dotnet_target: StartTarget) -> None:
    """Ten minutes fit in a streamed response (up to 840 s); a graceful stop ends it early and whole.
    (``-1`` cannot fit in API Gateway's 15 minutes: it answers 202, tests/integration/test_streaming.py.)"""
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    response = up.request("POST", f"/trace?pid={target.pid}&durationSeconds=600", SEED_TRACE_BODY)
    assert response.status == 200
    location = str(response.getheader("Location"))
    disposition = str(response.getheader("Content-Disposition"))
    assert re.fullmatch(
        rf'attachment; filename="\d{{8}}_\d{{6}}_\d{{3}}_{target.pid}\.nettrace"', disposition
    )
    received = bytearray(response.read1(1 << 16))
    stopper = up.request("DELETE", "/operations/" + location.rsplit("/", 1)[1] + "?stop=true")
    assert stopper.status == 202
    received += response.read()
    assert_cpu_trace(bytes(received))
    assert up.wait_operation(location, "Succeeded")["status"] == "Succeeded"


def test_cancel_ends_cancelled(up: Up, dotnet_target: StartTarget) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    up.wait_for_process(target.pid)
    response = up.request(
        "POST", f"/trace?pid={target.pid}&durationSeconds=-1&egressProvider=s3", SEED_TRACE_BODY
    )
    location = str(response.getheader("Location"))
    time.sleep(1)
    assert up.request("DELETE", "/operations/" + location.rsplit("/", 1)[1]).status == 200
    assert up.wait_operation(location, "Cancelled")["isStoppable"] is False


def test_errors_over_http(up: Up, dotnet_target: StartTarget) -> None:
    unauthorized = up.request("GET", "/processes", token=False)
    assert unauthorized.status == 401
    assert unauthorized.getheader("Content-Type") == "application/problem+json"
    bad = up.request("POST", "/trace", {"Providers": [{"Name": "P"}], "BufferSizeInMB": 0})
    assert bad.status == 400 and "bufferSizeInMB" in json.loads(bad.read())["errors"]
    first = dotnet_target("DemoApp.cs", "cpu")
    second = dotnet_target("Sleeper.cs", "600")
    up.wait_for_process(first.pid)
    up.wait_for_process(second.pid)
    ambiguous = up.request("POST", "/trace?durationSeconds=1", SEED_TRACE_BODY)
    assert ambiguous.status == 400
    assert "default process" in json.loads(ambiguous.read())["detail"]
    held = [
        up.request("POST", f"/trace?pid={first.pid}&durationSeconds=-1&egressProvider=s3", SEED_TRACE_BODY)
        for _ in range(3)
    ]
    assert [r.status for r in held] == [202, 202, 202]
    over = up.request("POST", f"/trace?pid={first.pid}&durationSeconds=-1&egressProvider=s3", SEED_TRACE_BODY)
    assert over.status == 429 and json.loads(over.read())["detail"] == "Rate limit reached."
    for response in held:
        assert (
            up.request(
                "DELETE", "/operations/" + str(response.getheader("Location")).rsplit("/", 1)[1]
            ).status
            == 200
        )


def test_second_up_on_the_same_port_says_so(up: Up) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dnmon_agent.cli", "up", "--port", str(up.port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert f"already running on port {up.port}" in result.stderr


def test_no_auth_says_so_loudly() -> None:
    stack = start_up("--no-auth")
    try:
        assert stack.token is None
        assert any("authentication is OFF" in line for line in stack.banner)
        assert stack.request("GET", "/info", token=False).status == 200
    finally:
        stop_up(stack)
