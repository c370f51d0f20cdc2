"""A stand-in streaming handler, run by the local Runtime API in a real execution environment.

``?mode=`` picks the behaviour; ``?dir=`` is a folder the test shares with it. The handler waits
for ``go-<n>`` files there before producing chunk ``n``, so a test proves the order of events
(headers before the first chunk, each chunk before the next is made) without measuring time, and it
leaves marker files (``gone``) that say what it saw.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dnmon_api.runtime import ClientGone, ResponseStream

WAIT_SECONDS = 20.0


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def public_base(event: dict[str, Any]) -> str:
    """The API's base URL as functions/dnmon_api/http.py builds it: configuration, else the context."""
    configured = os.environ.get("DNMON_PUBLIC_URL")
    if configured:
        return configured.rstrip("/")
    context = event["requestContext"]
    full_path = context.get("path") or event["path"]
    prefix = full_path[: -len(event["path"])] if full_path.endswith(event["path"]) else ""
    return f"https://{context['domainName']}{prefix.rstrip('/')}"


def stream(event: dict[str, Any], context: Any, response: ResponseStream) -> None:
    query = event.get("queryStringParameters") or {}
    mode = query.get("mode", "chunks")
    folder = Path(query.get("dir", "."))
    if mode == "fail-before":
        raise RuntimeError("the capture could not start")
    if mode == "exit-before":
        os._exit(3)
    if mode == "no-response":
        return
    headers = {
        "Content-Type": "application/octet-stream",
        "Location": f"{public_base(event)}/operations/{context.aws_request_id}",
        "X-Seen-Host": str((event.get("headers") or {}).get("Host")),
        "X-Seen-Body": str(event.get("body")),
    }
    response.start(int(query.get("status", "200")), headers)
    if mode == "sleep":
        time.sleep(60)  # past the function's Timeout
    if mode == "exit-mid":
        response.write(b"partial")
        time.sleep(0.2)
        os._exit(4)
    if mode == "fail-mid":
        response.write(b"partial")
        _wait_for(folder / "go-1")
        raise RuntimeError("the target went away")
    count = int(query.get("count", "3"))
    try:
        for n in range(count if mode != "gone" else 10_000):
            _wait_for(folder / f"go-{n}")
            response.write(b"chunk-%d;" % n)
    except ConnectionError as exc:  # ClientGone is one; which one the runtime raised is recorded
        imported = isinstance(exc, ClientGone)
        (folder / "gone").write_text(json.dumps({"type": type(exc).__name__, "imported_class": imported}))
        raise
