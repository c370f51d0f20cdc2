"""The socket edge of the IPC client: connect, send, read exactly, with timeouts.

Every ``OSError`` / ``socket.timeout`` is translated here into the IpcError tree, so nothing
above this module sees a foreign exception.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from .errors import IpcConnectionError, IpcPermissionError, IpcProtocolError, IpcTimeoutError

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_REPLY_TIMEOUT = 10.0
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included


def _connect(sock: socket.socket, path: str) -> None:
    """Connect, also to a path longer than ``sun_path`` holds.

    A container's socket reached through ``/proc/<pid>/root/<its TMPDIR>`` can exceed 107 bytes;
    the directory is then opened with ``O_PATH`` and reached through the short
    ``/proc/self/fd/<fd>/<name>``, which resolves the same file without a process-wide chdir.
    """
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        sock.connect(path)
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


class IpcConnection:
    """One connection to a diagnostics socket: the runtime serves one command per connection."""

    def __init__(self, path: str | Path, command: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.path = str(path)
        self.command = command
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(connect_timeout)
        try:
            _connect(self._sock, self.path)
        except TimeoutError as exc:
            self._sock.close()
            raise IpcTimeoutError(
                f"connecting to {self.path} timed out after {connect_timeout}s", command
            ) from exc
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.ECONNREFUSED:
                reason = f"{self.path} refuses connections (the process has exited)"
            elif exc.errno == errno.ENOENT:
                reason = f"{self.path} does not exist (the process has exited)"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                reason = f"permission denied on {self.path} (run as the target's user or root)"
                raise IpcPermissionError(reason, command) from exc
            else:
                reason = f"cannot connect to {self.path}: {exc.strerror or exc}"
            raise IpcConnectionError(reason, command) from exc

    def send(self, data: bytes, timeout: float = DEFAULT_REPLY_TIMEOUT) -> None:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise IpcTimeoutError("sending the request timed out", self.command) from exc
        except OSError as exc:
            raise IpcConnectionError(
                f"sending the request failed: {exc.strerror or exc}", self.command
            ) from exc

    def read_exactly(self, size: int, timeout: float = DEFAULT_REPLY_TIMEOUT) -> bytes:
        """Read ``size`` bytes; EOF before that is a protocol error (the runtime hung up)."""
        self._sock.settimeout(timeout)
        buf = bytearray()
        while len(buf) < size:
            try:
                chunk = self._sock.recv(size - len(buf))
            except TimeoutError as exc:
                raise IpcTimeoutError(f"no reply within {timeout}s", self.command) from exc
            except OSError as exc:
                raise IpcConnectionError(
                    f"reading the reply failed: {exc.strerror or exc}", self.command
                ) from exc
            if not chunk:
                raise IpcProtocolError(
                    f"connection closed after {len(buf)} of {size} expected bytes", self.command
                )
            buf += chunk
        return bytes(buf)

    def read_some(self, max_bytes: int, timeout: float | None) -> bytes | None:
        """Stream read: bytes, ``b""`` at EOF, or ``None`` when nothing came within ``timeout``."""
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv(max_bytes)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""  # a target killed mid-stream resets rather than closes
        except OSError as exc:
            raise IpcConnectionError(
                f"reading the stream failed: {exc.strerror or exc}", self.command
            ) from exc

    def read_into(self, buffer: memoryview, timeout: float | None) -> int | None:
        """Like ``read_some`` into a caller's buffer: byte count, 0 at EOF, ``None`` on timeout."""
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return 0
        except OSError as exc:
            raise IpcConnectionError(
                f"reading the stream failed: {exc.strerror or exc}", self.command
            ) from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> IpcConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
