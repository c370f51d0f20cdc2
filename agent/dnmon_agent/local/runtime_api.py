"""A local Lambda Runtime API for one function: real execution environments, AWS's documented protocol.

API Gateway invokes a streaming route's function with InvokeWithResponseStream; ``dnmon up`` does the
same here, so the deployed code runs unchanged. Each execution environment is a subprocess started
as Lambda starts it (through the function's ``AWS_LAMBDA_EXEC_WRAPPER``, ``/var/task`` mapped to the
checkout), and it talks to this module over the Runtime API (``/2018-06-01/runtime/...``) as it
would to Lambda's. Nothing here knows dnmon.

The gateway's side: ``LocalFunction.invoke(event)`` returns an ``Invocation`` whose ``next_event()``
gives ``ResponseStarted`` (the prelude's status and headers) or ``InvocationFailed``, then
``BodyChunk``s as the function writes them, then ``ResponseEnded`` or ``ResponseCut`` (the error
trailers). ``Invocation.client_gone()`` cuts the function's response connection, so its next write
fails: that is how a handler learns that its caller went away.

Each environment has its own loopback endpoint, as each Lambda sandbox has, served with h11 on a
thread per connection: an ASGI server cannot see request trailers, and the trailers are how a
streamed response reports a failure after its first byte.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import enum
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import h11

from .template import Function

log = logging.getLogger("dnmon.local.runtime")

API_PREFIX = "/2018-06-01/runtime/"
TASK_ROOT = "/var/task/"
HTTP_INTEGRATION_RESPONSE = "application/vnd.awslambda.http-integration-response"
PRELUDE_DELIMITER = b"\0" * 8
MAX_PRELUDE_BYTES = 64 * 1024
MAX_BUFFERED_RESPONSE_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
MAX_ERROR_BYTES = 1024 * 1024
ERROR_TYPE_TRAILER = "lambda-runtime-function-error-type"
ERROR_BODY_TRAILER = "lambda-runtime-function-error-body"
CHUNKS_IN_FLIGHT = 64  # per invocation: then the function's writes wait for the gateway (backpressure)
READ_SIZE = 64 * 1024
DEFAULT_MAX_ENVIRONMENTS = 8
DEFAULT_MAX_QUEUED = 64


# --- what the gateway receives ------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseStarted:
    """The prelude: the function started its response."""

    status: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BodyChunk:
    data: bytes


@dataclass(frozen=True)
class ResponseEnded:
    """The response is complete."""


@dataclass(frozen=True)
class ResponseCut:
    """The response broke after it started: the caller must see the stream cut, not ended."""

    error_type: str
    message: str


@dataclass(frozen=True)
class InvocationFailed:
    """The invocation failed before a response started."""

    error_type: str
    message: str
    timed_out: bool = False


InvocationEvent = ResponseStarted | BodyChunk | ResponseEnded | ResponseCut | InvocationFailed
FINAL_EVENTS = (ResponseEnded, ResponseCut, InvocationFailed)


class RuntimeApiError(Exception):
    """The local Lambda service cannot take the invocation (the subclass says why)."""


class Throttled(RuntimeApiError):
    """Every environment is busy and the queue is full (Lambda's TooManyRequestsException)."""


class FunctionClosed(RuntimeApiError):
    """The local function is shutting down."""


# --- one invocation -----------------------------------------------------------------------------


class Invocation:
    """One call's events, handed from the environment's connection thread to the gateway."""

    def __init__(self, payload: bytes, timeout_seconds: int) -> None:
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.timeout_seconds = timeout_seconds
        self.deadline = 0.0  # epoch seconds, set when an environment takes it
        self._cond = threading.Condition()
        self._items: collections.deque[InvocationEvent] = collections.deque()
        self._final: InvocationEvent | None = None
        self._started = False
        self._gone = False
        self._abort: Callable[[], None] | None = None

    # the gateway's side

    def next_event(self, timeout: float | None = None) -> InvocationEvent:
        """The next event; after the final one, the final one again. TimeoutError past ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._final is not None, timeout):
                raise TimeoutError(f"invocation {self.request_id}: no event within {timeout} s")
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            assert self._final is not None
            return self._final

    def client_gone(self) -> None:
        """The caller went away: drop what is pending and break the function's response connection."""
        with self._cond:
            self._gone = True
            self._items.clear()
            abort = self._abort
            if self._final is None:
                self._final = ResponseCut("Client.Gone", "the caller went away")
            self._cond.notify_all()
        if abort is not None:
            abort()

    # the environment's side

    @property
    def gone(self) -> bool:
        with self._cond:
            return self._gone

    @property
    def done(self) -> bool:
        with self._cond:
            return self._final is not None

    @property
    def started(self) -> bool:
        with self._cond:
            return self._started

    def on_gone(self, abort: Callable[[], None] | None) -> None:
        """What ``client_gone`` runs to break the response connection (run at once if already gone)."""
        with self._cond:
            self._abort = abort
            gone = self._gone
        if gone and abort is not None:
            abort()

    def deliver(self, item: ResponseStarted | BodyChunk) -> bool:
        """Queue a prelude or chunk, waiting while the gateway is behind; False once nobody reads."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < CHUNKS_IN_FLIGHT or self._final is not None)
            if self._final is not None:
                return False
            if isinstance(item, ResponseStarted):
                self._started = True
            self._items.append(item)
            self._cond.notify_all()
            return True

    def finish(self, item: ResponseEnded | ResponseCut | InvocationFailed) -> bool:
        """Set the outcome once; a failure after the prelude becomes a cut. False if already set."""
        with self._cond:
            if self._final is not None:
                return False
            if isinstance(item, InvocationFailed) and self._started:
                item = ResponseCut(item.error_type, item.message)
            elif isinstance(item, ResponseCut) and not self._started:
                item = InvocationFailed(item.error_type, item.message)
            self._final = item
            self._cond.notify_all()
            return True


# --- the environments ---------------------------------------------------------------------------


class _State(enum.Enum):
    STARTING = "starting"  # the process has not asked for an invocation yet
    IDLE = "idle"  # waiting in invocation/next
    BUSY = "busy"
    DEAD = "dead"


class _Environment:
    """One execution environment: a process, its Runtime API endpoint, its current invocation."""

    def __init__(self, number: int, listener: socket.socket) -> None:
        self.number = number
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None
        self.state = _State.STARTING
        self.invocation: Invocation | None = None
        self.timer: threading.Timer | None = None
        self.init_error: str | None = None

    def kill(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the wrapper's whole session
        except ProcessLookupError:
            pass
        except OSError:
            log.exception("cannot kill execution environment %s", process.pid)


class LocalFunction:
    """One function's execution environments behind the Runtime API, as Lambda runs them.

    An environment serves one invocation at a time. ``start`` warms some; when all are busy an
    invocation starts another, up to ``max_environments``; beyond, invocations queue, and past
    ``max_queued`` waiting ones ``invoke`` raises ``Throttled``.
    """

    def __init__(
        self,
        function: Function,
        task_root: Path,
        *,
        max_environments: int = DEFAULT_MAX_ENVIRONMENTS,
        max_queued: int = DEFAULT_MAX_QUEUED,
        region: str = "us-east-1",
    ) -> None:
        if function.exec_wrapper is None:
            raise RuntimeApiError(f"function {function.logical_id} has no AWS_LAMBDA_EXEC_WRAPPER to start")
        self.function = function
        self.task_root = task_root.resolve()
        self.max_environments = max_environments
        self.max_queued = max_queued
        self.arn = f"arn:aws:lambda:{region}:000000000000:function:{function.logical_id}"
        self._lock = threading.Condition()
        self._queue: collections.deque[Invocation] = collections.deque()
        self._environments: list[_Environment] = []
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._numbers = iter(range(1, sys.maxsize))
        self._closed = False
        self._logs = logging.getLogger(f"dnmon.lambda.{function.logical_id}")

    @property
    def wrapper(self) -> Path:
        """The exec wrapper on this machine: ``/var/task/`` is the task root."""
        wrapper = str(self.function.exec_wrapper)
        if wrapper.startswith(TASK_ROOT):
            return self.task_root / wrapper[len(TASK_ROOT) :]
        return Path(wrapper)

    def start(self, warm: int = 1) -> None:
        """Start ``warm`` environments now, so the first invocation does not wait for a cold start."""
        with self._lock:
            for _ in range(min(warm, self.max_environments)):
                self._spawn()

    def invoke(self, payload: bytes) -> Invocation:
        """Queue an invocation for the next free environment (starting one if none is free)."""
        invocation = Invocation(payload, self.function.timeout_seconds)
        with self._lock:
            if self._closed:
                raise FunctionClosed(f"function {self.function.logical_id} is shutting down")
            free = sum(e.state in (_State.STARTING, _State.IDLE) for e in self._environments)
            backlog = len(self._queue) - free
            if backlog >= 0:
                if len(self._environments) < self.max_environments:
                    self._spawn()
                elif backlog >= self.max_queued:
                    raise Throttled(
                        f"function {self.function.logical_id}: {len(self._environments)} environments "
                        f"busy and {len(self._queue)} invocations waiting"
                    )
            self._queue.append(invocation)
            self._lock.notify_all()
        return invocation

    def close(self) -> None:
        """Fail what waits, kill every environment, close the endpoints."""
        with self._lock:
            self._closed = True
            queued, self._queue = list(self._queue), collections.deque()
            environments = list(self._environments)
            self._lock.notify_all()
        for invocation in queued:
            invocation.finish(InvocationFailed("Function.Closed", "the local function shut down"))
        for environment in environments:
            if environment.invocation is not None:
                environment.invocation.finish(
                    InvocationFailed("Function.Closed", "the local function shut down")
                )
            environment.kill()
            _close_listener(environment.listener)
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    # --- environments: start, exit, deadline -------------------------------------------------

    def _spawn(self) -> None:
        """Start one environment (the caller holds the lock)."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        environment = _Environment(next(self._numbers), listener)
        env = {
            **os.environ,
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{environment.port}",
            "AWS_LAMBDA_EXEC_WRAPPER": str(self.function.exec_wrapper),
            "_HANDLER": self.function.handler,
            "LAMBDA_TASK_ROOT": str(self.task_root),
            "AWS_LAMBDA_FUNCTION_NAME": self.function.logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.function.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        try:
            environment.process = subprocess.Popen(
                [str(self.wrapper)],
                env=env,
                cwd=self.task_root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            listener.close()
            raise RuntimeApiError(f"cannot start {self.wrapper}: {exc}") from exc
        self._environments.append(environment)
        name = f"{self.function.logical_id}-{environment.number}"
        self._thread(f"{name}-api", self._accept, environment)
        self._thread(f"{name}-watch", self._watch, environment)
        log.info("started execution environment %s (pid %s)", name, environment.process.pid)

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("thread %s failed", name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _watch(self, environment: _Environment) -> None:
        """Relay the environment's output to the log (its CloudWatch), then handle its exit."""
        process = environment.process
        assert process is not None and process.stdout is not None
        _relay_lines(process.stdout, self._logs, environment.number)
        code = process.wait()
        _close_listener(environment.listener)
        with self._lock:
            was = environment.state
            environment.state = _State.DEAD
            if environment in self._environments:
                self._environments.remove(environment)
            if environment.timer is not None:
                environment.timer.cancel()
            invocation = environment.invocation
            starved: Invocation | None = None
            if was is _State.STARTING and self._queue:
                starved = self._queue.popleft()  # the invocation that started it fails with it
            if was is _State.STARTING and self._queue and not self._closed:
                self._spawn()  # the others still need an environment
            self._lock.notify_all()  # its connection may be waiting in invocation/next
        if was is _State.STARTING:
            detail = environment.init_error or f"the runtime exited with code {code} before its first call"
            log.warning("execution environment %s failed to start: %s", environment.number, detail)
            if starved is not None:
                starved.finish(InvocationFailed("Runtime.InitError", detail))
        elif invocation is not None and not invocation.done and not self._closed:
            log.warning(
                "execution environment %s exited with code %s mid-invocation", environment.number, code
            )
            invocation.finish(InvocationFailed("Runtime.ExitError", f"the runtime exited with code {code}"))

    def _take(self, environment: _Environment) -> Invocation | None:
        """invocation/next: end the previous invocation, then wait for the next one."""
        with self._lock:
            self._end_invocation(environment)
            if environment.state is not _State.DEAD:
                environment.state = _State.IDLE
            while True:
                self._lock.wait_for(
                    lambda: self._closed or bool(self._queue) or environment.state is _State.DEAD
                )
                if self._closed or environment.state is _State.DEAD:
                    return None
                invocation = self._queue.popleft()
                if not invocation.done:  # a caller that left while queued is skipped
                    break
            environment.state = _State.BUSY
            environment.invocation = invocation
            invocation.deadline = time.time() + invocation.timeout_seconds
            timer = threading.Timer(
                invocation.timeout_seconds, self._expire_logged, (environment, invocation)
            )
            timer.daemon = True
            environment.timer = timer
            timer.start()
            return invocation

    def _end_invocation(self, environment: _Environment) -> None:
        if environment.timer is not None:
            environment.timer.cancel()
            environment.timer = None
        previous, environment.invocation = environment.invocation, None
        if previous is not None:
            previous.finish(
                InvocationFailed("Runtime.NoResponse", "the function returned without a response")
            )

    def _expire_logged(self, environment: _Environment, invocation: Invocation) -> None:
        try:
            self._expire(environment, invocation)
        except Exception:
            log.exception("the deadline of invocation %s could not be enforced", invocation.request_id)

    def _expire(self, environment: _Environment, invocation: Invocation) -> None:
        """Past the function's Timeout: Lambda stops the environment, and the response is cut."""
        with self._lock:
            if environment.invocation is not invocation:
                return
        seconds = invocation.timeout_seconds
        log.warning(
            "invocation %s timed out after %s s: stopping its environment", invocation.request_id, seconds
        )
        invocation.finish(
            InvocationFailed("Sandbox.Timedout", f"Task timed out after {seconds}.00 seconds", timed_out=True)
        )
        environment.kill()

    # --- the Runtime API endpoint ----------------------------------------------------------------

    def _accept(self, environment: _Environment) -> None:
        while True:
            try:
                connection, _ = environment.listener.accept()
            except OSError:  # the listener was closed: the environment is gone
                return
            self._thread(
                f"{self.function.logical_id}-{environment.number}-conn", self._serve, environment, connection
            )

    def _serve(self, environment: _Environment, sock: socket.socket) -> None:
        """One connection from the runtime: requests in order, until it closes."""
        peer = _Peer(sock)
        try:
            while True:
                event = peer.next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request)
                self._route(environment, peer, event)
                if peer.conn.our_state is not h11.DONE or peer.conn.their_state is not h11.DONE:
                    return
                peer.conn.start_next_cycle()
        except _ConnectionDone:
            pass
        except (OSError, h11.ProtocolError) as exc:
            log.debug("runtime connection of environment %s ended: %s", environment.number, exc)
        finally:
            peer.close()

    def _route(self, environment: _Environment, peer: _Peer, request: h11.Request) -> None:
        method = request.method.decode()
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if not path.startswith(API_PREFIX):
            peer.discard_body(MAX_ERROR_BYTES)
            peer.respond(404, {"errorType": "NotFound", "errorMessage": f"no such path {path}"})
            return
        parts = path[len(API_PREFIX) :].split("/")
        if method == "GET" and parts == ["invocation", "next"]:
            peer.discard_body(MAX_ERROR_BYTES)
            self._next(environment, peer)
        elif method == "POST" and parts == ["init", "error"]:
            environment.init_error = _error_text(peer.read_body(MAX_ERROR_BYTES))
            peer.respond(202, {"status": "OK"})
        elif (
            method == "POST"
            and len(parts) == 3
            and parts[0] == "invocation"
            and parts[2] in ("response", "error")
        ):
            invocation = environment.invocation
            if invocation is None or invocation.request_id != parts[1]:
                peer.discard_body(MAX_ERROR_BYTES)
                peer.respond(400, {"errorType": "InvalidRequestID", "errorMessage": "unknown request id"})
            elif parts[2] == "error":
                text = _error_text(peer.read_body(MAX_ERROR_BYTES))
                error_type = _header(request, "lambda-runtime-function-error-type") or "Function.Error"
                invocation.finish(InvocationFailed(error_type, text))
                peer.respond(202, {"status": "OK"})
            else:
                self._response(invocation, peer, request)
        else:
            peer.discard_body(MAX_ERROR_BYTES)
            peer.respond(404, {"errorType": "NotFound", "errorMessage": f"no such route {method} {path}"})

    def _next(self, environment: _Environment, peer: _Peer) -> None:
        invocation = self._take(environment)
        if invocation is None:
            peer.respond(410, {"errorType": "Function.Closed", "errorMessage": "shutting down"})
            return
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": self.arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
        }
        try:
            peer.respond_raw(200, headers, invocation.payload)
        except OSError as exc:
            invocation.finish(InvocationFailed("Runtime.ExitError", f"the runtime went away: {exc}"))
            raise

    def _response(self, invocation: Invocation, peer: _Peer, request: h11.Request) -> None:
        """invocation/{id}/response, buffered or streamed: prelude, chunks, then trailers or the end."""
        streaming = (_header(request, "lambda-runtime-function-response-mode") or "").lower() == "streaming"
        parser = _ResponseParser(_header(request, "content-type") or "application/octet-stream")
        invocation.on_gone(peer.abort)
        size = 0
        try:
            while True:
                event = peer.next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if not streaming and size > MAX_BUFFERED_RESPONSE_BYTES:
                        invocation.finish(
                            InvocationFailed("Function.ResponseSizeTooLarge", "the response is too large")
                        )
                        peer.respond(413, {"errorType": "RequestEntityTooLarge", "errorMessage": "too large"})
                        return
                    for item in parser.feed(event.data):
                        if not invocation.deliver(item):
                            peer.abort()  # the caller is gone: the function's next write fails
                            return
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a response")
        except (OSError, h11.ProtocolError, _BadResponse) as exc:
            if invocation.gone:
                return
            broken = "Runtime.InvalidResponse" if isinstance(exc, _BadResponse) else "Runtime.ResponseBroken"
            invocation.finish(InvocationFailed(broken, f"the function's response broke off: {exc}"))
            raise _ConnectionDone from None
        finally:
            invocation.on_gone(None)
        trailers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}
        error_type = trailers.get(ERROR_TYPE_TRAILER)
        try:
            if error_type:
                invocation.finish(
                    InvocationFailed(error_type, _error_text(trailers.get(ERROR_BODY_TRAILER, ""), True))
                )
            else:
                for item in parser.end():
                    invocation.deliver(item)
                invocation.finish(ResponseEnded())
        except _BadResponse as exc:
            invocation.finish(InvocationFailed("Runtime.InvalidResponse", str(exc)))
        peer.respond(202, {"status": "OK"})


# --- the HTTP connection (h11 over a blocking socket) -----------------------------------------------


class _ConnectionDone(Exception):
    """Stop serving this connection (it broke or was cut on purpose)."""


class _Peer:
    """One runtime connection: h11 events in, responses out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.SERVER)
        self._aborted = False

    def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._aborted:
                raise _ConnectionDone
            try:
                data = self.sock.recv(READ_SIZE)
            except OSError:
                if self._aborted:
                    raise _ConnectionDone from None
                raise
            self.conn.receive_data(data)

    def read_body(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            event = self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    def discard_body(self, limit: int) -> None:
        self.read_body(limit)

    def respond(self, status: int, payload: dict[str, Any]) -> None:
        self.respond_raw(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())

    def respond_raw(self, status: int, headers: dict[str, str], body: bytes) -> None:
        pairs = [*headers.items(), ("Content-Length", str(len(body)))]
        out = self.conn.send(h11.Response(status_code=status, headers=pairs))
        out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out or b"")

    def abort(self) -> None:
        """Reset the connection (from any thread): the runtime's next write fails."""
        self._aborted = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- the response body: prelude, then payload ---------------------------------------------------------


class _BadResponse(Exception):
    """The function's response is not what API Gateway accepts."""


class _ResponseParser:
    """Splits API Gateway's HTTP-integration response (JSON prelude, eight NULs, payload) as it comes.

    Any other content type is a bare payload: status 200 with that type, as Lambda relays it.
    """

    def __init__(self, content_type: str) -> None:
        self._prelude: bytearray | None = None
        self._content_type = content_type
        if content_type.split(";")[0].strip().lower() == HTTP_INTEGRATION_RESPONSE:
            self._prelude = bytearray()
        self._started = False

    def feed(self, data: bytes) -> list[ResponseStarted | BodyChunk]:
        items: list[ResponseStarted | BodyChunk] = []
        if not self._started:
            if self._prelude is None:
                items.append(ResponseStarted(200, (("Content-Type", self._content_type),)))
                self._started = True
            else:
                self._prelude += data
                end = self._prelude.find(PRELUDE_DELIMITER)
                if end < 0:
                    if len(self._prelude) > MAX_PRELUDE_BYTES:
                        raise _BadResponse("the response prelude has no end")
                    return items
                items.append(_prelude(bytes(self._prelude[:end])))
                data = bytes(self._prelude[end + len(PRELUDE_DELIMITER) :])
                self._started = True
        if data:
            items.append(BodyChunk(bytes(data)))
        return items

    def end(self) -> list[ResponseStarted | BodyChunk]:
        if self._started:
            return []
        if self._prelude:
            raise _BadResponse("the response ended inside its prelude")
        self._started = True
        if self._prelude is not None:
            return [ResponseStarted(200, ())]  # an empty streamed response
        return [ResponseStarted(200, (("Content-Type", self._content_type),))]


def _prelude(raw: bytes) -> ResponseStarted:
    """``{"statusCode": 200, "headers": {...}, "multiValueHeaders": {...}, "cookies": [...]}``."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadResponse(f"the response prelude is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _BadResponse("the response prelude is not a JSON object")
    status = document.get("statusCode", 200)
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise _BadResponse(f"the response prelude's statusCode {status!r} is not an HTTP status")
    headers: list[tuple[str, str]] = []
    for name, value in (document.get("headers") or {}).items():
        headers.append((str(name), str(value)))
    for name, values in (document.get("multiValueHeaders") or {}).items():
        headers = [h for h in headers if h[0].lower() != str(name).lower()]
        headers += [(str(name), str(v)) for v in (values if isinstance(values, list) else [values])]
    headers += [("Set-Cookie", str(cookie)) for cookie in document.get("cookies") or []]
    return ResponseStarted(status, tuple(headers))


# --- small helpers ---------------------------------------------------------------------------------


def _header(request: h11.Request, name: str) -> str | None:
    wanted = name.encode()
    for key, value in request.headers:
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def _error_text(raw: bytes | str, base64_json: bool = False) -> str:
    """The ``errorMessage`` of a Runtime API error document (raw JSON or base64 JSON)."""
    try:
        text = base64.b64decode(raw, validate=True) if base64_json else raw
        document = json.loads(text)
    except (binascii.Error, ValueError):
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not isinstance(document, dict):
        return str(document)
    return str(document.get("errorMessage", ""))


def _relay_lines(stream: IO[bytes], logger: logging.Logger, number: int) -> None:
    for line in stream:
        logger.info("[%s] %s", number, line.decode("utf-8", "replace").rstrip())


def _close_listener(listener: socket.socket) -> None:
    """Wake the accept loop (a plain close does not, on Linux) and release the port."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
