"""The client's one error family and the exit codes a runbook can branch on.

``RunbookError`` carries its exit code and a one-line message; the command layer prints it and
exits. HTTP answers become ``ApiError`` (with the problem+json's ``detail`` and ``errors``), and
httpx's transport failures become ``NetworkError`` at the edge (``http.py``), so no command sees a
foreign exception and no user sees a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Documented in the README's Runbook section; keep the two in step."""

    OK = 0
    FAILED = 1  # the capture failed or was cut, or the artifact is incomplete
    USAGE = 2  # bad flags or body, or the API's 400 validation problem
    AUTH = 3  # no token, or the API refused it (401/403)
    NOT_FOUND = 4  # no such process, operation, host or route
    THROTTLED = 5  # 429: too many operations of that kind at once
    NETWORK = 6  # cannot reach the API or the artifact store, or it timed out
    SERVER = 7  # the API failed (5xx)
    INTERRUPTED = 130  # a second Ctrl-C cancelled the operation


class RunbookError(Exception):
    """A failure the user can act on: printed as ``dnmon: <message>``, exit ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


class NetworkError(RunbookError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NETWORK)


class Interrupted(RunbookError):
    """The user pressed Ctrl-C twice: the operation was cancelled."""

    def __init__(self, message: str = "interrupted: operation cancelled") -> None:
        super().__init__(message, ExitCode.INTERRUPTED)


# dotnet-monitor (and so dnmon) answers 400 for almost every failure; these details say that
# something the request named does not exist, which a runbook wants to tell apart.
_NOT_FOUND = re.compile(
    r"not found|unable to (find|discover)|no such route|does not exist"
    r"|no (live )?(dnmon )?agent (runs on|has registered) host",
    re.IGNORECASE,
)


class ApiError(RunbookError):
    """An HTTP error answer, with the problem+json fields when the body is one."""

    def __init__(self, status: int, detail: str, errors: Mapping[str, Sequence[str]] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.errors = {k: list(v) for k, v in (errors or {}).items()}
        super().__init__(self._message(), _code_for(status, detail, self.errors))

    def _message(self) -> str:
        lines = [f"{self.detail} (HTTP {self.status})"]
        for field, messages in self.errors.items():
            for message in messages:
                line = f"{field or 'body'}: {message}"
                if line != self.detail and message != self.detail:  # the detail repeats the first
                    lines.append(f"  {line}")
        return "\n".join(lines)

    @classmethod
    def from_problem(cls, status: int, body: Any, fallback: str) -> ApiError:
        if isinstance(body, dict):
            detail = body.get("detail") or body.get("title") or fallback
            errors = body.get("errors") if isinstance(body.get("errors"), dict) else None
            return cls(status, str(detail), errors)
        return cls(status, fallback)


def _code_for(status: int, detail: str, errors: Mapping[str, Sequence[str]]) -> ExitCode:
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 429:
        return ExitCode.THROTTLED
    if status == 404 or (status == 400 and _NOT_FOUND.search(detail)):
        return ExitCode.NOT_FOUND
    if status >= 500:
        return ExitCode.SERVER
    if status == 400:
        ambiguous = "default process" in detail or "host parameter" in detail
        return ExitCode.USAGE if errors or ambiguous else ExitCode.FAILED
    return ExitCode.FAILED
