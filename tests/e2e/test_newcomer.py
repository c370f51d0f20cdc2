"""A newcomer's first minutes: fresh clone, ``make up``, the printed curl examples, Ctrl-C, nothing left.

This builds a fresh virtual environment in a temporary clone, as a newcomer would, so it is the
slowest test; pip's cache keeps it to a few minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from dnmon_agent.diagnostics.nettrace import NettraceDecoder

pytestmark = [pytest.mark.dotnet, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _port_free(port: int) -> bool:
    """Nothing listens there (a bind test would also trip over the closed connections' TIME_WAIT)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_fresh_clone_make_up_curl_and_clean_shutdown(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README's examples (apt-get install curl)")
    clone = tmp_path / "dnmon"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = 52323 if _port_free(52323) else 52399
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DNMON_", "AWS_", "Authentication__"))}
    up = subprocess.Popen(
        ["make", "up", f"UP_ARGS=--port {port}"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    banner: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 900  # pip install of a fresh venv
        for line in up.stdout:
            banner.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        text = "\n".join(banner)
        assert "Ctrl-C stops everything" in text, text[-3000:]
        # keep reading what `dnmon up` prints, so it never blocks on a full pipe and a failure can show it
        threading.Thread(
            target=lambda: banner.extend(line.rstrip("\n") for line in up.stdout or []), daemon=True
        ).start()
        sample = re.search(r"Sample app: pid (\d+)", text)
        assert sample, text
        sample_pid = int(sample.group(1))
        examples = [line.strip() for line in banner if line.strip().startswith("curl ")]
        processes = next(e for e in examples if e.endswith("/processes"))
        listed = subprocess.run(["bash", "-c", processes], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and f'"pid": {sample_pid}' in listed.stdout, listed
        trace = next(e for e in examples if "/trace?" in e)
        work = tmp_path / "work"
        work.mkdir()
        traced = subprocess.run(["bash", "-c", trace], cwd=work, capture_output=True, text=True, timeout=180)
        assert traced.returncode == 0, traced.stderr
        decoder = NettraceDecoder(wants=lambda m: False)
        decoder.feed((work / "app.nettrace").read_bytes())
        assert decoder.ended
        metrics = next(e for e in examples if "/livemetrics?" in e)
        short = metrics.replace("durationSeconds=60", "durationSeconds=6")
        streamed = subprocess.run(["bash", "-c", short], capture_output=True, text=True, timeout=120)
        assert streamed.returncode == 0 and '"name": "counter1"' in streamed.stdout, streamed
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "make up did not stop within 180 s of SIGINT; it printed:\n" + "\n".join(banner[-40:])
            )
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        leftovers = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(str(clone) in part for part in (p.info["cmdline"] or []))
        ]
        if not leftovers and _port_free(port):
            break
        time.sleep(0.5)
    assert not leftovers, f"processes left running: {leftovers}"
    assert _port_free(port)
    assert not psutil.pid_exists(sample_pid) or psutil.Process(sample_pid).status() == psutil.STATUS_ZOMBIE
    tmpdir = Path(os.environ.get("TMPDIR") or "/tmp")
    assert not list(tmpdir.glob(f"dotnet-diagnostic-{sample_pid}-*-socket"))
    assert not list(tmpdir.glob(f"dnmon-up-{port}.lock"))
