"""The ``dnmon`` command: the agent's capture ability on this host, without any AWS.

Errors end as one line on stderr and a non-zero exit code; output goes to stdout (json-seq
or JSON) or to the ``-o`` file, so the command composes in shell pipelines and runbooks.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import pydantic

from dnmon_core.models import (
    EventMetricsConfiguration,
    EventProvidersConfiguration,
    Metric,
    validation_errors,
)

from .diagnostics.client import DiagnosticsClient
from .diagnostics.discovery import DotnetProcess, list_processes, select_process
from .diagnostics.errors import DiagnosticsError
from .pipelines.counters import CountersPipeline
from .pipelines.runner import CaptureError, StopControl, run_live_metrics, run_trace
from .pipelines.trace import DEFAULT_TRACE_CONFIGURATION, session_configuration
from .runbook import commands as runbook
from .runbook.target import duration_seconds

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError("must be between 0.1 and 86400 seconds")
    return value


def _uid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a GUID: {text!r}") from None


def _add_selector(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pid", type=int, help="process id")
    group.add_argument("--uid", type=_uid, help="runtime instance cookie (GUID)")
    group.add_argument("--name", help="process name (case-insensitive)")
    parser.add_argument(
        "--duration",
        type=duration_seconds,
        default=30,
        metavar="SECONDS",
        help="capture length; -1 runs until SIGINT/SIGTERM (default 30)",
    )


OWN_COMMANDS = ("processes", "capture", "agent", "up", "generatekey")
_GLOBAL_VALUES = ("--url", "--token", "--profile")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word, skipping the global options before it (and their values)."""
    tokens = iter(argv)
    for token in tokens:
        if token in _GLOBAL_VALUES:
            next(tokens, None)
        elif not token.startswith("-"):
            return token
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnmon", description="dotnet-monitor's capture API for .NET processes"
    )
    runbook.add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    if _command_of(sys.argv[1:] if argv is None else argv) not in OWN_COMMANDS:
        runbook.add_commands(commands)  # ps, metrics, trace, ops: the client of any dnmon API

    processes = commands.add_parser("processes", help="list .NET processes")
    processes.add_argument(
        "--local", action="store_true", required=True, help="this host, through its sockets"
    )

    capture = commands.add_parser("capture", help="capture from a process of this host")
    kinds = capture.add_subparsers(dest="kind", required=True)
    metrics = kinds.add_parser("metrics", help="live metrics as json-seq on stdout")
    _add_selector(metrics)
    metrics.add_argument(
        "--interval", type=_interval, default=5.0, metavar="SECONDS", help="counter interval"
    )
    metrics.add_argument("--body", type=Path, metavar="FILE", help="EventMetricsConfiguration JSON")
    trace = kinds.add_parser("trace", help="a nettrace file")
    _add_selector(trace)
    trace.add_argument("--body", type=Path, metavar="FILE", help="EventProvidersConfiguration JSON")
    trace.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the .nettrace to write"
    )

    up = commands.add_parser("up", help="the embedded local stack: moto, the API on loopback, one agent")
    up.add_argument("--port", type=int, default=52323, help="API port on 127.0.0.1 (default 52323)")
    up.add_argument("--no-auth", action="store_true", help="turn authentication off (says so loudly)")
    up.add_argument(
        "--sample-app", action="store_true", help="also run the demo .NET app (examples/DemoApp.cs)"
    )
    up.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="the 'local' egress directory")
    up.add_argument(
        "--interval", type=_interval, default=5.0, metavar="SECONDS", help="live-metrics interval"
    )

    key = commands.add_parser(
        "generatekey", help="make a MonitorApiKey and the configuration that accepts it"
    )
    key.add_argument("-o", "--output", default="Text", help="Text (default), Json, Shell or MachineJson")
    key.add_argument("--subject", help="the key's subject (default: a new GUID)")
    key.add_argument("--expiration-days", type=float, default=7.0, metavar="DAYS", help="default 7")

    agent = commands.add_parser(
        "agent", help="run the on-host agent (DNMON_* environment, AWS credential chain)"
    )
    agent.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _read_body(path: Path | None, model: type[pydantic.BaseModel]) -> pydantic.BaseModel | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read --body {path}: {exc.strerror}", EXIT_USAGE) from exc
    try:
        return model.model_validate_json(text)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in validation_errors(exc).items())
        raise CliError(f"invalid --body {path}: {problems}", EXIT_USAGE) from exc


def _target(args: argparse.Namespace) -> DotnetProcess:
    return select_process(list_processes(), pid=args.pid, uid=args.uid, name=args.name)


def _install_signals(control: StopControl) -> None:
    """First SIGINT/SIGTERM stops gracefully (the artifact stays valid); a second one cancels."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if control.stop.is_set():
            control.cancel.set()
        control.stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


class _JsonSeqWriter:
    """Writes each record as soon as it is decoded, so a pipe consumer sees it at once."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, metric: Metric) -> None:
        self.stream.write(metric.to_json_seq())
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def cmd_processes(args: argparse.Namespace) -> int:
    json.dump([p.to_process_info().model_dump(mode="json") for p in list_processes()], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_capture_metrics(args: argparse.Namespace) -> int:
    body = _read_body(args.body, EventMetricsConfiguration)
    config = body if isinstance(body, EventMetricsConfiguration) else EventMetricsConfiguration()
    target = _target(args)
    pipeline = CountersPipeline(config, interval_seconds=args.interval)
    control = StopControl.new()
    _install_signals(control)
    sink = _JsonSeqWriter(sys.stdout.buffer)
    duration = None if args.duration == -1 else args.duration
    try:
        run_live_metrics(
            DiagnosticsClient(target.socket_path), pipeline, sink, duration=duration, control=control
        )
    finally:
        sink.close()
    for notice in pipeline.warnings:
        print(f"dnmon: warning: {notice}", file=sys.stderr)
    return 0


def cmd_capture_trace(args: argparse.Namespace) -> int:
    body = _read_body(args.body, EventProvidersConfiguration)
    config = body if isinstance(body, EventProvidersConfiguration) else DEFAULT_TRACE_CONFIGURATION
    target = _target(args)
    control = StopControl.new()
    _install_signals(control)
    duration = None if args.duration == -1 else args.duration
    try:
        out = args.output.open("wb")
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}") from exc
    with out:
        result = run_trace(
            DiagnosticsClient(target.socket_path),
            session_configuration(config),
            out,
            duration=duration,
            control=control,
        )
    print(f"dnmon: wrote {result.bytes_received} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import logging
    import threading

    from dnmon_core.config import ConfigurationError
    from dnmon_core.store import StoreError

    from .worker import Agent, AgentSettings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = AgentSettings.from_env()
    except ConfigurationError as exc:
        raise CliError(
            f"{exc} (the agent needs DNMON_TABLE, DNMON_BUCKET and DNMON_SIGNING_KEY)", EXIT_USAGE
        ) from exc
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    agent = Agent(settings)
    try:
        queue = agent.register()
    except (StoreError, ConfigurationError) as exc:
        raise CliError(f"the agent could not register: {exc}") from exc
    print(
        f"dnmon agent {agent.agent_id} on {settings.host_name}: polling {queue}",
        file=sys.stderr,
        flush=True,
    )
    # The agent works on its own thread; this one only waits, waking often enough to run the
    # signal handler (a signal that lands on another thread waits for the main thread's bytecode).
    worker = threading.Thread(target=agent.run, args=(stop,), name="agent")
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if agent.failure is not None:  # the loop died: its captures were stopped; say so in the status
        raise CliError(f"the agent stopped after a failure: {agent.failure}")
    return 0


def cmd_generatekey(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from dnmon_core.apikey import generate_key

    if not args.expiration_days > 0:
        raise CliError("--expiration-days must be positive", EXIT_USAGE)
    generated = generate_key(subject=args.subject, expiry=timedelta(days=args.expiration_days))
    try:
        print(generated.render(args.output))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    from .local.dotnet import DotnetUnavailable
    from .local.stack import StackOptions, UpError, run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = StackOptions(
        port=args.port,
        auth=not args.no_auth,
        sample_app=args.sample_app,
        artifacts=args.artifacts,
        interval_seconds=args.interval,
    )
    try:
        return run(options)
    except (UpError, DotnetUnavailable) as exc:
        raise CliError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if runbook.is_runbook(args):
        return runbook.run(args)
    handlers = {
        ("processes", None): cmd_processes,
        ("capture", "metrics"): cmd_capture_metrics,
        ("capture", "trace"): cmd_capture_trace,
        ("agent", None): cmd_agent,
        ("up", None): cmd_up,
        ("generatekey", None): cmd_generatekey,
    }
    handler = handlers[(args.command, getattr(args, "kind", None))]
    try:
        return handler(args)
    except CliError as exc:
        print(f"dnmon: {exc}", file=sys.stderr)
        return exc.code
    except CaptureError as exc:
        print(f"dnmon: capture failed ({exc.code}): {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if exc.code == "Cancelled" else EXIT_FAILED
    except DiagnosticsError as exc:
        print(f"dnmon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
