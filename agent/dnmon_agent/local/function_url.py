"""A local Lambda function URL (``AuthType: AWS_IAM``): SigV4 checked, then the real handler runs.

The agent API is deployed behind a function URL; the local stack and tests serve the same handler
(named in infra/template.yaml) the same way: a request whose signature does not verify is a 403
without calling the function, a verified one becomes a payload-2.0 event carrying the caller's
identity in ``requestContext.authorizer.iam``, as Lambda builds it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import template
from .gateway import Handler, LambdaContext, load_handler
from .sigv4 import Identity, SignatureRefused, verify

log = logging.getLogger("dnmon.local")

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit


class FunctionUrl(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler_name: str, identities: Mapping[str, Identity]
    ) -> None:
        super().__init__(address, _Request)
        self.handler_name = handler_name
        self.identities = dict(identities)
        self._handler: Handler | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (or a cut network in tests) is not a server fault."""
        log.debug("function URL connection from %s ended badly", client_address, exc_info=True)

    def handler(self) -> Handler:
        if self._handler is None:
            self._handler = load_handler(self.handler_name)
        return self._handler

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Request(BaseHTTPRequestHandler):
    server: FunctionUrl
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"Message": message}).encode(), {"Content-Type": "application/json"})

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._refuse(413, "Request must be smaller than 6291456 bytes for the InvokeFunction operation")
            return
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        url = f"http://{self.headers.get('Host', '')}{self.path}"
        try:
            access_key, identity = verify(self.command, url, headers, body, self.server.identities)
        except SignatureRefused as exc:
            log.info("function URL request refused: %s", exc)
            self._refuse(403, "Forbidden")
            return
        event = self._event(body, access_key, identity)
        try:
            response = self.server.handler()(event, LambdaContext(function_name="dnmon-agent-api"))
        except Exception:  # Lambda answers 502 when the function raises
            log.exception("the agent API failed")
            self._refuse(502, "Internal Server Error")
            return
        payload = response.get("body") or ""
        raw = base64.b64decode(payload) if response.get("isBase64Encoded") else str(payload).encode()
        self._send(int(response.get("statusCode", 200)), raw, response.get("headers") or {})

    def _event(self, body: bytes, access_key: str, identity: Identity) -> dict[str, Any]:
        parts = urlsplit(self.path)
        now = time.time()
        try:
            text, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": parts.path,
            "rawQueryString": parts.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "requestContext": {
                "accountId": identity.account_id,
                "apiId": "local",
                "authorizer": {
                    "iam": {
                        "accessKey": access_key,
                        "accountId": identity.account_id,
                        "callerId": identity.user_id,
                        "userArn": identity.user_arn,
                        "userId": identity.user_id,
                    }
                },
                "domainName": self.headers.get("Host", ""),
                "http": {
                    "method": self.command,
                    "path": parts.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": self.client_address[0],
                    "userAgent": self.headers.get("User-Agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "body": text,
            "isBase64Encoded": encoded,
        }


def start_agent_api(template_path: Path, identities: Mapping[str, Identity]) -> FunctionUrl:
    """Serve the template's AWS_IAM function URL (the agent API) on a free loopback port, on a
    daemon thread; ``shutdown()`` and ``server_close()`` stop it."""
    handler = template.load(template_path).agent_api_handler
    if handler is None:
        raise template.TemplateError(f"{template_path} declares no AWS_IAM function URL (the agent API)")
    server = FunctionUrl(("127.0.0.1", 0), handler, identities)
    threading.Thread(target=server.serve_forever, name="agent-api", daemon=True).start()
    return server
