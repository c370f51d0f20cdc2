"""The HTTP edge: one httpx client per API, problem+json turned into ``ApiError``.

Every request names the media type it wants first in ``Accept``: API Gateway returns a binary
body as bytes only when the first Accept value is a binary media type (base64 text otherwise).
httpx's transport errors become ``NetworkError`` here. The token travels only in the
Authorization header of requests to the API — never to the artifact store, and never in a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from .config import ApiConfig
from .errors import ApiError, NetworkError

JSON = "application/json"
JSON_SEQ = "application/json-seq"
OCTET_STREAM = "application/octet-stream"
USER_AGENT = "dnmon-runbook/0.1"

# A capture's stream may pause for a counter interval, or for the rundown after a stop.
STREAM_READ_TIMEOUT = 300.0
REQUEST_TIMEOUT = 60.0  # an AWS request without egress waits up to its sync budget (25 s)


def operation_id_of(location: str | None) -> str:
    """``…/operations/<id>`` → ``<id>`` (the Location header of 200 and 202 answers)."""
    if not location or "/operations/" not in location:
        raise ApiError(502, "the API's answer has no operation Location header")
    return location.rstrip("/").rsplit("/", 1)[1]


def _clean(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}


def raise_for_problem(response: httpx.Response) -> None:
    """Any 4xx/5xx becomes an ``ApiError`` carrying the problem's detail and field errors."""
    if response.status_code < 400:
        return
    try:
        body: Any = json.loads(response.read() or b"null")
    except (ValueError, httpx.HTTPError):
        body = None
    fallback = response.reason_phrase or f"HTTP {response.status_code}"
    if response.status_code == 401 and not (isinstance(body, dict) and body.get("detail")):
        fallback = "the API wants a MonitorApiKey: pass --token, DNMON_TOKEN or a profile"
    raise ApiError.from_problem(response.status_code, body, fallback)


class ApiClient:
    """The dnmon API at ``config.url``; a context manager that closes its connections."""

    def __init__(self, config: ApiConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"User-Agent": USER_AGENT}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._http = httpx.Client(
            base_url=config.url,
            headers=headers,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=10.0),
            follow_redirects=False,  # the artifact's 302 points at S3, which must not see our token
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _network(self, exc: httpx.TransportError) -> NetworkError:
        kind = type(exc).__name__
        return NetworkError(f"cannot reach the API at {self.config.url} ({kind}: {exc or 'no detail'})")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: str | None = None,
        accept: str = JSON,
    ) -> httpx.Response:
        """A whole answer; 4xx/5xx raise ``ApiError``."""
        headers = {"Accept": f"{accept}, application/problem+json"}
        if body is not None:
            headers["Content-Type"] = JSON
        # A pooled connection the server has just closed fails the next request on it before any
        # byte of an answer; a GET is safe to send once more on a fresh one.
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                response = self._http.request(
                    method, path, params=_clean(params), content=body, headers=headers
                )
                break
            except httpx.RemoteProtocolError as exc:
                if attempt + 1 == attempts:
                    raise self._network(exc) from None
            except httpx.TransportError as exc:
                raise self._network(exc) from None
        raise_for_problem(response)
        return response

    def json(self, method: str, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        response = self.request(method, path, params=params)
        try:
            return response.json()
        except ValueError:
            raise ApiError(502, f"the API answered {method} {path} with something that is not JSON") from None

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: str | None = None,
        accept: str,
    ) -> Iterator[httpx.Response]:
        """An answer whose body is read as it arrives (a capture's artifact)."""
        # The server may close the connection after a streamed artifact: never pool it.
        headers = {"Accept": f"{accept}, application/problem+json", "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = JSON
        timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=10.0, read=STREAM_READ_TIMEOUT)
        try:
            with self._http.stream(
                method, path, params=_clean(params), content=body, headers=headers, timeout=timeout
            ) as response:
                raise_for_problem(response)
                yield response
        except httpx.TransportError as exc:
            raise self._network(exc) from None
