"""A small local API Gateway + Lambda runtime: HTTP requests → REST proxy events → the real handlers.

It serves the routes of infra/template.yaml, runs the template's REQUEST authorizer first, loads
each handler by its ``module.function`` name the way Lambda does (no static import of the
functions package), and adds the one thing the managed Python runtime cannot do: when a handler
marks its response with ``STREAM_HEADER``, the body is the operation's artifact, relayed to the
client chunk by chunk as the agent streams it to ``/_dnmon/ingest/<operation id>``.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

STREAM_HEADER = "X-Dnmon-Stream-Operation"  # replaced by the uvicorn gateway (branch edge)

from .template import ApiDefinition

log = logging.getLogger("dnmon.local")

INGEST_PREFIX = "/_dnmon/ingest/"
FIRST_BYTE_POLL = 0.5
Handler = Callable[[dict[str, Any], Any], Any]
StatusLookup = Callable[[uuid.UUID], tuple[str, str | None]]


@dataclass
class LambdaContext:
    """What Powertools reads from a Lambda context."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:dnmon"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def load_handler(name: str) -> Handler:
    module_name, _, function = name.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), function)
    return handler


class _Broken:
    """Sentinel: the agent's stream broke before its end."""


class StreamHub:
    """One channel per operation between the agent's ingest request and the waiting client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, queue.Queue[bytes | _Broken | None]] = {}
        self._abandoned: set[str] = set()

    def channel(self, operation_id: str) -> queue.Queue[bytes | _Broken | None]:
        with self._lock:
            return self._channels.setdefault(operation_id, queue.Queue(maxsize=256))

    def abandon(self, operation_id: str) -> None:
        """The client went away: the ingest side stops reading, so the agent's writes fail."""
        with self._lock:
            self._abandoned.add(operation_id)

    def abandoned(self, operation_id: str) -> bool:
        with self._lock:
            return operation_id in self._abandoned

    def close(self, operation_id: str) -> None:
        with self._lock:
            self._channels.pop(operation_id, None)
            self._abandoned.discard(operation_id)


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        api: ApiDefinition,
        *,
        status_of: StatusLookup,
        auth_enabled: bool = True,
        stage: str = "",
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.api = api
        self.status_of = status_of
        self.auth_enabled = auth_enabled
        self.stage = stage
        self.hub = StreamHub()
        self._handlers: dict[str, Handler] = {}

    def handler(self, name: str) -> Handler:
        if name not in self._handlers:
            self._handlers[name] = load_handler(name)
        return self._handlers[name]

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


class _RequestHandler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_GET

    # --- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, list[str]] | None = None) -> None:
        self.send_response(status)
        for key, values in (headers or {}).items():
            for value in values:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_problem(self, status: int, title: str, detail: str) -> None:
        self._send(status, _problem(status, title, detail), {"Content-Type": ["application/problem+json"]})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self._chunks())
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _chunks(self) -> Any:
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise ConnectionError("chunked body ended early")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline(1024)  # the CRLF after the last chunk (no trailers sent)
                return
            data = self.rfile.read(size)
            if len(data) != size:
                raise ConnectionError("chunk cut short")
            self.rfile.readline(1024)
            yield data

    # --- requests ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(INGEST_PREFIX) and self.command == "POST":
            self._ingest(url.path[len(INGEST_PREFIX) :])
            return
        found = self.server.api.resolve(self.command, url.path)
        if found is None:
            self._send_problem(404, "Not Found", f"No route for {self.command} {url.path}.")
            return
        route, path_params = found
        body = self._body()
        event = self._event(route.path, url.path, url.query, path_params, body)
        if self.server.auth_enabled:
            context = self._authorize(event)
            if context is None:
                return
            event["requestContext"]["authorizer"] = context
        try:
            response = self.server.handler(route.handler)(event, LambdaContext(route.handler))
        except Exception:
            log.exception("handler %s failed", route.handler)
            self._send_problem(502, "Bad Gateway", "The function failed; see the dnmon up log.")
            return
        self._respond(response)

    def _event(
        self, resource: str, path: str, query: str, path_params: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for key, value in self.headers.items():
            headers[key] = value
            multi_headers.setdefault(key, []).append(value)
        headers.setdefault("X-Forwarded-Proto", "http")
        multi_query = parse_qs(query, keep_blank_values=True)
        binary = bool(body) and not _is_text(headers.get("Content-Type", ""))
        stage_path = f"/{self.server.stage}{path}" if self.server.stage else path
        return {
            "resource": resource,
            "path": path,
            "httpMethod": self.command,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": resource,
                "httpMethod": self.command,
                "path": stage_path,
                "stage": self.server.stage or "local",
                "domainName": headers.get("Host", "localhost"),
                "requestId": str(uuid.uuid4()),
                "accountId": "000000000000",
                "apiId": "local",
                "identity": {"sourceIp": self.client_address[0]},
            },
            "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace"))
            if body
            else None,
            "isBase64Encoded": binary,
        }

    def _authorize(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """API Gateway's REQUEST authorizer: no header → 401 without a call; raise → 401; Deny → 403."""
        name = self.server.api.authorizer_handler
        if name is None:
            return {}
        if not any(k.lower() == "authorization" for k in event["headers"]):
            self._send_problem(
                401, "Unauthorized", "Authentication is required: send Authorization: Bearer <key>."
            )
            return None
        stage = self.server.stage or "local"
        method_arn = f"arn:aws:execute-api:local:000000000000:local/{stage}/{self.command}{event['path']}"
        request = {**event, "type": "REQUEST", "methodArn": method_arn}
        try:
            policy = self.server.handler(name)(request, LambdaContext(name))
        except Exception:  # "Unauthorized" (or any failure) is a 401, as in API Gateway
            self._send_problem(401, "Unauthorized", "The API key was not accepted.")
            return None
        statements = (policy.get("policyDocument") or {}).get("Statement") or []
        if not any(s.get("Effect") == "Allow" for s in statements):
            self._send_problem(403, "Forbidden", "The authorizer denied this request.")
            return None
        return {"principalId": policy.get("principalId"), **(policy.get("context") or {})}

    def _respond(self, response: dict[str, Any]) -> None:
        headers: dict[str, list[str]] = {}
        for key, value in (response.get("headers") or {}).items():
            headers.setdefault(key, []).append(str(value))
        for key, values in (response.get("multiValueHeaders") or {}).items():
            headers[key] = [str(v) for v in values]
        stream = next((v[0] for k, v in headers.items() if k.lower() == STREAM_HEADER.lower()), None)
        if stream is not None:
            headers = {k: v for k, v in headers.items() if k.lower() != STREAM_HEADER.lower()}
            self._stream(stream, headers)
            return
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
        self._send(int(response.get("statusCode", 200)), raw, headers)

    # --- streaming -------------------------------------------------------------------------

    def _stream(self, operation_id: str, headers: dict[str, list[str]]) -> None:
        """Wait for the first bytes (or the operation's end), then relay chunks as they arrive."""
        hub = self.server.hub
        channel = hub.channel(operation_id)
        first: bytes | _Broken | None
        while True:
            try:
                first = channel.get(timeout=FIRST_BYTE_POLL)
                break
            except queue.Empty:
                state, error = self.server.status_of(uuid.UUID(operation_id))
                if state in ("Failed", "Cancelled") and channel.empty():  # nothing streamed yet
                    hub.close(operation_id)
                    self._send_problem(400, "Bad Request", error or f"The operation {state.lower()}.")
                    return
                if state == "Succeeded" and channel.empty():  # an empty artifact
                    hub.close(operation_id)
                    self._send(200, b"", headers)
                    return
        self.send_response(200)
        for key, values in headers.items():
            for value in values:
                self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        item = first
        try:
            while isinstance(item, bytes):
                self.wfile.write(b"%X\r\n%s\r\n" % (len(item), item))
                self.wfile.flush()
                item = channel.get()
            if item is None:
                self.wfile.write(b"0\r\n\r\n")  # a broken stream ends without it: the client sees the cut
        except OSError:
            log.info("client of operation %s went away", operation_id)
            hub.abandon(operation_id)  # the ingest side closes the channel when it notices
            item = _Broken()
        else:
            hub.close(operation_id)
        finally:
            self.close_connection = True

    def _ingest(self, operation_id: str) -> None:
        """The agent's side: a chunked POST whose chunks go to the waiting client as they come."""
        if self.client_address[0] not in ("127.0.0.1", "::1"):
            self._send_problem(403, "Forbidden", "Ingest is loopback only.")
            return
        hub = self.server.hub
        channel = hub.channel(operation_id)
        try:
            for chunk in self._chunks():
                if hub.abandoned(operation_id):
                    raise ConnectionAbortedError("the client went away")
                channel.put(chunk, timeout=60)
        except (OSError, ValueError, queue.Full) as exc:
            log.info("stream of %s ended early: %s", operation_id, exc)
            if hub.abandoned(operation_id):
                hub.close(operation_id)
            else:
                channel.put(_Broken())
            self.close_connection = True
            return
        channel.put(None)
        self._send(200, b"")


def _is_text(content_type: str) -> bool:
    lowered = content_type.lower()
    return lowered.startswith("text/") or "json" in lowered or not lowered


def wait_until_serving(url: str, timeout: float = 10.0) -> None:
    """Poll until the gateway answers (used by ``dnmon up`` and tests)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError as exc:
            code = getattr(exc, "code", None)
            if code is not None:
                return  # an HTTP error is an answer
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
