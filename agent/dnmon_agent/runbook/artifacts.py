"""Following an operation to its end, and fetching its artifact whole.

A capture that answered 202 (an egress provider, or a long or ``-1`` duration on AWS) is polled
through ``GET /operations/{id}``; its artifact comes from ``GET /operations/{id}/artifact``, whose
JSON body repeats the 302's presigned URL. That URL is fetched with a separate client that never
carries the API's Authorization header (S3 refuses a request with two kinds of credentials), into
``FILE.part`` with HTTP Range resumes after a cut, and renamed to ``FILE`` once the size checks.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .console import warn
from .errors import ExitCode, NetworkError, RunbookError
from .http import ApiClient

TERMINAL = {"Succeeded", "Failed", "Cancelled"}
POLL_SECONDS = 1.0
DOWNLOAD_ATTEMPTS = 6
CHUNK = 1 << 16
Progress = Callable[[str | None, int | None], None]


def _noop(state: str | None, received: int | None) -> None:
    return None


def operation(client: ApiClient, operation_id: str) -> dict[str, Any]:
    status: dict[str, Any] = client.json("GET", f"/operations/{operation_id}")
    return status


def failure(status: dict[str, Any]) -> RunbookError:
    """The error a runbook sees for an operation that did not succeed."""
    if status.get("status") == "Cancelled":
        return RunbookError(f"operation {status.get('operationId')} was cancelled", ExitCode.FAILED)
    error = status.get("error") or {}
    return RunbookError(
        f"capture failed ({error.get('code', 'Failed')}): {error.get('message', 'no detail')}",
        ExitCode.FAILED,
    )


def wait_for(
    client: ApiClient,
    operation_id: str,
    progress: Progress = _noop,
    *,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll until the operation ends; its final status (whatever the state)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = operation(client, operation_id)
        progress(str(status.get("status")), None)
        if status.get("status") in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(POLL_SECONDS)


def artifact_link(client: ApiClient, operation_id: str) -> dict[str, Any]:
    """The artifact route's JSON body: ``url`` + ``size`` (S3) or ``location`` (a host directory)."""
    response = client.request("GET", f"/operations/{operation_id}/artifact")
    try:
        link: dict[str, Any] = response.json()
    except ValueError:
        raise RunbookError("the artifact route answered without a JSON body", ExitCode.SERVER) from None
    return link


def default_name(link: dict[str, Any], operation_id: str) -> str:
    for key in ("key", "location"):
        if link.get(key):
            return str(link[key]).rsplit("/", 1)[-1]
    return f"{operation_id}.artifact"


def download(
    client: ApiClient,
    operation_id: str,
    out: Path,
    progress: Progress = _noop,
    *,
    sleep: Callable[[float], None] = time.sleep,
    store_transport: httpx.BaseTransport | None = None,
) -> int:
    """Fetch the finished operation's artifact into ``out``; its size in bytes."""
    link = artifact_link(client, operation_id)
    if "url" not in link:
        return _copy_local(link, out)
    expected = link.get("size")
    part = out.with_name(f"{out.name}.{operation_id[:8]}.part")  # resumes only the same artifact
    received = part.stat().st_size if part.exists() else 0
    if received:
        warn(f"resuming {part} at {received} bytes")
    attempts = 0
    url = str(link["url"])
    timeout = httpx.Timeout(60.0, connect=10.0)
    with httpx.Client(timeout=timeout, follow_redirects=True, transport=store_transport) as store:
        while expected is None or received < int(expected):
            try:
                received = _fetch(store, url, part, received, progress)
                break
            except (httpx.TransportError, _Expired) as exc:
                attempts += 1
                if attempts >= DOWNLOAD_ATTEMPTS:
                    if isinstance(exc, _Expired):
                        raise RunbookError(str(exc), ExitCode.FAILED) from None
                    raise NetworkError(
                        f"the artifact download kept failing ({type(exc).__name__}); "
                        f"run the same command again to resume from {part}"
                    ) from None
                if isinstance(exc, _Expired):  # the presigned URL ran out: ask for a new one
                    url = str(artifact_link(client, operation_id)["url"])
                received = part.stat().st_size if part.exists() else 0
                warn(f"download interrupted ({type(exc).__name__}); resuming at {received} bytes")
                sleep(min(2.0**attempts, 10.0))
    if expected is not None and received != int(expected):
        raise RunbookError(
            f"the artifact is {received} bytes, the API said {expected}: {part} kept", ExitCode.FAILED
        )
    part.replace(out)
    return received


class _Expired(Exception):
    """The store refused the presigned URL (403): it may have expired."""


def _fetch(store: httpx.Client, url: str, part: Path, offset: int, progress: Progress) -> int:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with store.stream("GET", url, headers=headers) as response:
        if response.status_code == 403:
            raise _Expired("the artifact store refused the presigned URL (403)")
        if response.status_code == 416:  # nothing left after offset: the part is whole
            return offset
        if response.status_code == 200:
            offset = 0  # the store ignored Range: start over
        elif response.status_code != 206:
            raise RunbookError(f"the artifact store answered HTTP {response.status_code}", ExitCode.FAILED)
        with part.open("ab" if offset else "wb") as handle:
            for chunk in response.iter_bytes(CHUNK):
                handle.write(chunk)
                offset += len(chunk)
                progress(None, offset)
    return offset


def _copy_local(link: dict[str, Any], out: Path) -> int:
    """A filesystem egress: the artifact is a file on the agent's host (this one, for ``dnmon up``)."""
    location = link.get("location")
    source = Path(str(location)) if location else None
    if source is None or not source.is_file():
        raise RunbookError(
            f"the artifact is a file on the agent's host ({location}), not reachable from here",
            ExitCode.FAILED,
        )
    if source.resolve() != out.resolve():
        shutil.copyfile(source, out)
    return out.stat().st_size
