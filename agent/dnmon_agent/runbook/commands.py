"""Wiring the runbook commands into ``dnmon``'s parser, and running one with its exit code.

The connection flags ``--url`` and ``--token`` are accepted before the command and after it,
``--profile`` before it (``dnmon --profile prod trace …``); every failure ends as ``dnmon: <message>`` on
stderr with an ``ExitCode``, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import ExitCode, RunbookError

# The commands (and httpx, rich) load only when ``dnmon`` runs one of them: ``dnmon agent`` is a
# long-lived process whose memory is a goal (BENCHMARKS.md, agent footprint).
COMMANDS = ("ps", "metrics", "trace", "ops")


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("API (runbook commands)")
    group.add_argument("--url", default=default, help="the dnmon API (env DNMON_URL; default dnmon up's)")
    group.add_argument("--token", default=default, help="a MonitorApiKey (env DNMON_TOKEN; never printed)")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Before the command; ``--profile`` only there (``trace --profile`` names trace profiles)."""
    _connection_options(parser, None)
    parser.add_argument(
        "--profile",
        dest="api_profile",
        help="a named API from $XDG_CONFIG_HOME/dnmon/config.toml (env DNMON_PROFILE)",
    )


def add_commands(commands: Any) -> None:
    """``ps``, ``metrics``, ``trace`` and ``ops`` on the ``dnmon`` subparsers."""
    from . import metrics, ops, ps, trace

    parent = argparse.ArgumentParser(add_help=False)
    _connection_options(parent, argparse.SUPPRESS)  # after the command too, without clobbering
    for group in (ps, metrics, trace, ops):
        group.add_parser(commands, [parent])


def is_runbook(args: argparse.Namespace) -> bool:
    return callable(getattr(args, "runbook", None))


def run(args: argparse.Namespace) -> int:
    from . import config
    from .http import ApiClient

    try:
        api = config.resolve(url=args.url, token=args.token, profile=args.api_profile)
        with ApiClient(api) as client:
            code: int = args.runbook(args, client)
            return code
    except RunbookError as exc:
        print(f"dnmon: {exc}", file=sys.stderr, flush=True)
        return int(exc.code)
    except KeyboardInterrupt:
        print("dnmon: interrupted", file=sys.stderr, flush=True)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.FAILED)
    except OSError as exc:  # the output file: a full disk, a missing directory, permissions
        print(f"dnmon: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return int(ExitCode.FAILED)
