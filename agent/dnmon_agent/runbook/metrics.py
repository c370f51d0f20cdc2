"""``dnmon metrics``: live metrics of a process as a table that updates every interval.

Each metric (provider, name, tags — a histogram's percentiles are rows of their own) keeps its
recent values, drawn as a sparkline, so a trend shows without a dashboard. ``--json-seq`` writes
the API's records to stdout untouched, for scripts. Off a terminal, the table is printed once per
interval (a new interval starts when a metric already shown in this one comes again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import artifacts, capture
from .console import StatusLine, stderr_console, stdout_console
from .errors import ExitCode, RunbookError
from .http import JSON_SEQ, ApiClient
from .target import add_capture_args, capture_params, read_body

HISTORY = 24
SPARKS = "▁▂▃▄▅▆▇█"
RECORD_SEPARATOR = 0x1E


def _spec(text: str, names_key: str, name_key: str) -> dict[str, Any]:
    """``Name[:a,b]`` → ``{"providerName": "Name", "counterNames": ["a", "b"]}`` (or meter keys)."""
    name, _, names = text.partition(":")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"no name in {text!r}")
    entry: dict[str, Any] = {name_key: name.strip()}
    listed = [n.strip() for n in names.split(",") if n.strip()]
    if listed:
        entry[names_key] = listed
    return entry


def _provider(text: str) -> dict[str, Any]:
    return _spec(text, "counterNames", "providerName")


def _meter(text: str) -> dict[str, Any]:
    return _spec(text, "instrumentNames", "meterName")


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    metrics = commands.add_parser(
        "metrics", parents=parents, help="live metrics of a process (POST /livemetrics) as a live table"
    )
    add_capture_args(metrics, default_duration=30)
    metrics.add_argument("--body", type=Path, metavar="FILE", help="EventMetricsConfiguration JSON")
    metrics.add_argument(
        "--provider", type=_provider, action="append", metavar="P[:c1,c2]",
        help="an EventCounter provider, optionally only these counters (repeatable)",
    )  # fmt: skip
    metrics.add_argument(
        "--meter", type=_meter, action="append", metavar="M[:i1,i2]",
        help="a System.Diagnostics.Metrics meter, optionally only these instruments (repeatable)",
    )  # fmt: skip
    metrics.add_argument("--json-seq", action="store_true", help="the raw json-seq records to stdout")
    metrics.set_defaults(runbook=run)


def _body(args: argparse.Namespace) -> str:
    if args.body is not None:
        if args.provider or args.meter:
            raise RunbookError("--body cannot be combined with --provider/--meter", ExitCode.USAGE)
        return read_body(args.body)
    if args.provider or args.meter:  # named ones only: the defaults would bury them
        return json.dumps(
            {"includeDefaultProviders": False, "providers": args.provider or [], "meters": args.meter or []}
        )
    return json.dumps({"includeDefaultProviders": True})


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}"


def sparkline(values: deque[float]) -> str:
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[3] * len(values)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in values)


@dataclass
class Series:
    provider: str
    name: str
    tags: str
    unit: str
    counter_type: str
    values: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


class MetricsBoard:
    """The latest value and recent history of each metric, in order of first appearance."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.series: dict[tuple[str, str, str], Series] = {}
        self.records = 0
        self.intervals = 0
        self._in_interval: set[tuple[str, str, str]] = set()
        self.started = time.monotonic()

    @staticmethod
    def _key(record: dict[str, Any]) -> tuple[str, str, str]:
        return (str(record.get("provider")), str(record.get("name")), str(record.get("tags") or ""))

    def opens_interval(self, record: dict[str, Any]) -> bool:
        """A metric already seen in this interval comes again: the previous interval is complete."""
        return self._key(record) in self._in_interval

    def add(self, record: dict[str, Any]) -> None:
        key = self._key(record)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(
                key[0], str(record.get("displayName") or key[1]), key[2],
                str(record.get("unit") or ""), str(record.get("counterType") or ""),
            )  # fmt: skip
        try:
            series.values.append(float(record.get("value", 0)))
        except (TypeError, ValueError):
            series.values.append(0.0)
        self.records += 1
        if key in self._in_interval:
            self._in_interval.clear()
            self.intervals += 1
        self._in_interval.add(key)

    def render(self) -> Table:
        elapsed = time.monotonic() - self.started
        table = Table(title=f"{self.title} • {elapsed:.0f} s • {self.records} records", title_justify="left")
        table.add_column("PROVIDER", no_wrap=True)
        table.add_column("METRIC", no_wrap=True)
        table.add_column("TAGS")
        table.add_column("VALUE", justify="right", no_wrap=True)
        table.add_column("UNIT", no_wrap=True)
        table.add_column("HISTORY", no_wrap=True)
        for s in self.series.values():
            suffix = "/interval" if s.counter_type == "Rate" else ""
            table.add_row(
                s.provider, s.name, s.tags, _number(s.values[-1]), f"{s.unit}{suffix}", sparkline(s.values)
            )
        return table


class JsonSeqReader:
    """json-seq framing (0x1E, JSON, 0x0A) over chunks that split records anywhere."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        records: list[dict[str, Any]] = []
        while True:
            start = self._buffer.find(RECORD_SEPARATOR)
            if start < 0:
                self._buffer.clear()
                return records
            end = self._buffer.find(b"\n", start)
            if end < 0:
                del self._buffer[:start]
                return records
            text = bytes(self._buffer[start + 1 : end])
            del self._buffer[: end + 1]
            try:
                record = json.loads(text)
            except ValueError:
                continue  # RFC 7464: a damaged record is skipped, the next one still counts
            if isinstance(record, dict):
                records.append(record)


class BoardView:
    """A live table on a terminal; elsewhere, one printed table per completed interval."""

    def __init__(self, board: MetricsBoard, console: Console) -> None:
        self.board = board
        self.console = console
        self.reader = JsonSeqReader()
        self.live: Live | None = None
        self._pending = False

    def __enter__(self) -> BoardView:
        if self.console.is_terminal:
            self.live = Live(self.board.render(), console=self.console, auto_refresh=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self.board.render(), refresh=True)
            self.live.stop()
        elif self._pending:
            self.console.print(self.board.render())

    def feed(self, chunk: bytes) -> None:
        records = self.reader.feed(chunk)
        for record in records:
            if self.live is None and self._pending and self.board.opens_interval(record):
                self.console.print(self.board.render())
            self.board.add(record)
            self._pending = True
        if records and self.live is not None:
            self.live.update(self.board.render(), refresh=True)


WINDOW_SECONDS = 600
"""A streamed response lasts 15 minutes at most (the API answers 202 beyond ``DNMON_STREAM_MAX_SECONDS``,
840 s by default): a longer or endless live view is a run of streamed captures this long each."""


def windows(duration: int) -> Iterator[int]:
    """The ``durationSeconds`` of each consecutive capture: ``-1`` goes on until Ctrl-C."""
    remaining = duration
    while remaining == -1 or remaining > 0:
        if remaining == -1:
            yield WINDOW_SECONDS
            continue
        window = min(remaining, WINDOW_SECONDS)
        yield window
        remaining -= window


def run(args: argparse.Namespace, client: ApiClient) -> int:
    body = _body(args)
    selector = next(f"{k} {v}" for k in ("pid", "uid", "name") if (v := getattr(args, k)) is not None)
    title = f"dnmon metrics • {selector}"
    out = sys.stdout.buffer

    def raw(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    def follow(sink: Callable[[bytes], None], status: StatusLine) -> str:
        """One streamed capture after another; the graceful stop (Ctrl-C) ends the run."""
        state = ""
        for seconds in windows(args.duration):
            outcome = capture.run(
                client, method="POST", route="/livemetrics", params={**capture_params(args),
                "durationSeconds": seconds}, body=body, accept=JSON_SEQ, sink=sink, status=status,
            )  # fmt: skip
            if not outcome.streamed:  # answered 202: the records are in the kept artifact
                sink(_fetch_records(client, outcome.operation_id))
            state = str(outcome.status.get("status"))
            if outcome.stopped:
                break
        return state

    board_console = stdout_console()
    # Two live displays on one terminal fight: with the live table, the status line stays quiet.
    quiet = not args.json_seq and board_console.is_terminal
    status_console = Console(stderr=True, quiet=True) if quiet else stderr_console()
    with StatusLine(status_console, f"livemetrics {selector}") as status:
        if args.json_seq:
            state = follow(raw, status)
        else:
            with BoardView(MetricsBoard(title), board_console) as view:
                state = follow(view.feed, status)
        status.update(state=state)
    return 0


def _fetch_records(client: ApiClient, operation_id: str) -> bytes:
    """A 202 answer (a capture longer than a streamed response): the kept ``.metrics.json`` artifact."""
    with tempfile.TemporaryDirectory(prefix="dnmon-metrics-") as folder:
        path = Path(folder) / "metrics.json-seq"
        artifacts.download(client, operation_id, path)
        return path.read_bytes()
