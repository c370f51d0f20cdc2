"""One capture request followed to its end, shared by ``dnmon trace`` and ``dnmon metrics``.

200: the body is the artifact, handed to a sink as it streams. 202: the operation is polled until
it ends (the caller then downloads the artifact). Either way the operation id comes from the
Location header, the first Ctrl-C asks for a graceful stop (``DELETE …?stop=true``: a trace gets its
rundown, the stream still ends whole) and the second cancels (``DELETE``) and exits 130.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import artifacts
from .config import ApiConfig
from .console import StatusLine, ctrl_c, warn
from .errors import ApiError, Interrupted, NetworkError, RunbookError
from .http import ApiClient, operation_id_of

STREAMED_SETTLE_SECONDS = 60.0  # after a whole stream, how long the final state may lag


class Stopper:
    """Sends the graceful stop once both the user asked for it and the operation id is known."""

    def __init__(self, config: ApiConfig, status: StatusLine) -> None:
        self.config = config
        self.status = status
        self.operation_id: str | None = None
        self._requested = False
        self._sent = False
        self._cancelled = False
        self._lock = threading.Lock()

    def bind(self, operation_id: str) -> None:
        with self._lock:
            self.operation_id = operation_id
        self._maybe_send()

    def request_stop(self) -> None:
        with self._lock:
            self._requested = True
        self.status.update(state="Stopping (Ctrl-C again cancels)")
        self._maybe_send()

    def _maybe_send(self) -> None:
        with self._lock:
            if not self._requested or self.operation_id is None or self._sent:
                return
            self._sent = True
            operation_id = self.operation_id
        try:
            with ApiClient(self.config) as client:
                client.request("DELETE", f"/operations/{operation_id}", params={"stop": "true"})
        except RunbookError as exc:
            warn(f"the graceful stop was not accepted: {exc}")

    def cancel(self) -> None:
        with self._lock:
            if self.operation_id is None or self._cancelled:
                return
            self._cancelled = True
        self.status.update(state="Cancelling")
        try:
            with ApiClient(self.config) as client:
                client.request("DELETE", f"/operations/{self.operation_id}")
        except ApiError:
            pass  # already over: nothing left to cancel
        except RunbookError as exc:
            warn(f"the cancel was not delivered: {exc}")


@dataclass
class Outcome:
    operation_id: str
    streamed: bool  # True: the 200 body went to the sink; False: 202, the artifact is kept
    status: dict[str, Any]
    received: int
    stopped: bool = False  # the user asked for the graceful stop (Ctrl-C)


def run(
    client: ApiClient,
    *,
    method: str,
    route: str,
    params: Mapping[str, Any],
    body: str | None,
    accept: str,
    sink: Callable[[bytes], None],
    status: StatusLine,
    after: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Run the capture; ``after`` runs while Ctrl-C still stops/cancels (e.g. the download)."""
    stopper = Stopper(client.config, status)
    try:
        with ctrl_c(stopper.request_stop, stopper.cancel):
            outcome = _run(client, stopper, method, route, params, body, accept, sink, status)
            if after is not None:
                after(outcome)
            return outcome
    except Interrupted:
        stopper.cancel()  # done already unless the operation id came after the second Ctrl-C
        status.update(state="Cancelled")
        raise


def _run(
    client: ApiClient,
    stopper: Stopper,
    method: str,
    route: str,
    params: Mapping[str, Any],
    body: str | None,
    accept: str,
    sink: Callable[[bytes], None],
    status: StatusLine,
) -> Outcome:
    def progress(state: str | None, received: int | None) -> None:
        if state is not None and stopper._requested and state in ("Running", "Stopping"):
            state = "Stopping (Ctrl-C again cancels)"
        status.update(state=state, received=received)

    received = 0
    streamed = False
    try:
        with client.stream(method, route, params=params, body=body, accept=accept) as response:
            operation_id = operation_id_of(response.headers.get("location"))
            warn(f"operation {operation_id}")  # for `dnmon ops …` from another shell
            stopper.bind(operation_id)
            if response.status_code != 202:
                streamed = True
                if not stopper._requested:
                    status.update(state="Running")
                for chunk in response.iter_bytes():
                    sink(chunk)
                    received += len(chunk)
                    status.update(received=received)
    except NetworkError:
        if stopper.operation_id is None:
            raise
        final = artifacts.wait_for(client, stopper.operation_id, timeout=10)
        if final.get("status") in ("Failed", "Cancelled"):
            raise artifacts.failure(final) from None
        raise
    assert stopper.operation_id is not None
    final = artifacts.wait_for(
        client, stopper.operation_id, progress, timeout=STREAMED_SETTLE_SECONDS if streamed else None
    )
    if final.get("status") in ("Failed", "Cancelled"):
        raise artifacts.failure(final)
    if final.get("status") != "Succeeded":
        warn(f"the stream ended whole but operation {stopper.operation_id} is still {final.get('status')}")
    return Outcome(stopper.operation_id, streamed, final, received, stopped=stopper._requested)
