"""Diagnostics IPC codec, sans-IO: request bytes out, typed replies in. No sockets here.

Every request is validated before it is encoded: some malformed requests crash the target
(CollectTracing with a 0 MB buffer, a format other than 0/1, short payloads — protocols.md §6).
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from .errors import IpcError, IpcProtocolError, IpcServerError

MAGIC = b"DOTNET_IPC_V1\x00"
HEADER = struct.Struct("<14sHBBH")
HEADER_SIZE = HEADER.size  # 20
MAX_MESSAGE = 0xFFFF

_SERVER = 0xFF
_OK = 0x00
_ERROR = 0xFF


class EventLevel(IntEnum):
    LOG_ALWAYS = 0
    CRITICAL = 1
    ERROR = 2
    WARNING = 3
    INFORMATIONAL = 4
    VERBOSE = 5


class Command(IntEnum):
    """(command_set << 8) | command_id."""

    STOP_TRACING = 0x0201
    COLLECT_TRACING = 0x0202
    COLLECT_TRACING2 = 0x0203
    PROCESS_INFO = 0x0400
    RESUME_RUNTIME = 0x0401
    PROCESS_ENVIRONMENT = 0x0402
    PROCESS_INFO2 = 0x0404
    PROCESS_INFO3 = 0x0408


_COMMAND_NAMES = {
    Command.STOP_TRACING: "StopTracing",
    Command.COLLECT_TRACING: "CollectTracing",
    Command.COLLECT_TRACING2: "CollectTracing2",
    Command.PROCESS_INFO: "ProcessInfo",
    Command.RESUME_RUNTIME: "ResumeRuntime",
    Command.PROCESS_ENVIRONMENT: "ProcessEnvironment",
    Command.PROCESS_INFO2: "ProcessInfo2",
    Command.PROCESS_INFO3: "ProcessInfo3",
}


def command_name(command: Command) -> str:
    return _COMMAND_NAMES[command]


NETTRACE_FORMAT = 1


@dataclass(frozen=True)
class EventPipeProvider:
    """One provider of an EventPipe session (``arguments`` become the EventSource filter data)."""

    name: str
    keywords: int = 0xFFFF_FFFF_FFFF_FFFF
    level: int = EventLevel.VERBOSE
    arguments: Mapping[str, str] | None = field(default=None)

    def filter_data(self) -> str:
        """``key=value;key=value`` exactly as the .NET client builds it (EventPipeProvider
        .GetArgumentString): a key or value holding ``;`` or ``=`` is wrapped in double quotes,
        nothing is escaped, and no arguments is the empty string.

        The runtime's parser (verified on 8.0.4) reads ``"`` as a quote toggle and drops it, so a
        ``"`` inside a key or value never arrives; the API refuses those before they get here."""
        if not self.arguments:
            return ""
        return ";".join(f"{_quote(k)}={_quote(v)}" for k, v in self.arguments.items())


def _quote(text: str) -> str:
    return f'"{text}"' if (";" in text or "=" in text) else text


@dataclass(frozen=True)
class SessionConfiguration:
    """What CollectTracing2 asks for: buffer size, rundown, providers (format is always nettrace)."""

    providers: tuple[EventPipeProvider, ...]
    circular_buffer_mb: int = 256
    request_rundown: bool = True


# --- encoding -------------------------------------------------------------------------------


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(text: str | None) -> bytes:
    """uint32 UTF-16 unit count including the NUL, then the units; null is a count of 0.

    Like .NET's ``Encoding.Unicode`` a lone surrogate becomes U+FFFD (the count is unchanged)."""
    if text is None:
        return b"\x00\x00\x00\x00"
    encoded = (_LONE_SURROGATE.sub("\ufffd", text) + "\x00").encode("utf-16-le")
    return struct.pack("<I", len(encoded) // 2) + encoded


def _message(command: Command, payload: bytes = b"") -> bytes:
    size = HEADER_SIZE + len(payload)
    if size > MAX_MESSAGE:
        raise IpcError(f"request of {size} bytes exceeds the protocol's 65535", command_name(command))
    return HEADER.pack(MAGIC, size, command >> 8, command & 0xFF, 0) + payload


def encode_simple(command: Command) -> bytes:
    """Commands without a payload (ProcessInfo*, ProcessEnvironment, ResumeRuntime)."""
    if command not in (
        Command.PROCESS_INFO,
        Command.PROCESS_INFO2,
        Command.PROCESS_INFO3,
        Command.PROCESS_ENVIRONMENT,
        Command.RESUME_RUNTIME,
    ):
        raise ValueError(f"{command!r} needs a payload")
    return _message(command)


def encode_collect_tracing2(config: SessionConfiguration) -> bytes:
    name = "CollectTracing2"
    if not 1 <= config.circular_buffer_mb <= 0xFFFFFFFF:
        # 0 MB crashes the target (SIGSEGV on 8.0.4): refuse it here, never send it.
        raise IpcError(f"circular buffer must be at least 1 MB, got {config.circular_buffer_mb}", name)
    if not config.providers:
        raise IpcError("a session needs at least one provider", name)
    body = [
        struct.pack(
            "<II?I", config.circular_buffer_mb, NETTRACE_FORMAT, config.request_rundown, len(config.providers)
        )
    ]
    for provider in config.providers:
        if not provider.name:
            raise IpcError("provider name must not be empty", name)
        if not 0 <= provider.level <= 5:
            raise IpcError(f"provider {provider.name}: level {provider.level} is not 0..5", name)
        if not 0 <= provider.keywords <= 0xFFFF_FFFF_FFFF_FFFF:
            raise IpcError(f"provider {provider.name}: keywords out of 64-bit range", name)
        body.append(struct.pack("<QI", provider.keywords, provider.level))
        body.append(_string(provider.name))
        body.append(_string(provider.filter_data()))
    return _message(Command.COLLECT_TRACING2, b"".join(body))


def encode_stop_tracing(session_id: int) -> bytes:
    return _message(Command.STOP_TRACING, struct.pack("<Q", session_id & 0xFFFF_FFFF_FFFF_FFFF))


# --- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyHeader:
    ok: bool
    payload_size: int


def parse_reply_header(data: bytes, command: Command) -> ReplyHeader:
    """Check the 20-byte reply header; an error reply still needs its 4-byte HRESULT read."""
    name = command_name(command)
    if len(data) != HEADER_SIZE:
        raise IpcProtocolError(f"reply header is {len(data)} bytes, expected {HEADER_SIZE}", name)
    magic, size, command_set, command_id, _ = HEADER.unpack(data)
    if magic != MAGIC:
        raise IpcProtocolError(f"reply magic {magic!r} is not {MAGIC!r}", name)
    if size < HEADER_SIZE:
        raise IpcProtocolError(f"reply size {size} is smaller than its header", name)
    if command_set != _SERVER or command_id not in (_OK, _ERROR):
        raise IpcProtocolError(f"unexpected reply command 0x{command_set:02X}{command_id:02X}", name)
    return ReplyHeader(ok=command_id == _OK, payload_size=size - HEADER_SIZE)


def raise_error_reply(payload: bytes, command: Command) -> None:
    name = command_name(command)
    if len(payload) < 4:
        raise IpcProtocolError(f"error reply carries {len(payload)} bytes, expected an HRESULT", name)
    (hresult,) = struct.unpack_from("<I", payload)
    raise IpcServerError(hresult, name)


class _Reader:
    """Bounds-checked little-endian reader over one reply payload."""

    def __init__(self, data: bytes, command: Command) -> None:
        self.data = data
        self.pos = 0
        self.name = command_name(command)

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise IpcProtocolError(
                f"reply ends at {len(self.data)} bytes, needed {end} (field at offset {self.pos})", self.name
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def guid(self) -> uuid.UUID:
        return uuid.UUID(bytes_le=self.take(16))

    def string(self) -> str:
        count = self.u32()
        if count == 0:
            return ""
        raw = self.take(count * 2)
        text = raw.decode("utf-16-le", errors="replace")
        return text[:-1] if text.endswith("\x00") else text

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


@dataclass(frozen=True)
class RuntimeProcessInfo:
    """What the runtime says about itself (ProcessInfo / 2 / 3)."""

    pid: int
    runtime_instance_cookie: uuid.UUID
    command_line: str
    operating_system: str
    process_architecture: str
    managed_entrypoint_assembly_name: str | None = None
    clr_product_version: str | None = None
    runtime_identifier: str | None = None


def parse_process_info(payload: bytes, command: Command) -> RuntimeProcessInfo:
    reader = _Reader(payload, command)
    if command == Command.PROCESS_INFO3:
        version = reader.u32()
        if version < 1:
            raise IpcProtocolError(f"unsupported ProcessInfo3 version {version}", reader.name)
    pid = reader.u64()
    cookie = reader.guid()
    command_line = reader.string()
    operating_system = reader.string()
    architecture = reader.string()
    entrypoint = version_text = rid = None
    if command in (Command.PROCESS_INFO2, Command.PROCESS_INFO3):
        entrypoint = reader.string()
        version_text = reader.string()
    if command == Command.PROCESS_INFO3:
        rid = reader.string()
    return RuntimeProcessInfo(
        pid, cookie, command_line, operating_system, architecture, entrypoint, version_text, rid
    )


def parse_session_id(payload: bytes, command: Command) -> int:
    return _Reader(payload, command).u64()


def parse_environment(data: bytes) -> dict[str, str]:
    """The ProcessEnvironment continuation: uint32 count, then ``NAME=value`` strings."""
    reader = _Reader(data, Command.PROCESS_ENVIRONMENT)
    count = reader.u32()
    env: dict[str, str] = {}
    for _ in range(count):
        entry = reader.string()
        key, sep, value = entry.partition("=")
        if sep:
            env[key] = value
    return env


def parse_environment_size(payload: bytes) -> int:
    """The OK reply to ProcessEnvironment announces the continuation's byte count."""
    return _Reader(payload, Command.PROCESS_ENVIRONMENT).u32()
