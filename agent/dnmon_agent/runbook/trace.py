"""``dnmon trace``: a nettrace of a process, to a file, through any dnmon API.

The file is written as ``FILE.part`` and renamed when the operation has succeeded, so ``FILE``
exists only whole. An indefinite trace (``--duration -1``) ends with the first Ctrl-C, which stops
the session gracefully: the runtime writes its rundown and the file stays valid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import artifacts, capture
from .console import StatusLine, stderr_console, warn
from .errors import ExitCode, Interrupted, RunbookError
from .http import OCTET_STREAM, ApiClient
from .target import add_capture_args, capture_params, read_body

PROFILES = ("Cpu", "Http", "Logs", "Metrics", "GcCollect")


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    trace = commands.add_parser(
        "trace", parents=parents, help="a nettrace of a process (POST/GET /trace) to a file"
    )
    add_capture_args(trace, default_duration=30)
    source = trace.add_mutually_exclusive_group()
    source.add_argument("--body", type=Path, metavar="FILE", help="EventProvidersConfiguration JSON")
    source.add_argument(
        "--profile",
        dest="trace_profile",
        metavar="P[,P…]",
        help=f"{', '.join(PROFILES)} (default: the API's, Cpu,Http,Metrics,GcCollect)",
    )
    trace.add_argument("--egress", metavar="NAME", help="a named egress provider of the API (202)")
    trace.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="the .nettrace to write (optional with --egress)"
    )
    trace.set_defaults(runbook=run)


def run(args: argparse.Namespace, client: ApiClient) -> int:
    out: Path | None = args.output
    if out is None and args.egress is None:
        raise RunbookError("-o FILE is required (or --egress NAME to keep the trace there)", ExitCode.USAGE)
    params = {**capture_params(args), "egressProvider": args.egress}
    if args.body is not None:
        method, body = "POST", read_body(args.body)
    else:
        method, body = "GET", None
        params["profile"] = args.trace_profile
    part = out.with_name(out.name + ".part") if out else None
    handles: list[Any] = []  # the part file, opened with the first streamed byte
    selector = next(f"{k} {v}" for k in ("pid", "uid", "name") if (v := getattr(args, k)) is not None)
    downloaded: list[int] = []

    def sink(chunk: bytes) -> None:
        if part is None:
            raise RunbookError("the API streamed the trace although an egress provider was named")
        if not handles:
            handles.append(part.open("wb"))
        handles[0].write(chunk)

    def after(outcome: capture.Outcome) -> None:
        if outcome.streamed or out is None:
            return
        status.update(state="Downloading")
        downloaded.append(
            artifacts.download(client, outcome.operation_id, out, lambda s, n: status.update(received=n))
        )

    try:
        with StatusLine(stderr_console(), f"trace {selector}") as status:
            try:
                outcome = capture.run(
                    client, method=method, route="/trace", params=params, body=body,
                    accept=OCTET_STREAM, sink=sink, status=status, after=after,
                )  # fmt: skip
            finally:
                for handle in handles:
                    handle.close()
            status.update(state=str(outcome.status.get("status")) if outcome.streamed else "Downloaded")
    except RunbookError as exc:
        if part is not None and part.exists():
            if isinstance(exc, Interrupted) or part.stat().st_size == 0:
                part.unlink()  # a cancelled trace is unusable
            else:
                warn(f"the partial trace is in {part}")
        raise
    if out is None:
        warn(f"operation {outcome.operation_id} {outcome.status.get('status')}: "
             f"the trace is kept by egress provider {args.egress!r}")  # fmt: skip
        return 0
    if outcome.streamed:
        assert part is not None
        if not part.exists():  # an empty artifact
            part.write_bytes(b"")
        part.replace(out)
        size = outcome.received
    else:
        size = downloaded[0] if downloaded else out.stat().st_size
    warn(f"wrote {size} bytes to {out} (operation {outcome.operation_id})")
    return 0
