"""Our Lambda runtime loop: a Python handler whose response streams (the Runtime API's streaming mode).

The managed Python runtime answers only once, with the whole body, so the capture routes could not
stream on AWS. The StreamFunction's exec wrapper (``stream_bootstrap``) replaces that runtime's
bootstrap with this loop, which speaks Lambda's Runtime API itself (docs/streaming.md):

- ``GET /2018-06-01/runtime/invocation/next`` gives an event;
- the handler, ``handler(event, context, stream)``, starts the response with a status and headers,
  writes the body as it is produced, and ends it; this loop sends it as one chunked
  ``POST .../invocation/{id}/response`` in ``streaming`` mode, with API Gateway's HTTP-integration
  prelude (JSON metadata, then eight NUL bytes) before the body;
- a failure after the first byte is reported in the ``Lambda-Runtime-Function-Error-*`` trailers,
  so the caller sees the stream cut rather than ended; a failure before it is an ordinary
  ``.../error`` report.

``dnmon up`` runs this same module against a local emulation of the Runtime API.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("dnmon.runtime")

API_VERSION = "2018-06-01"
HTTP_INTEGRATION_RESPONSE = "application/vnd.awslambda.http-integration-response"
PRELUDE_DELIMITER = b"\0" * 8
ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"


class ClientGone(ConnectionError):
    """The response stream broke: the caller went away (or Lambda ended the invocation)."""


class ResponseStream(Protocol):
    """What a streaming handler writes its response to."""

    @property
    def started(self) -> bool: ...

    def start(self, status_code: int, headers: Mapping[str, str]) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def fail(self, error_type: str, message: str) -> None: ...


StreamingHandler = Callable[[dict[str, Any], Any, ResponseStream], None]


@dataclass
class InvocationContext:
    """The Lambda context object, with what Powertools and our handlers read from it."""

    aws_request_id: str
    deadline_ms: int
    invoked_function_arn: str
    function_name: str = field(default_factory=lambda: os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dnmon"))
    function_version: str = field(
        default_factory=lambda: os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    )
    memory_limit_in_mb: int = field(
        default_factory=lambda: int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"))
    )
    log_group_name: str = field(default_factory=lambda: os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""))
    log_stream_name: str = field(default_factory=lambda: os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", ""))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port or 80)


class RuntimeResponseStream:
    """One invocation's streamed response: a chunked POST to the Runtime API, opened by ``start``."""

    def __init__(self, api: str, request_id: str) -> None:
        self._api = api
        self._path = f"/{API_VERSION}/runtime/invocation/{request_id}/response"
        self._conn: http.client.HTTPConnection | None = None
        self._ended = False

    @property
    def started(self) -> bool:
        return self._conn is not None

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self, status_code: int, headers: Mapping[str, str]) -> None:
        if self._conn is not None:
            raise RuntimeError("the response has already started")
        prelude = json.dumps({"statusCode": status_code, "headers": dict(headers)}).encode()
        conn = http.client.HTTPConnection(*_split(self._api))
        try:
            conn.putrequest("POST", self._path, skip_accept_encoding=True)
            conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
            conn.putheader("Content-Type", HTTP_INTEGRATION_RESPONSE)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Trailer", f"{ERROR_TYPE_TRAILER}, {ERROR_BODY_TRAILER}")
            conn.endheaders()
        except OSError as exc:
            conn.close()
            raise ClientGone(f"the Runtime API refused the response: {exc}") from exc
        self._conn = conn
        self._chunk(prelude + PRELUDE_DELIMITER)

    def write(self, data: bytes) -> None:
        if self._conn is None:
            raise RuntimeError("start the response before writing to it")
        if data:
            self._chunk(data)

    def _chunk(self, data: bytes) -> None:
        assert self._conn is not None
        try:
            self._conn.send(b"%X\r\n%s\r\n" % (len(data), data))
        except OSError as exc:
            self._close()
            raise ClientGone(f"the response stream broke: {exc}") from exc

    def end(self) -> None:
        self._finish(b"0\r\n\r\n")

    def fail(self, error_type: str, message: str) -> None:
        """End without completing: the trailers tell Lambda the response failed part-way."""
        body = base64.b64encode(json.dumps({"errorType": error_type, "errorMessage": message}).encode())
        trailers = f"{ERROR_TYPE_TRAILER}: {error_type}\r\n{ERROR_BODY_TRAILER}: {body.decode()}\r\n"
        self._finish(b"0\r\n" + trailers.encode() + b"\r\n")

    def _finish(self, last: bytes) -> None:
        if self._conn is None or self._ended:
            return
        self._ended = True
        try:
            self._conn.send(last)
            self._conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            log.info("the Runtime API did not acknowledge the response: %s", exc)
        finally:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class RuntimeClient:
    """The non-streaming calls of the Runtime API: next event, error reports."""

    def __init__(self, api: str) -> None:
        self.api = api

    def _request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, Any, bytes]:
        conn = http.client.HTTPConnection(*_split(self.api))  # no timeout: /next blocks until an event
        try:
            conn.request(method, f"/{API_VERSION}/runtime/{path}", body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def next(self) -> tuple[dict[str, Any], InvocationContext]:
        status, headers, body = self._request("GET", "invocation/next")
        if status != 200:
            raise ConnectionError(f"the Runtime API answered {status} to invocation/next")
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        trace_id = headers.get("Lambda-Runtime-Trace-Id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = InvocationContext(
            aws_request_id=request_id,
            deadline_ms=int(headers.get("Lambda-Runtime-Deadline-Ms", "0")),
            invoked_function_arn=headers.get("Lambda-Runtime-Invoked-Function-Arn", ""),
        )
        event: dict[str, Any] = json.loads(body)
        return event, context

    def error(self, path: str, exc: BaseException) -> None:
        payload = {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "stackTrace": traceback.format_exception(exc),
        }
        self._request(
            "POST",
            path,
            json.dumps(payload).encode(),
            **{"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": type(exc).__name__},
        )


def load_handler(name: str) -> StreamingHandler:
    module_name, _, function = name.rpartition(".")
    handler: StreamingHandler = getattr(importlib.import_module(module_name), function)
    return handler


def invoke(client: RuntimeClient, handler: StreamingHandler) -> None:
    """One invocation: whatever the handler does, Lambda hears exactly one outcome."""
    event, context = client.next()
    stream = RuntimeResponseStream(client.api, context.aws_request_id)
    try:
        handler(event, context, stream)
    except ClientGone as exc:
        log.info("invocation %s: the caller went away: %s", context.aws_request_id, exc)
        return
    except Exception as exc:
        log.exception("invocation %s failed", context.aws_request_id)
        if stream.started:
            stream.fail(type(exc).__name__, str(exc))
        else:
            client.error(f"invocation/{context.aws_request_id}/error", exc)
        return
    if not stream.started:
        client.error(
            f"invocation/{context.aws_request_id}/error", RuntimeError("the handler sent no response")
        )
    else:
        stream.end()


def main(api: str | None = None, handler_name: str | None = None) -> None:
    """The loop Lambda runs: load the handler once, then serve invocations until the sandbox ends."""
    logging.basicConfig(level=os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO"), stream=sys.stdout)
    client = RuntimeClient(api or os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(handler_name or os.environ["_HANDLER"])
    except Exception as exc:  # Lambda reports an init error and does not invoke a broken sandbox
        client.error("init/error", exc)
        raise SystemExit(1) from exc
    while True:
        invoke(client, handler)


if __name__ == "__main__":
    # Run as ``python -m``, this file is ``__main__``; the handler imports ``dnmon_api.runtime``.
    # One module, so that the ClientGone the stream raises is the one the handler catches.
    from dnmon_api.runtime import main as run

    run()
