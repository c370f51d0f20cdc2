"""The local gateway's edge against the attacks measured on its http.server predecessor.

Each test is one attack, sent as raw bytes where the framing matters: the old ingest route, bodies
read whole before authentication, a listen backlog of 5, framing that hung or dropped the
connection, no read timeout, and Host / X-Forwarded-Proto echoed into Location. The real template
and the real MonitorApiKey authorizer serve where nothing behind them needs AWS; the fixture
template (tests/unit/local_fixture) where a handler must echo what it was given.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from dnmon_agent.local import template
from dnmon_agent.local.gateway import BODY_LIMIT, GatewayServer, GatewaySettings
from dnmon_core.apikey import GeneratedKey, generate_key
from tests.unit.test_local_gateway import serve

ROOT = Path(__file__).resolve().parents[2]
REAL_TEMPLATE = ROOT / "infra" / "template.yaml"
FIXTURE_TEMPLATE = ROOT / "tests" / "unit" / "local_fixture" / "template.yaml"
READ_TIMEOUT = 1.0  # short, so the stall tests end soon; `dnmon up` uses 30 s
MIB = 1024 * 1024
PUBLIC_URL = "https://dnmon.example.test"


@pytest.fixture(scope="module")
def key() -> GeneratedKey:
    return generate_key()


@pytest.fixture(scope="module")
def real(key: GeneratedKey) -> Iterator[GatewayServer]:
    """infra/template.yaml with the real authorizer; its streaming function is never reached here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("Authentication__MonitorApiKey__Subject", key.subject)
        patch.setenv("Authentication__MonitorApiKey__PublicKey", key.public_key)
        patch.delenv("DNMON_AUTH_DISABLED", raising=False)
        settings = GatewaySettings(read_timeout=READ_TIMEOUT)
        with serve(
            template.load(REAL_TEMPLATE), settings, task_root=ROOT / "functions", warm=False
        ) as server:
            yield server


@pytest.fixture(scope="module")
def fixture() -> Iterator[GatewayServer]:
    """The fixture template, named by configuration as https://dnmon.example.test, stage v1."""
    settings = GatewaySettings(public_url=PUBLIC_URL, stage="v1", read_timeout=READ_TIMEOUT)
    with serve(template.load(FIXTURE_TEMPLATE), settings) as server:
        yield server


def connect(server: GatewayServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def head(method: str, path: str, *lines: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode("latin-1")


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response off a raw socket."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def read_to_close(sock: socket.socket) -> bytes:
    received = b""
    while piece := sock.recv(65536):
        received += piece
    return received


def chunked_sender(sock: socket.socket, mebibytes: int) -> tuple[threading.Thread, list[int]]:
    """Send ``mebibytes`` 1 MiB chunks in a thread, until done or the server stops taking them."""
    sent: list[int] = []
    block = b"%X\r\n%s\r\n" % (MIB, b"\0" * MIB)

    def send() -> None:
        try:
            for _ in range(mebibytes):
                sock.sendall(block)
                sent.append(1)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: the rest is not read

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, sent


# --- the ingest route ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "valid"])
def test_the_ingest_route_is_gone(real: GatewayServer, key: GeneratedKey, token: str | None) -> None:
    """It took unauthenticated bytes from any local process into another client's artifact."""
    auth = [f"Authorization: Bearer {key.token}"] if token else []
    for method in ("POST", "PUT", "GET"):
        with connect(real) as sock:
            sock.sendall(
                head(method, f"/_dnmon/ingest/{uuid.uuid4()}", "Transfer-Encoding: chunked", *auth)
                + b"8\r\nspliced!\r\n0\r\n\r\n"
            )
            status, headers, body = answer(sock)
        assert status == 404, method
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 404


# --- bodies: authentication first, the limit before reading ------------------------------------------


def test_an_unauthenticated_300_mb_post_is_refused_unread(real: GatewayServer) -> None:
    """It was read whole before authentication: the process grew to 999 MB."""
    process = psutil.Process()
    before = process.memory_info().rss
    with connect(real) as sock:
        sock.sendall(
            head("POST", "/trace?pid=1", "Content-Type: application/json", "Transfer-Encoding: chunked")
        )
        sender, sent = chunked_sender(sock, 300)
        status, headers, _ = answer(sock)
        sender.join(timeout=120)
    grown = process.memory_info().rss - before
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert len(sent) < 300  # the server closed instead of taking the rest
    assert grown < 50 * MIB, f"the gateway's process grew by {grown / MIB:.0f} MiB"


def test_an_unauthenticated_declared_body_is_refused_before_it_is_sent(real: GatewayServer) -> None:
    with connect(real) as sock:
        sock.sendall(
            head("POST", "/trace?pid=1", "Content-Type: application/json", f"Content-Length: {9 * MIB}")
        )
        status, headers, _ = answer(sock)  # not one byte of the body was sent
    assert status == 401 and headers["connection"] == "close"


def test_a_declared_body_over_10_mib_is_413_before_it_is_sent(real: GatewayServer, key: GeneratedKey) -> None:
    with connect(real) as sock:
        sock.sendall(
            head(
                "POST",
                "/trace?pid=1",
                f"Authorization: Bearer {key.token}",
                "Content-Type: application/json",
                f"Content-Length: {BODY_LIMIT + 1}",
            )
        )
        status, headers, body = answer(sock)
    assert BODY_LIMIT == 10 * MIB  # API Gateway's payload limit
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert "10485760" in json.loads(body)["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit_with_413(real: GatewayServer, key: GeneratedKey) -> None:
    with connect(real) as sock:
        sock.sendall(
            head(
                "POST",
                "/trace?pid=1",
                f"Authorization: Bearer {key.token}",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
        )
        sender, sent = chunked_sender(sock, 64)
        status, headers, _ = answer(sock)
        sender.join(timeout=60)
    assert status == 413 and headers["connection"] == "close"
    assert len(sent) < 64


def test_a_chunked_body_under_the_limit_reaches_the_function(fixture: GatewayServer) -> None:
    payload = b"x" * (2 * MIB)
    with connect(fixture) as sock:
        sock.sendall(
            head(
                "POST",
                "/items",
                "Authorization: Bearer good",
                "Content-Type: application/octet-stream",
                "Transfer-Encoding: chunked",
            )
            + b"%X\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        )
        status, _, body = answer(sock)
    seen = json.loads(body)
    assert status == 200 and seen["base64"] is True and base64.b64decode(seen["body"]) == payload


# --- framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        # It hung: the old server read -1 bytes, that is, until the client gave up.
        ("negative Content-Length", head("POST", "/trace", "Content-Length: -1") + b"{}"),
        # It dropped the connection without an answer.
        ("bad chunk size", head("POST", "/trace", "Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n"),
        # A folded Host put CR LF into the Location header.
        ("folded Host", b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n evil.example\r\n\r\n"),
        ("two Content-Lengths", head("POST", "/trace", "Content-Length: 2", "Content-Length: 3") + b"{}"),
    ],
)
def test_malformed_framing_is_a_400(real: GatewayServer, name: str, request_bytes: bytes) -> None:
    with connect(real) as sock:
        sock.sendall(request_bytes)
        received = read_to_close(sock)  # and the connection ends
    assert received.startswith(b"HTTP/1.1 400 "), name


# --- read timeouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"])
def test_a_stalled_request_head_is_closed_after_the_read_timeout(real: GatewayServer, sent: bytes) -> None:
    with connect(real) as sock:
        sock.sendall(sent)
        received = read_to_close(sock)  # returns only because the server closes
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_408(real: GatewayServer, key: GeneratedKey) -> None:
    with connect(real) as sock:
        sock.sendall(
            head(
                "POST",
                "/trace?pid=1",
                f"Authorization: Bearer {key.token}",
                "Content-Type: application/json",
                "Content-Length: 100",
            )
            + b'{"Providers": '
        )
        received = read_to_close(sock)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received.lower()


# --- Location --------------------------------------------------------------------------------------

HOSTILE = ["Host: evil.example", "X-Forwarded-Proto: javascript", "X-Forwarded-Host: evil.example"]


def hostile(path: str) -> bytes:
    """An authorized GET whose Host and X-Forwarded-* name someone else's site."""
    lines = [f"GET {path} HTTP/1.1", *HOSTILE, "Authorization: Bearer good", "", ""]
    return "\r\n".join(lines).encode()


def test_location_names_the_configured_api_whatever_the_headers_say(fixture: GatewayServer) -> None:
    with connect(fixture) as sock:
        sock.sendall(hostile("/location"))
        status, headers, body = answer(sock)
    assert status == 201
    assert headers["location"] == f"{PUBLIC_URL}/v1/operations/1"
    seen = json.loads(body)
    assert seen["domainName"] == "dnmon.example.test"
    assert seen["headers"] == {
        "Host": "dnmon.example.test",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "dnmon.example.test",
    }


def test_location_from_dnmon_public_url(fixture: GatewayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNMON_PUBLIC_URL", "http://127.0.0.1:52323")  # how `dnmon up` configures it
    with connect(fixture) as sock:
        sock.sendall(hostile("/location"))
        _, headers, _ = answer(sock)
    assert headers["location"] == "http://127.0.0.1:52323/operations/1"


def test_a_streamed_location_names_the_configured_api(fixture: GatewayServer, tmp_path: Path) -> None:
    with connect(fixture) as sock:
        sock.sendall(hostile(f"/stream?count=0&dir={tmp_path}"))
        status, headers, body = answer(sock)
    assert status == 200 and body == b""
    assert headers["location"].startswith(f"{PUBLIC_URL}/v1/operations/")
    assert headers["x-seen-host"] == "dnmon.example.test"


# --- many at once ----------------------------------------------------------------------------------


def test_fifty_parallel_requests_are_all_answered(fixture: GatewayServer) -> None:
    """With a listen backlog of 5, 27 of 50 got a TCP reset."""
    kinds = [
        ("GET", "/items/1", "Bearer good", 200),
        ("GET", "/binary", "Bearer good", 200),
        ("GET", "/items/1", None, 401),
        ("GET", "/items/1", "Bearer bad", 401),
        ("GET", "/items/1", "Bearer deny", 403),
    ]
    start = threading.Barrier(50)

    def one(n: int) -> tuple[int, int]:
        method, path, token, expected = kinds[n % len(kinds)]
        start.wait()
        with connect(fixture) as sock:
            sock.sendall(head(method, path, *([f"Authorization: {token}"] if token else [])))
            status, _, _ = answer(sock)
        return status, expected

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))  # a reset would raise here
    assert len(results) == 50
    assert all(status == expected for status, expected in results), results
