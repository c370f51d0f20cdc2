"""``dnmon ops list|show|stop|cancel|download``: the API's /operations, for runbooks."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from . import artifacts
from .console import StatusLine, stderr_console, stdout_console, warn
from .http import ApiClient
from .target import add_process_args, process_params


def _operation_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an operation id (GUID): {text!r}") from None


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    ops = commands.add_parser("ops", parents=parents, help="operations: list, show, stop, cancel, download")
    actions = ops.add_subparsers(dest="ops_action", required=True)
    listing = actions.add_parser("list", parents=parents, help="operations (GET /operations), newest first")
    add_process_args(listing)
    listing.add_argument("--tags", help="only operations with all of these comma-separated tags")
    listing.add_argument("--json", action="store_true", help="the API's OperationSummary array")
    listing.set_defaults(runbook=run_list)
    show = actions.add_parser("show", parents=parents, help="one operation's status (GET /operations/ID)")
    show.add_argument("id", type=_operation_id)
    show.add_argument("--json", action="store_true", help="the API's OperationStatus")
    show.set_defaults(runbook=run_show)
    stop = actions.add_parser("stop", parents=parents, help="stop gracefully (DELETE ?stop=true)")
    stop.add_argument("id", type=_operation_id)
    stop.add_argument("--wait", action="store_true", help="wait until the operation has ended")
    stop.set_defaults(runbook=run_stop)
    cancel = actions.add_parser("cancel", parents=parents, help="cancel (DELETE /operations/ID)")
    cancel.add_argument("id", type=_operation_id)
    cancel.set_defaults(runbook=run_cancel)
    download = actions.add_parser(
        "download", parents=parents, help="wait for the operation, then fetch its artifact (resumable)"
    )
    download.add_argument("id", type=_operation_id)
    download.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="where to write it (default: the artifact's name)"
    )
    download.set_defaults(runbook=run_download)


def _dump(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_list(args: argparse.Namespace, client: ApiClient) -> int:
    params = {**process_params(args), "tags": args.tags}
    operations: list[dict[str, Any]] = client.json("GET", "/operations", params=params)
    operations.sort(key=lambda o: str(o.get("createdDateTime", "")), reverse=True)
    if args.json:
        _dump(operations)
        return 0
    table = Table(
        title=f"{len(operations)} operation(s)", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    for column in ("OPERATION", "CREATED (UTC)", "STATUS", "PID", "NAME", "EGRESS", "TAGS"):
        table.add_column(column, no_wrap=column in ("OPERATION", "CREATED (UTC)", "STATUS"))
    for o in operations:
        process = o.get("process") or {}
        table.add_row(
            str(o.get("operationId")), str(o.get("createdDateTime", ""))[:19].replace("T", " "),
            str(o.get("status")), str(process.get("pid", "")), str(process.get("name", "")),
            str(o.get("egressProviderName") or "-"), ",".join(o.get("tags") or []),
        )  # fmt: skip
    stdout_console().print(table)
    return 0


def run_show(args: argparse.Namespace, client: ApiClient) -> int:
    status = artifacts.operation(client, args.id)
    if args.json:
        _dump(status)
        return 0
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    process = status.get("process") or {}
    error = status.get("error") or {}
    rows = [
        ("operation", status.get("operationId")),
        ("status", status.get("status")),
        ("created", status.get("createdDateTime")),
        ("process", f"{process.get('pid')} {process.get('name')} {process.get('uid')}" if process else ""),
        ("egress", status.get("egressProviderName") or "(the HTTP response)"),
        ("stoppable", "yes" if status.get("isStoppable") else "no"),
        ("tags", ",".join(status.get("tags") or [])),
        ("artifact", status.get("resourceLocation") or ""),
        ("error", f"{error.get('code')}: {error.get('message')}" if error else ""),
    ]
    for key, value in rows:
        if value:
            table.add_row(key, str(value))
    stdout_console().print(table)
    return 0


def run_stop(args: argparse.Namespace, client: ApiClient) -> int:
    client.request("DELETE", f"/operations/{args.id}", params={"stop": "true"})
    warn(f"operation {args.id}: stop requested")
    if args.wait:
        final = artifacts.wait_for(client, args.id)
        if final.get("status") != "Succeeded":
            raise artifacts.failure(final)
        warn(f"operation {args.id}: {final.get('status')}")
    return 0


def run_cancel(args: argparse.Namespace, client: ApiClient) -> int:
    client.request("DELETE", f"/operations/{args.id}")
    warn(f"operation {args.id}: cancelled")
    return 0


def run_download(args: argparse.Namespace, client: ApiClient) -> int:
    """Follows a running operation to its end first; Ctrl-C stops waiting, not the operation."""
    with StatusLine(stderr_console(), f"operation {args.id}") as status:

        def progress(state: str | None, received: int | None) -> None:
            status.update(state=state, received=received)

        final = artifacts.wait_for(client, args.id, progress)
        if final.get("status") != "Succeeded":
            raise artifacts.failure(final)
        out = args.output or Path(artifacts.default_name(artifacts.artifact_link(client, args.id), args.id))
        status.update(state="Downloading")
        size = artifacts.download(client, args.id, out, progress)
        status.update(state="Downloaded")
    warn(f"wrote {size} bytes to {out}")
    return 0
