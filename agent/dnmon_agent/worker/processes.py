"""The host's .NET processes, watched cheaply and published only when they change.

Each scan lists the diagnostics sockets (a directory read and a pid check, no IPC); only when that
set changes are the new processes asked about themselves and the registry rewritten. A process
that appears is therefore listed by the API about a scan period after its runtime opens its
socket, while an idle host writes nothing but a small liveness item every few minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnmon_core.models import ProcessInfo
from dnmon_core.store import StoreError

from ..diagnostics.discovery import DotnetProcess, find_sockets, list_processes
from .control_plane import ControlPlane

log = logging.getLogger("dnmon.agent.processes")

RETRY_SECONDS = 10.0  # a runtime that did not answer is asked again after this long


@dataclass
class ProcessWatcher:
    control: ControlPlane
    clock: Callable[[], float] = time.monotonic
    known: dict[int, DotnetProcess] = field(default_factory=dict)
    _sockets: frozenset[tuple[int, str]] | None = None
    _published: list[ProcessInfo] | None = None
    _retry_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def processes(self) -> list[DotnetProcess]:
        with self._lock:
            return list(self.known.values())

    def scan(self, *, force: bool = False) -> bool:
        """Look for changes; publish them. True when the registry was written."""
        sockets = frozenset((pid, str(path)) for pid, path in find_sockets().items())
        unchanged = sockets == self._sockets and self.clock() < self._retry_at
        if unchanged and not force and self._published is not None:
            return False
        found = {p.pid: p for p in list_processes(known=self.known)}
        with self._lock:
            self.known = found
        self._sockets = sockets
        # A socket whose runtime did not answer is retried later, not every second.
        answered = {(p.pid, p.socket_path) for p in found.values()}
        self._retry_at = self.clock() + RETRY_SECONDS if answered != set(sockets) else float("inf")
        infos = [p.to_process_info() for p in found.values()]
        if self._published is not None and _same(infos, self._published) and not force:
            return False
        self.control.publish_processes(infos)
        self._published = infos  # only once written: a failed write is retried at the next scan
        return True

    def run(self, stop: threading.Event, scan_seconds: float, liveness_seconds: float) -> None:
        """Scan every ``scan_seconds``; say it is alive every ``liveness_seconds``. Faults are logged
        and retried at the next tick: this thread ends only when ``stop`` is set."""
        next_touch = self.clock() + liveness_seconds
        while not stop.wait(scan_seconds):
            try:
                self.scan()
                if self.clock() >= next_touch:
                    self.control.alive()
                    next_touch = self.clock() + liveness_seconds
            except StoreError as exc:
                log.warning("publishing this host's processes failed (retrying): %s", exc)
            except Exception:  # never let the watcher die silently: log, and keep watching
                log.exception("the process watcher failed (retrying)")


def _same(a: list[ProcessInfo], b: list[ProcessInfo]) -> bool:
    return sorted(p.model_dump_json() for p in a) == sorted(p.model_dump_json() for p in b)
