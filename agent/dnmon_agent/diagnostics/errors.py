"""The diagnostics error tree: everything the IPC client and the nettrace decoder raise.

Foreign exceptions (``OSError``, ``socket.timeout``, ``struct.error``) are translated at the edge
into this tree, so capture pipelines and the CLI only ever catch ``DiagnosticsError``::

    DiagnosticsError
    ├── NettraceError            malformed stream; ``offset`` = absolute byte offset in the stream
    │   └── NettraceTruncatedError   the stream ended before its end-of-stream tag
    ├── IpcError                 anything about one IPC command; ``command`` names it
    │   ├── IpcProtocolError     the peer's bytes do not follow the protocol
    │   ├── IpcServerError       the runtime answered with an error HRESULT
    │   ├── IpcTimeoutError      connect or reply header did not arrive in time
    │   └── IpcConnectionError   the socket could not be opened, or broke mid-command
    │       └── IpcPermissionError   the socket is another user's (run as that user, or root)
    └── ProcessSelectionError    no process / several processes match a selector
"""

from __future__ import annotations


class DiagnosticsError(Exception):
    """Root of every error raised by ``dnmon_agent.diagnostics``."""


class NettraceError(DiagnosticsError):
    """The nettrace stream is malformed at ``offset`` (absolute, from the ``N`` of ``Nettrace``)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.reason = message
        self.offset = offset


class NettraceTruncatedError(NettraceError):
    """The stream stopped before the end-of-stream tag: the target died or the transfer broke."""


class IpcError(DiagnosticsError):
    """A diagnostics IPC command failed; ``command`` is its name (e.g. ``CollectTracing2``)."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(f"{command}: {message}" if command else message)
        self.reason = message
        self.command = command


class IpcProtocolError(IpcError):
    """The runtime's reply does not follow the protocol (bad magic, short payload, ...)."""


class IpcConnectionError(IpcError):
    """The diagnostics socket could not be reached or broke during a command."""


class IpcPermissionError(IpcConnectionError):
    """The socket exists but this user may not open it (``srw-------``, owned by the target's user)."""


class IpcTimeoutError(IpcError):
    """Connecting or waiting for a reply header took longer than allowed."""


_HRESULT_MESSAGES: dict[int, str] = {
    0x80131384: "the runtime could not parse the request (DS_IPC_E_BAD_ENCODING)",
    0x80131385: "the runtime does not know this command (DS_IPC_E_UNKNOWN_COMMAND)",
    0x80131386: "the runtime does not recognise the IPC magic (DS_IPC_E_UNKNOWN_MAGIC)",
    0x80131515: "the operation is not supported by this runtime (NOT_SUPPORTED)",
    0x8013135B: "the runtime is not ready yet (NOT_YET_AVAILABLE)",
    0x80131371: "the runtime is not initialised yet (RUNTIME_UNINITIALIZED)",
    0x80070057: "invalid argument (E_INVALIDARG)",
    0x80004005: "unspecified failure (E_FAIL)",
    0x8007007A: "insufficient buffer (INSUFFICIENT_BUFFER)",
    0x800000CB: "environment variable not found (ENVVAR_NOT_FOUND)",
    0x8007007E: "module not found (ERROR_MOD_NOT_FOUND)",
    0x8013136A: "a profiler is already active",
}

HRESULT_UNKNOWN_COMMAND = 0x80131385


class IpcServerError(IpcError):
    """The runtime refused the command with an HRESULT."""

    def __init__(self, hresult: int, command: str | None = None) -> None:
        self.hresult = hresult & 0xFFFFFFFF
        human = _HRESULT_MESSAGES.get(self.hresult, "the runtime reported an error")
        super().__init__(f"{human} [HRESULT 0x{self.hresult:08X}]", command)

    @property
    def unknown_command(self) -> bool:
        """True when an older runtime simply lacks the command (callers may fall back)."""
        return self.hresult == HRESULT_UNKNOWN_COMMAND


class ProcessSelectionError(DiagnosticsError):
    """No process, or more than one, matches what the caller asked for."""
