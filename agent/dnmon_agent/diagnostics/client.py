"""Diagnostics IPC client: the codec in ``ipc`` joined to the socket in ``transport``."""

from __future__ import annotations

import threading
from pathlib import Path

from . import ipc
from .errors import IpcError, IpcServerError
from .ipc import Command, RuntimeProcessInfo, SessionConfiguration
from .transport import DEFAULT_CONNECT_TIMEOUT, DEFAULT_REPLY_TIMEOUT, IpcConnection


class DiagnosticsClient:
    """Commands against one runtime's diagnostics socket; each opens its own connection."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
    ) -> None:
        self.socket_path = str(socket_path)
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout

    def _open(self, command: Command) -> IpcConnection:
        return IpcConnection(
            self.socket_path, ipc.command_name(command), connect_timeout=self.connect_timeout
        )

    def _exchange(self, conn: IpcConnection, command: Command, message: bytes) -> bytes:
        """Send one request and return the OK reply's payload; an error reply raises."""
        conn.send(message, self.reply_timeout)
        header = ipc.parse_reply_header(conn.read_exactly(ipc.HEADER_SIZE, self.reply_timeout), command)
        payload = conn.read_exactly(header.payload_size, self.reply_timeout) if header.payload_size else b""
        if not header.ok:
            ipc.raise_error_reply(payload, command)
        return payload

    def _simple(self, command: Command, message: bytes) -> bytes:
        with self._open(command) as conn:
            return self._exchange(conn, command, message)

    def process_info(self) -> RuntimeProcessInfo:
        """ProcessInfo2 (with the entry-point assembly), falling back to ProcessInfo on .NET 5/6.

        .NET Core 3.1 knows neither and raises ``IpcServerError`` with ``unknown_command``.
        """
        try:
            payload = self._simple(Command.PROCESS_INFO2, ipc.encode_simple(Command.PROCESS_INFO2))
            return ipc.parse_process_info(payload, Command.PROCESS_INFO2)
        except IpcServerError as exc:
            if not exc.unknown_command:
                raise
        payload = self._simple(Command.PROCESS_INFO, ipc.encode_simple(Command.PROCESS_INFO))
        return ipc.parse_process_info(payload, Command.PROCESS_INFO)

    def environment(self) -> dict[str, str]:
        command = Command.PROCESS_ENVIRONMENT
        with self._open(command) as conn:
            payload = self._exchange(conn, command, ipc.encode_simple(command))
            size = ipc.parse_environment_size(payload)
            return ipc.parse_environment(conn.read_exactly(size, self.reply_timeout))

    def start_session(self, config: SessionConfiguration) -> EventPipeSession:
        """CollectTracing2: the reply carries the session id; the same socket then streams nettrace."""
        command = Command.COLLECT_TRACING2
        message = ipc.encode_collect_tracing2(config)  # validates before anything is sent
        conn = self._open(command)
        try:
            payload = self._exchange(conn, command, message)
            session_id = ipc.parse_session_id(payload, command)
        except BaseException:
            conn.close()
            raise
        return EventPipeSession(self, conn, session_id)

    def stop_tracing(self, session_id: int) -> None:
        command = Command.STOP_TRACING
        self._simple(command, ipc.encode_stop_tracing(session_id))


class EventPipeSession:
    """A running EventPipe session: read its nettrace bytes; ``stop`` asks for a graceful end.

    The runtime answers StopTracing only after it has written rundown into *this* stream, so the
    stop goes over a second connection while the caller keeps reading this one until EOF.
    """

    def __init__(self, client: DiagnosticsClient, conn: IpcConnection, session_id: int) -> None:
        self.client = client
        self.session_id = session_id
        self._conn = conn
        self.stop_requested = False
        self.stop_error: IpcError | None = None
        self._stopper: threading.Thread | None = None

    def read(self, max_bytes: int = 1 << 16, timeout: float | None = 1.0) -> bytes | None:
        """Next bytes of the stream; ``b""`` at EOF; ``None`` when nothing arrived in ``timeout``."""
        return self._conn.read_some(max_bytes, timeout)

    def read_into(self, buffer: memoryview, timeout: float | None = 1.0) -> int | None:
        return self._conn.read_into(buffer, timeout)

    def stop(self) -> None:
        """Ask for a graceful end without waiting; the stream then ends itself (rundown, end tag, EOF).

        The runtime replies to StopTracing only after writing the rundown into this session's
        stream, so waiting for the reply on the reading thread deadlocks once the socket buffer
        fills. The request goes out on its own thread; a failure is kept in ``stop_error``.
        """
        if self.stop_requested:
            return
        self.stop_requested = True
        self._stopper = threading.Thread(
            target=self._send_stop, name=f"stop-{self.session_id:x}", daemon=True
        )
        self._stopper.start()

    def _send_stop(self) -> None:
        try:
            self.client.stop_tracing(self.session_id)
        except IpcError as exc:  # the target is going away: its stream ends by itself
            self.stop_error = exc

    def close(self) -> None:
        """Drop the stream. Without a prior ``stop`` the runtime ends the session on its next write."""
        self._conn.close()
        if self._stopper is not None:
            self._stopper.join(timeout=1.0)

    def __enter__(self) -> EventPipeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
