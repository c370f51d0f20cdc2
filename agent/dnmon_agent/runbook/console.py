"""Terminal output: rich consoles, a one-line status for long operations, and Ctrl-C handling.

Tables and live views go to stdout; progress and messages to stderr, so ``-o -``-style pipelines
and ``--json`` output stay clean. Off a terminal, the status line becomes a line per state change.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .errors import Interrupted

PIPE_WIDTH = 200  # off a terminal rich assumes 80 columns and would cut ids and tags


def _sized(console: Console) -> Console:
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def stdout_console() -> Console:
    return _sized(Console(highlight=False, soft_wrap=False))


def stderr_console() -> Console:
    return _sized(Console(stderr=True, highlight=False))


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


class StatusLine:
    """``<what> • <state> • <elapsed> • <bytes>``, live on a terminal, else one line per state."""

    def __init__(self, console: Console, what: str) -> None:
        self.console = console
        self.what = what
        self.state = "Starting"
        self.bytes = 0
        self.started = time.monotonic()
        self._printed_state: str | None = None
        self._live: Live | None = None

    def _render(self) -> Text:
        elapsed = time.monotonic() - self.started
        text = Text(f"{self.what} • ")
        text.append(self.state, style="bold")
        text.append(f" • {elapsed:5.1f} s • {human_bytes(self.bytes)}")
        return text

    def __enter__(self) -> StatusLine:
        if self.console.is_terminal:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4)
            self._live.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
        elif kind is None and self._printed_state != self.state:  # an error says enough by itself
            self._print()

    def update(self, *, state: str | None = None, received: int | None = None) -> None:
        if state is not None:
            self.state = state
        if received is not None:
            self.bytes = received
        if self._live is None and state is not None and state != self._printed_state:
            self._print()

    def _print(self) -> None:
        self._printed_state = self.state
        self.console.print(self._render())


@contextmanager
def ctrl_c(
    on_first: Callable[[], None], on_second: Callable[[], None] | None = None
) -> Iterator[threading.Event]:
    """First SIGINT/SIGTERM: ``on_first`` runs on its own thread (a graceful stop over HTTP).
    The second runs ``on_second`` at once — before the stream is closed, which the server would
    otherwise record as a failure — and raises ``Interrupted`` in the main thread."""
    stopping = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            if on_second is not None:
                on_second()
            raise Interrupted()
        stopping.set()
        threading.Thread(target=on_first, name="graceful-stop", daemon=True).start()

    previous: list[Any] = [signal.signal(signal.SIGINT, handle), signal.signal(signal.SIGTERM, handle)]
    try:
        yield stopping
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def warn(message: str) -> None:
    print(f"dnmon: {message}", file=sys.stderr, flush=True)
