"""`dnmon processes` and `dnmon capture` as a user runs them, against real .NET 8 targets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnmon_agent.diagnostics.events import EndOfStream, Event, NettraceItem
from dnmon_agent.diagnostics.nettrace import NettraceDecoder
from dnmon_core.models import iter_json_seq
from tests.conftest import StartTarget
from tests.traces import decode

pytestmark = pytest.mark.dotnet

SEED_COUNTERS_BODY = {
    "includeDefaultProviders": False,
    "providers": [{"providerName": "CustomProvider", "counterNames": ["counter1", "counter2", "requests"]}],
    "meters": [{"meterName": "CustomMeter"}],
}


def dnmon(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "dnmon_agent.cli", *args], capture_output=True, timeout=timeout, **kwargs
    )


def trace_in_background(pid: int, duration: str, out: Path) -> subprocess.Popen[bytes]:
    """``dnmon capture trace`` running, once the first kilobyte has reached ``out``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnmon_agent.cli", "capture", "trace", "--pid", str(pid),
         "--duration", duration, "-o", str(out)],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while (not out.exists() or out.stat().st_size < 1000) and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc


def decode_file(path: Path) -> list[NettraceItem]:
    return decode(path.read_bytes())


def test_processes_local_lists_the_target(dotnet_target: StartTarget) -> None:
    target = dotnet_target("Sleeper.cs", "60")
    result = dnmon("processes", "--local")
    assert result.returncode == 0, result.stderr
    listed = {p["pid"]: p for p in json.loads(result.stdout)}
    entry = listed[target.pid]
    assert set(entry) == {
        "pid", "uid", "name", "commandLine", "operatingSystem", "processArchitecture",
        "managedEntryPointAssemblyName",
    }  # fmt: skip
    assert entry["managedEntryPointAssemblyName"] == "Sleeper"


def test_capture_metrics_custom_providers_and_meter(dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "metrics")
    body = tmp_path / "body.json"
    body.write_text(json.dumps(SEED_COUNTERS_BODY))
    result = dnmon("capture", "metrics", "--pid", str(target.pid), "--duration", "5", "--interval", "1",
                   "--body", str(body))  # fmt: skip
    assert result.returncode == 0, result.stderr
    raw = result.stdout
    assert raw.startswith(b"\x1e") and raw.endswith(b"\n")
    for frame in raw.split(b"\x1e")[1:]:
        assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    records = list(iter_json_seq(raw))
    by_name: dict[str, list[dict[str, object]]] = {}
    for record in records:
        by_name.setdefault(str(record["name"]), []).append(record)
    assert set(by_name) >= {
        "counter1",
        "counter2",
        "requests",
        "myCounter",
        "myHistogram",
        "myGauge",
        "myUpDown",
    }

    counter1 = by_name["counter1"][-1]
    assert (counter1["provider"], counter1["displayName"], counter1["unit"]) == (
        "CustomProvider",
        "Counter 1",
        "B",
    )
    assert counter1["counterType"] == "Metric" and counter1["value"] == 3
    assert counter1["metadata"] == {"MyKey 1": "MyValue 1", "MyKey 2": "MyValue 2"}
    assert all(r["value"] == 126 and r["unit"] == "MB" for r in by_name["counter2"])
    requests = by_name["requests"]
    assert all(r["counterType"] == "Rate" for r in requests)
    assert all(35 <= float(r["value"]) <= 65 for r in requests[1:]), requests  # 5 every 100 ms

    assert all(r["provider"] == "CustomMeter" for r in by_name["myCounter"])
    assert by_name["myCounter"][-1]["counterType"] == "Rate"
    assert 14 <= float(by_name["myCounter"][-1]["value"]) <= 26  # 2 every 100 ms, 1 s interval
    assert by_name["myCounter"][-1]["unit"] == "{requests}"
    histogram = by_name["myHistogram"][-3:]
    assert [r["tags"] for r in histogram] == ["Percentile=50", "Percentile=95", "Percentile=99"]
    assert all(r["value"] == 42 and r["counterType"] == "Metric" and r["unit"] == "ms" for r in histogram)
    assert all(r["value"] == 21.5 and r["counterType"] == "Metric" for r in by_name["myGauge"])
    updown = [float(r["value"]) for r in by_name["myUpDown"]]
    assert updown == sorted(updown) and updown[-1] > updown[0]
    assert {r["tags"] for r in by_name.get("taggedCounter", [])} <= {"route=/a"}
    # observable instruments: the counter's total grows by 7 per observation, the up-down stays at 5
    assert {(r["counterType"], r["value"]) for r in by_name["myObservableCounter"]} == {("Rate", 7)}
    assert {(r["counterType"], r["value"], r["unit"]) for r in by_name["myObservableUpDown"]} == {
        ("Metric", 5, "{connections}")
    }
    assert "counter3" not in by_name and "polled" not in by_name  # counterNames filter


def test_capture_trace_cpu_profile_stops_gracefully(dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    out = tmp_path / "cpu.nettrace"
    result = dnmon("capture", "trace", "--pid", str(target.pid), "--duration", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    items = decode_file(out)
    assert isinstance(items[-1], EndOfStream)
    events = [i for i in items if isinstance(i, Event)]
    providers = {e.metadata.provider_name for e in events}
    assert "Microsoft-DotNETCore-SampleProfiler" in providers
    assert "Microsoft-Windows-DotNETRuntimeRundown" in providers  # rundown came after StopTracing
    assert sum(e.metadata.provider_name == "Microsoft-DotNETCore-SampleProfiler" for e in events) > 100


def test_sigint_ends_an_indefinite_trace_with_a_valid_file(
    dotnet_target: StartTarget, tmp_path: Path
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    out = tmp_path / "forever.nettrace"
    proc = trace_in_background(target.pid, "-1", out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    items = decode_file(out)
    assert isinstance(items[-1], EndOfStream)
    assert any(isinstance(i, Event) and i.metadata.provider_name.endswith("Rundown") for i in items)


def test_target_killed_mid_capture_keeps_the_bytes_and_fails(
    dotnet_target: StartTarget, tmp_path: Path
) -> None:
    target = dotnet_target("DemoApp.cs", "cpu")
    out = tmp_path / "cut.nettrace"
    proc = trace_in_background(target.pid, "60", out)
    target.kill()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    message = err.decode().strip().splitlines()
    assert len(message) == 1 and "TargetExited" in message[0] and "kept" in message[0]
    assert out.stat().st_size >= 1000
    decoder = NettraceDecoder()
    decoder.feed(out.read_bytes())  # everything received decodes; only the end is missing
    assert not decoder.ended


def test_errors_are_one_line_and_non_zero(dotnet_target: StartTarget, tmp_path: Path) -> None:
    missing = dnmon("capture", "metrics", "--pid", str(2**22 + 7), "--duration", "1")
    assert missing.returncode != 0
    assert len(missing.stderr.decode().strip().splitlines()) == 1
    assert b"no .NET process matches pid=" in missing.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Providers": [{"Name": "X", "EventLevel": "Loud"}], "BufferSizeInMB": 0}))
    result = dnmon("capture", "trace", "--body", str(bad), "-o", str(tmp_path / "x.nettrace"))
    assert result.returncode == 2
    line = result.stderr.decode().strip()
    assert "\n" not in line and "providers[0].eventLevel" in line and "bufferSizeInMB" in line

    isolated = {**os.environ, "TMPDIR": str(tmp_path), "DNMON_DISCOVERY": "tmpdir"}
    dotnet_target("Sleeper.cs", "60", env={"TMPDIR": str(tmp_path)})
    dotnet_target("Sleeper.cs", "60", env={"TMPDIR": str(tmp_path)})
    several = dnmon("capture", "metrics", "--duration", "1", env=isolated)
    assert several.returncode == 1 and b"no default process: 2 .NET processes" in several.stderr


def test_netcore31_counters_and_trace(dotnet_target: StartTarget, tmp_path: Path) -> None:
    target = dotnet_target("DemoApp.cs", "metrics", runtime="netcore31", ready_line=None)
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps({"includeDefaultProviders": False, "providers": [{"providerName": "CustomProvider"}]})
    )
    result = dnmon("capture", "metrics", "--pid", str(target.pid), "--duration", "4", "--interval", "1",
                   "--body", str(body))  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = list(iter_json_seq(result.stdout))
    counter1 = [r["value"] for r in records if r["name"] == "counter1"]
    assert len(counter1) >= 2 and set(counter1) == {3}  # no empty echo samples
    assert {r["value"] for r in records if r["name"] == "polled"} == {42.5}
    out = tmp_path / "31.nettrace"
    traced = dnmon("capture", "trace", "--pid", str(target.pid), "--duration", "2", "-o", str(out))
    assert traced.returncode == 0, traced.stderr
    items = decode_file(out)
    assert isinstance(items[-1], EndOfStream)
    assert any(isinstance(i, Event) and i.metadata.provider_name.endswith("Rundown") for i in items)


def test_generatekey_prints_a_key_the_authorizer_accepts() -> None:
    from dnmon_core.apikey import MonitorApiKeyConfiguration, verify

    result = dnmon("generatekey", "-o", "MachineJson", "--subject", "runbook")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    token = printed["AuthorizationHeader"].removeprefix("Bearer ")
    settings = printed["Authentication"]["MonitorApiKey"]
    assert (
        verify(token, MonitorApiKeyConfiguration(settings["Subject"], settings["PublicKey"])).subject
        == "runbook"
    )
    assert dnmon("generatekey", "-o", "Yaml").returncode == 2
