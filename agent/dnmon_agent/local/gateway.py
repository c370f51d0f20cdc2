"""A local API Gateway: the template's routes over a real HTTP server, the real handlers behind it.

uvicorn (with h11) does the HTTP: a proper listen backlog, malformed framing refused with 400, idle
and header-read timeouts. The ASGI app below does what API Gateway does before a function runs, in
its order: route (404), the payload limit from the declared length (413), the REQUEST authorizer
(401/403), and only then the body, read against the limit and a read timeout (413/408). The event
a function gets names the API as configured (``requestContext.domainName``, ``Host``,
``X-Forwarded-*``), never as the client's headers claim, so a Location built from it is ours.

Buffered routes call their handler in-process, one call per request as the managed runtime makes.
Streaming routes (``responseTransferMode: STREAM``) invoke their function through the local Runtime
API (``runtime_api``): the status and headers go out as soon as the function starts its response,
each chunk as it comes; a response cut by the function ends the connection without HTTP's final
chunk, so the client sees the cut; a client that goes away cuts the function's response, so its
next write fails.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .runtime_api import (
    BodyChunk,
    Invocation,
    InvocationEvent,
    InvocationFailed,
    LocalFunction,
    ResponseCut,
    ResponseEnded,
    ResponseStarted,
    RuntimeApiError,
    Throttled,
)
from .template import ApiDefinition, Route

log = logging.getLogger("dnmon.local")

BODY_LIMIT = 10 * 1024 * 1024  # API Gateway's payload limit
READ_TIMEOUT = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
Handler = Callable[[dict[str, Any], Any], Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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
    """A ``module.function`` handler, imported as Lambda imports it."""
    module_name, _, function = name.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), function)
    return handler


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway enforces and how it names itself."""

    public_url: str | None = None  # what clients call; default http://<host>:<port>
    stage: str = ""
    auth_enabled: bool = True
    body_limit: int = BODY_LIMIT
    read_timeout: float = READ_TIMEOUT  # for a request head, and between pieces of a body
    keep_alive_seconds: int = 5
    backlog: int = 2048
    worker_threads: int = 256  # handlers, the authorizer and stream relays run in threads


# --- answers the gateway writes itself --------------------------------------------------------


def _problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


class _Rejected(Exception):
    """Answer with a problem and stop (``close``: the body is unread, so the connection ends)."""

    def __init__(self, status: int, title: str, detail: str, *, close: bool = False) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.close = status, title, detail, close


class _ClientLeft(Exception):
    """The client disconnected before its request was complete."""


class StreamCut(Exception):
    """Raised to make uvicorn close a started response without its final chunk."""


class _QuietCuts(logging.Filter):
    """uvicorn logs an app's exception as an error with a traceback; a cut stream is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


# --- the ASGI app ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    client_ip: str

    @classmethod
    def of(cls, scope: Scope) -> _Request:
        raw_path = bytes(scope.get("raw_path") or scope["path"].encode())
        client = scope.get("client") or ("127.0.0.1", 0)
        return cls(
            method=str(scope["method"]).upper(),
            path=raw_path.decode("ascii", "replace"),
            query=bytes(scope.get("query_string") or b"").decode("utf-8", "replace"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            client_ip=str(client[0]),
        )

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def declared_length(self) -> int | None:
        length = self.header("content-length")
        return int(length) if length is not None else None  # h11 has checked it is a number

    @property
    def has_body(self) -> bool:
        return bool(self.declared_length) or "chunked" in (self.header("transfer-encoding") or "").lower()


class Gateway:
    """The ASGI app: API Gateway's REST proxy integration in front of the template's functions."""

    def __init__(
        self,
        api: ApiDefinition,
        functions: Mapping[str, LocalFunction],
        settings: GatewaySettings,
        public_url: str,
    ) -> None:
        self.api = api
        self.functions = dict(functions)
        self.settings = settings
        public = urlsplit(public_url)
        self.scheme = public.scheme or "http"
        self.domain = public.netloc
        self.port = str(public.port or (443 if self.scheme == "https" else 80))
        self._handlers: dict[str, Handler] = {}
        self._handlers_lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        self._streams: set[Invocation] = set()
        self._streams_lock = threading.Lock()
        for route in api.routes:
            if route.streaming and route.function not in self.functions:
                where = f"{route.method} {route.path}"
                raise RuntimeApiError(f"no local Runtime API for {route.function} ({where})")

    def handler(self, name: str) -> Handler:
        with self._handlers_lock:
            if name not in self._handlers:
                self._handlers[name] = load_handler(name)
            return self._handlers[name]

    async def _in_thread(self, function: Callable[..., Any], *args: Any, abandon: bool = False) -> Any:
        if self._limiter is None:  # made in the event loop, as anyio requires
            self._limiter = anyio.CapacityLimiter(self.settings.worker_threads)
        return await anyio.to_thread.run_sync(
            function, *args, limiter=self._limiter, abandon_on_cancel=abandon
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = _Request.of(scope)
        try:
            await self._handle(request, receive, send)
        except _Rejected as rejected:
            await _send_problem(send, rejected.status, rejected.title, rejected.detail, close=rejected.close)
        except _ClientLeft:
            log.debug("client %s left before its request was complete", request.client_ip)

    async def _handle(self, request: _Request, receive: Receive, send: Send) -> None:
        close = request.has_body  # an early answer leaves the body unread: then the connection ends
        found = self.api.resolve(request.method, request.path)
        if found is None:
            raise _Rejected(404, "Not Found", f"No route for {request.method} {request.path}.", close=close)
        route, path_params = found
        declared = request.declared_length
        if declared is not None and declared > self.settings.body_limit:
            raise _Rejected(413, "Payload Too Large", self._too_large, close=True)
        event = self._event(route, request, path_params)
        if self.settings.auth_enabled:
            event["requestContext"]["authorizer"] = await self._authorize(event, close)
        body = await self._read_body(receive)
        binary = bool(body) and not _is_text(request.header("content-type") or "")
        if body:
            event["body"] = base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")
            event["isBase64Encoded"] = binary
        if route.streaming:
            await self._stream(route, event, receive, send)
        else:
            await self._buffered(route, event, send)

    @property
    def _too_large(self) -> str:
        return f"The request body exceeds API Gateway's {self.settings.body_limit} byte limit."

    # --- before the function: the event, the authorizer, the body ------------------------------

    def _event(self, route: Route, request: _Request, path_params: dict[str, str]) -> dict[str, Any]:
        """The REST proxy event; what names the API comes from configuration, not from the client."""
        given = {"host", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-for"}
        pairs = [(_canonical(k), v) for k, v in request.headers if k not in given]
        pairs += [
            ("Host", self.domain),
            ("X-Forwarded-For", request.client_ip),
            ("X-Forwarded-Host", self.domain),
            ("X-Forwarded-Port", self.port),
            ("X-Forwarded-Proto", self.scheme),
        ]
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for key, value in pairs:
            headers[key] = value
            multi_headers.setdefault(key, []).append(value)
        multi_query = parse_qs(request.query, keep_blank_values=True)
        stage = self.settings.stage
        return {
            "resource": route.path,
            "path": request.path,
            "httpMethod": request.method,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.path,
                "httpMethod": request.method,
                "path": f"/{stage}{request.path}" if stage else request.path,
                "stage": stage or "local",
                "domainName": self.domain,
                "requestId": str(uuid.uuid4()),
                "accountId": "000000000000",
                "apiId": "local",
                "identity": {"sourceIp": request.client_ip},
            },
            "body": None,
            "isBase64Encoded": False,
        }

    async def _authorize(self, event: dict[str, Any], close: bool) -> dict[str, Any]:
        """The REQUEST authorizer: no header → 401 without a call; raise → 401; Deny → 403."""
        name = self.api.authorizer_handler
        if name is None:
            return {}
        if "Authorization" not in event["headers"]:
            detail = "Authentication is required: send Authorization: Bearer <key>."
            raise _Rejected(401, "Unauthorized", detail, close=close)
        stage = self.settings.stage or "local"
        resource = f"{stage}/{event['httpMethod']}{event['path']}"
        method_arn = f"arn:aws:execute-api:local:000000000000:local/{resource}"
        request = {**event, "type": "REQUEST", "methodArn": method_arn}
        try:
            authorizer = self.handler(name)
        except Exception:  # API Gateway's AuthorizerConfigurationException
            log.exception("the authorizer %s cannot be loaded", name)
            raise _Rejected(
                500, "Internal Server Error", "The authorizer is misconfigured.", close=close
            ) from None
        try:
            policy = await self._in_thread(authorizer, request, LambdaContext(name))
            statements = (policy.get("policyDocument") or {}).get("Statement") or []
            allowed = any(s.get("Effect") == "Allow" for s in statements)
        except Exception as exc:  # "Unauthorized" (or any failure) is a 401, as in API Gateway
            log.debug("authorizer refused: %s", exc)
            raise _Rejected(401, "Unauthorized", "The API key was not accepted.", close=close) from None
        if not allowed:
            raise _Rejected(403, "Forbidden", "The authorizer denied this request.", close=close)
        return {"principalId": policy.get("principalId"), **(policy.get("context") or {})}

    async def _read_body(self, receive: Receive) -> bytes:
        """The body, never more than the limit, each piece within the read timeout."""
        body = bytearray()
        while True:
            try:
                with anyio.fail_after(self.settings.read_timeout):
                    message = await receive()
            except TimeoutError:
                raise _Rejected(
                    408, "Request Timeout", "The request body stopped arriving.", close=True
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            body += message.get("body", b"")
            if len(body) > self.settings.body_limit:
                raise _Rejected(413, "Payload Too Large", self._too_large, close=True)
            if not message.get("more_body", False):
                return bytes(body)

    # --- buffered routes -----------------------------------------------------------------------

    async def _buffered(self, route: Route, event: dict[str, Any], send: Send) -> None:
        try:
            handler = self.handler(route.handler)
            response = await self._in_thread(handler, event, LambdaContext(route.handler))
            status, headers, body = _buffered_response(response)
        except Exception:
            log.exception("handler %s failed", route.handler)
            raise _Rejected(502, "Bad Gateway", "The function failed; see the dnmon up log.") from None
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # --- streaming routes ----------------------------------------------------------------------

    async def _stream(self, route: Route, event: dict[str, Any], receive: Receive, send: Send) -> None:
        function = self.functions[route.function]
        try:
            invocation: Invocation = await self._in_thread(function.invoke, json.dumps(event).encode())
        except Throttled as exc:
            log.warning("%s", exc)
            raise _Rejected(429, "Too Many Requests", "The function is at its concurrency limit.") from None
        except RuntimeApiError as exc:
            raise _Rejected(502, "Bad Gateway", str(exc)) from None
        outcome: InvocationEvent | _Rejected | None = None
        with self._streams_lock:
            self._streams.add(invocation)
        try:
            async with anyio.create_task_group() as group:  # raising in here would wrap in a group
                group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                outcome = await self._relay(invocation, send)
                group.cancel_scope.cancel()
        finally:
            with self._streams_lock:
                self._streams.discard(invocation)
            if outcome is None:  # the client left (or the server is stopping): cut the function off
                invocation.client_gone()
        if isinstance(outcome, _Rejected):
            raise outcome
        if isinstance(outcome, ResponseCut):
            log.info("invocation %s cut: %s: %s", invocation.request_id, outcome.error_type, outcome.message)
            raise StreamCut(outcome.message)

    def cut_streams(self) -> None:
        """Cut every response in flight (the server is stopping): each client sees its stream cut."""
        with self._streams_lock:
            streams = list(self._streams)
        for invocation in streams:
            invocation.client_gone()

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """The body is read: the next message is ``http.disconnect``, when the client goes away."""
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _relay(self, invocation: Invocation, send: Send) -> InvocationEvent | _Rejected:
        """Status and headers when the function starts its response, then each chunk as it comes."""
        first = await self._in_thread(invocation.next_event, abandon=True)
        if isinstance(first, InvocationFailed):
            failure = f"{first.error_type}: {first.message}"
            log.warning("invocation %s failed: %s", invocation.request_id, failure)
            if first.timed_out:
                return _Rejected(504, "Gateway Timeout", "The function timed out before it answered.")
            return _Rejected(502, "Bad Gateway", "The function failed; see the dnmon up log.")
        if not isinstance(first, ResponseStarted):
            return _Rejected(502, "Bad Gateway", f"The function answered {type(first).__name__} first.")
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in first.headers
            if name.lower() not in HOP_BY_HOP
        ]
        await send({"type": "http.response.start", "status": first.status, "headers": headers})
        while True:
            item = await self._in_thread(invocation.next_event, abandon=True)
            if isinstance(item, BodyChunk):
                await send({"type": "http.response.body", "body": item.data, "more_body": True})
            elif isinstance(item, ResponseEnded):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return item
            elif isinstance(item, ResponseCut | InvocationFailed):
                return ResponseCut(item.error_type, item.message)


def _buffered_response(response: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A proxy integration's answer (statusCode, headers, multiValueHeaders, body) as HTTP parts."""
    if not isinstance(response, dict):
        raise TypeError(f"the handler returned {type(response).__name__}, not a proxy response")
    merged: dict[str, list[str]] = {}
    for key, value in (response.get("headers") or {}).items():
        merged.setdefault(key, []).append(str(value))
    for key, values in (response.get("multiValueHeaders") or {}).items():
        merged[key] = [str(v) for v in values]
    headers: list[tuple[bytes, bytes]] = []
    for key, values in merged.items():
        if key.lower() in HOP_BY_HOP:
            continue
        for value in values:
            if "\r" in value or "\n" in value or "\r" in key or "\n" in key:
                raise ValueError(f"the handler's header {key!r} holds a line break")
            headers.append((key.encode("latin-1"), value.encode("latin-1")))
    body = response.get("body") or ""
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
    return int(response.get("statusCode", 200)), headers, raw


async def _send_problem(send: Send, status: int, title: str, detail: str, *, close: bool = False) -> None:
    body = _problem(status, title, detail)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _canonical(name: str) -> str:
    """``content-type`` → ``Content-Type``: uvicorn lowercases names; clients send them like this."""
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _is_text(content_type: str) -> bool:
    lowered = content_type.lower()
    return lowered.startswith("text/") or "json" in lowered or not lowered


# --- the server ------------------------------------------------------------------------------------


_FOLDED = re.compile(rb"\n[ \t]")  # a header line that continues the previous one (obs-fold)
MAX_HEAD_BYTES = 64 * 1024  # h11 refuses a head past 16 KiB itself


def _raw_problem(status: int, reason: str, detail: str) -> bytes:
    """A whole problem response with ``connection: close``, for answers before h11 has a request."""
    body = _problem(status, reason, detail)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
    )


def _edge_protocol(read_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, plus a deadline for each request head and no folded headers.

    uvicorn arms no timer before a request head is complete (its keep-alive timer stops at the
    first byte), so a client that sends part of its headers and stalls would hold the connection
    forever: this one answers 408 and closes after ``read_timeout``. h11 unfolds obs-fold lines
    into spaces, which RFC 9112 allows; refusing them with 400 is the other choice it allows, and
    the one that keeps a folded Host from meaning two things to two parsers.
    """

    class EdgeProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head: bytearray | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                if self._head_timer is None:
                    self._arm()  # the first byte of the next request on a kept-alive connection
                if self._folded(data):
                    self._refuse(400, "Bad Request", "Folded (obs-fold) header lines are not accepted.")
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()
                self._head = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _folded(self, data: bytes) -> bool:
            """Whether the head received so far folds a header line."""
            if self._head is None:
                self._head = bytearray()
            if len(self._head) < MAX_HEAD_BYTES:
                self._head += data[: MAX_HEAD_BYTES - len(self._head)]
            ends = [i for i in (self._head.find(b"\r\n\r\n"), self._head.find(b"\n\n")) if i >= 0]
            head = self._head[: min(ends)] if ends else self._head
            return _FOLDED.search(head) is not None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(read_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE:
                self._refuse(408, "Request Timeout", "The request head did not arrive in time.")

        def _refuse(self, status: int, reason: str, detail: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_raw_problem(status, reason, detail))
                self.transport.close()

    return EdgeProtocol


class GatewayServer:
    """The gateway on a uvicorn server in a daemon thread: ``start``, then ``stop``."""

    def __init__(
        self,
        api: ApiDefinition,
        functions: Mapping[str, LocalFunction],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: GatewaySettings | None = None,
    ) -> None:
        self.settings = settings or GatewaySettings()
        self._socket = socket.create_server((host, port), backlog=self.settings.backlog)  # OSError: taken
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        try:
            self.app = Gateway(api, functions, self.settings, self.settings.public_url or self.url)
        except BaseException:
            self._socket.close()
            raise
        config = uvicorn.Config(
            self.app,
            http=_edge_protocol(self.settings.read_timeout),
            backlog=self.settings.backlog,
            timeout_keep_alive=self.settings.keep_alive_seconds,
            timeout_graceful_shutdown=2,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # X-Forwarded-* from a client must not change who it is
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietCuts) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(_QuietCuts())

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the gateway stopped while starting; see the log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start within {timeout} s")
            time.sleep(0.01)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # SystemExit included: uvicorn exits on a startup failure
            log.exception("the gateway stopped")

    def stop(self) -> None:
        """Stop accepting, let answers in flight finish (2 s at most), then return."""
        if self._thread is None:
            self._socket.close()
            return
        self._server.should_exit = True
        self.app.cut_streams()  # else they would hold the shutdown for its whole grace period
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.error("the gateway thread did not stop")


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
