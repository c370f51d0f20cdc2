"""``dnmon ps``: the .NET processes the fleet's agents last reported."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich import box
from rich.table import Table

from .console import stdout_console
from .http import ApiClient


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    ps = commands.add_parser("ps", parents=parents, help="the fleet's .NET processes (GET /processes)")
    ps.add_argument("--host", help="only this agent's host")
    ps.add_argument("--json", action="store_true", help="the API's JSON array, for scripts")
    ps.set_defaults(runbook=run)


def run(args: argparse.Namespace, client: ApiClient) -> int:
    processes: list[dict[str, Any]] = client.json("GET", "/processes", params={"host": args.host})
    if args.json:
        json.dump(processes, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    table = Table(
        title=f"{len(processes)} .NET process(es) at {client.config.url}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for column in ("HOST", "PID", "NAME", "UID", "DEFAULT"):
        table.add_column(column, justify="right" if column == "PID" else "left", no_wrap=True)
    for p in sorted(processes, key=lambda p: (str(p.get("host", "")), int(p.get("pid", 0)))):
        table.add_row(
            str(p.get("host", "")), str(p.get("pid")), str(p.get("name")), str(p.get("uid")),
            "yes" if p.get("isDefault") else "",
        )  # fmt: skip
    stdout_console().print(table)
    return 0
