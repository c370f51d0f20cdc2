"""Containers for the tests without a container runtime: ``unshare`` PID + mount namespaces.

A ``Container`` is a small Python init (pid 1 of a new PID namespace, with its own /proc and a
private tmpfs on /tmp) that starts real .NET targets on request, as a container runtime would.
From the host each target has a host pid, a namespaced pid (2, 3, … inside) and a socket that
only ``/proc/<host pid>/root/tmp`` reaches. The init can also hand out a chosen namespaced pid
(``ns_last_pid``), to recycle a pid while a dead process's socket is still there.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psutil

from dnmon_agent.diagnostics import procfs
from dnmon_agent.diagnostics.errors import IpcError
from dnmon_agent.diagnostics.transport import IpcConnection
from dnmon_agent.local import dotnet
from tests.dotnet import CACHE, build_app

INIT = r"""
import json, os, subprocess, sys, threading
# The container's own /tmp. What the targets need from the host's /tmp (a checkout there, with
# its .venv and compiled apps) is bound back in through /mnt, which this namespace alone sees.
keep = json.loads(sys.argv[1])
if keep:
    os.makedirs("/mnt", exist_ok=True)
    subprocess.run(["mount", "--bind", "/tmp", "/mnt"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "dnmon-test", "/tmp"], check=True)
for path in keep:
    if any(path.startswith(other + "/") for other in keep):
        continue  # inside another kept directory, which brings it along
    source = os.path.join("/mnt", os.path.relpath(path, "/tmp"))
    os.makedirs(path, exist_ok=True)
    # Entry by entry into a 0755 directory: the kept one itself may be 0700 (``mktemp -d``), and
    # targets run as other users must still reach the runtime and the apps below it.
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(path, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
            continue
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "a").close()
        subprocess.run(["mount", "--bind", src, dst], check=True)
lock = threading.Lock()
def say(**message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
def follow(child):
    for raw in child.stdout:
        say(pid=child.pid, line=raw.decode(errors="replace").rstrip())
    say(pid=child.pid, exited=child.wait())
children = []
say(ready=True)
for request in sys.stdin:
    request = json.loads(request)
    if request.get("tmpdir"):
        os.makedirs(request["tmpdir"], exist_ok=True)
        os.chmod(request["tmpdir"], 0o1777)
    if request.get("pid"):
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(request["pid"] - 1))
    child = subprocess.Popen(request["argv"], env=request["env"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    children.append(child)
    threading.Thread(target=follow, args=(child,), daemon=True).start()
    say(started=child.pid)
for child in children:
    if child.poll() is None:
        child.terminate()
for child in children:
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
"""


@cache
def unshare_unavailable() -> str | None:
    """Why namespaced targets cannot run here (the tests skip with it), or None."""
    if os.geteuid() != 0:
        return "needs root: PID and mount namespaces (unshare) and the agent's /proc/<pid>/root access"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "unshare/setpriv (util-linux) not installed"
    probe = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "--mount", "sh", "-c", "mount -t tmpfs t /tmp"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare --pid --mount is not permitted here: {probe.stderr.strip()}"
    return None


@dataclass
class ContainerTarget:
    """A .NET process inside a Container: ``pid`` is its host pid."""

    container: Container
    pid: int
    namespaced_pid: int
    socket_path: Path  # reached from the host through /proc/<pid>/root
    log: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL, as a crash: the socket stays behind in the container's /tmp."""
        os.kill(self.pid, signal.SIGKILL)
        self.container.wait_exit(self.namespaced_pid)

    def stop(self) -> None:
        """SIGTERM: the runtime unlinks its socket on the way out."""
        os.kill(self.pid, signal.SIGTERM)
        self.container.wait_exit(self.namespaced_pid)


def _under_tmp() -> list[str]:
    """This checkout and interpreter, when they live under /tmp (a CI clone may): the private /tmp
    would hide them from the targets."""
    # The container binds a kept directory's entries as they are when it starts: the app cache,
    # filled later, must already be one of them.
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = {Path(__file__).resolve().parents[1], Path(sys.prefix).resolve()}
    tmp = Path("/tmp").resolve()
    return sorted(str(p) for p in wanted if p == tmp or tmp in p.parents)


class Container:
    """One PID + mount namespace with a private /tmp, and the .NET targets started in it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                "unshare",
                "--fork",
                "--pid",
                "--mount-proc",
                "--mount",
                sys.executable,
                "-c",
                INIT,
                json.dumps(_under_tmp()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._logs: dict[int, list[str]] = {}
        self._exited: dict[int, threading.Event] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready")
        self.init_pid = psutil.Process(self.process.pid).children()[0].pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "line" in message:
                self._logs.setdefault(message["pid"], []).append(message["line"])
            elif "exited" in message:
                self._exited.setdefault(message["pid"], threading.Event()).set()
            else:
                self._messages.put(message)

    def _expect(self, key: str, timeout: float = 30) -> Any:
        try:
            return self._messages.get(timeout=timeout)[key]
        except queue.Empty:
            raise TimeoutError(f"the container init did not answer {key!r} within {timeout}s") from None

    def start(
        self,
        source: str,
        *args: str,
        env: dict[str, str] | None = None,
        user: int | None = None,
        pid: int | None = None,
        timeout: float = 30,
    ) -> ContainerTarget:
        """Start ``source`` on .NET 8 inside; wait for its "ready" line and its socket."""
        command, full_env = dotnet.launch(build_app(source), *args)
        target_env = {k: full_env[k] for k in ("PATH", "DOTNET_ROOT") if k in full_env}
        target_env.update({"HOME": "/tmp", "DOTNET_CLI_TELEMETRY_OPTOUT": "1", **(env or {})})
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        tmpdir = target_env.get("TMPDIR") or "/tmp"
        assert self.process.stdin is not None
        request = {"argv": command, "env": target_env, "pid": pid, "tmpdir": target_env.get("TMPDIR")}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        nspid = int(self._expect("started"))
        self._exited[nspid] = threading.Event()
        host_pid = self.host_pid(nspid)
        deadline = time.monotonic() + timeout
        directory = Path(f"/proc/{host_pid}/root{tmpdir}")
        while time.monotonic() < deadline:
            log = self._logs.get(nspid, [])
            if self._exited[nspid].is_set():
                raise RuntimeError(f"{source} exited before it was ready:\n" + "\n".join(log))
            sockets = sorted(directory.glob(f"dotnet-diagnostic-{nspid}-*-socket"))
            if sockets and "ready" in log and _accepts(sockets[-1]):
                return ContainerTarget(self, host_pid, nspid, sockets[-1], log)
            time.sleep(0.05)
        raise TimeoutError(f"{source} did not open its diagnostics socket within {timeout}s")

    def host_pid(self, nspid: int) -> int:
        """The host pid of the process that is ``nspid`` inside this container."""
        for child in psutil.Process(self.init_pid).children(recursive=True):
            pids = procfs.namespaced_pids(child.pid)
            if pids and pids[-1] == nspid:
                return child.pid
        raise LookupError(f"no process {nspid} in the container")

    def wait_exit(self, nspid: int, timeout: float = 15) -> None:
        if not self._exited.setdefault(nspid, threading.Event()).wait(timeout):
            raise TimeoutError(f"process {nspid} in the container did not exit within {timeout}s")

    def close(self) -> None:
        """End every target (the init terminates them) and the namespace with it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.init_pid, signal.SIGKILL)  # pid 1 gone: the kernel kills the namespace
            self.process.wait(timeout=10)


def _accepts(path: Path) -> bool:
    """Through the agent's transport, which also reaches paths longer than ``sun_path``."""
    try:
        IpcConnection(path, "probe", connect_timeout=1.0).close()
    except IpcError:
        return False
    return True
