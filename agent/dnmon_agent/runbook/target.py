"""Flags shared by the capture commands: which process, how long, tags — as API query parameters."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from .errors import ExitCode, RunbookError


def _uid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a GUID: {text!r}") from None


def duration_seconds(text: str) -> int:
    """``--duration``: -1 (until interrupted) or a positive number of seconds, for every command."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError("must be -1 (until interrupted) or a positive number of seconds")
    return value


def add_process_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--pid", type=int, help="process id")
    group.add_argument("--uid", type=_uid, help="runtime instance cookie (GUID)")
    group.add_argument("--name", help="process name (case-insensitive)")
    parser.add_argument("--host", help="which agent's host, when several are registered")


def add_capture_args(parser: argparse.ArgumentParser, *, default_duration: int) -> None:
    add_process_args(parser, required=True)
    parser.add_argument(
        "--duration",
        type=duration_seconds,
        default=default_duration,
        metavar="S",
        help=f"seconds; -1 runs until Ctrl-C (default {default_duration})",
    )
    parser.add_argument("--tags", help="comma-separated tags for the operation (ops list --tags)")


def process_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"pid": args.pid, "uid": args.uid, "name": args.name, "host": args.host}


def capture_params(args: argparse.Namespace) -> dict[str, Any]:
    return {**process_params(args), "durationSeconds": args.duration, "tags": args.tags}


def read_body(path: Path) -> str:
    """The body file as given (the API validates it and names each bad field); JSON checked here."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RunbookError(f"cannot read --body {path}: {exc.strerror}", ExitCode.USAGE) from exc
    try:
        json.loads(text)
    except ValueError as exc:
        raise RunbookError(f"--body {path} is not JSON: {exc}", ExitCode.USAGE) from exc
    return text
