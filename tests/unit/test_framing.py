"""Object-level framing on recorded real captures: the end tag is found, cuts are noticed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dnmon_agent.diagnostics.errors import NettraceError
from dnmon_agent.diagnostics.framing import NettraceFraming

DATA = Path(__file__).resolve().parents[1] / "data"
CAPTURES = ["cpu_rundown.nettrace", "counters.nettrace"]


def _feed(data: bytes, sizes: list[int]) -> NettraceFraming:
    framing = NettraceFraming()
    pos = 0
    for size in sizes:
        framing.feed(data[pos : pos + size])
        pos += size
    framing.feed(data[pos:])
    return framing


@pytest.mark.parametrize("name", CAPTURES)
def test_whole_bytewise_and_random_chunks_agree(name: str) -> None:
    data = (DATA / name).read_bytes()
    whole = _feed(data, [])
    assert whole.ended and whole.offset == len(data)
    rng = random.Random(7)
    chunks = [rng.randint(1, 5000) for _ in range(len(data) // 2500)]
    assert _feed(data, chunks).ended
    head = data[:4096]
    bytewise = NettraceFraming()
    for i in range(len(head)):
        bytewise.feed(head[i : i + 1])
    assert bytewise.offset == len(head) and not bytewise.ended


@pytest.mark.parametrize("name", CAPTURES)
def test_every_cut_is_not_ended(name: str) -> None:
    data = (DATA / name).read_bytes()
    for cut in range(0, len(data) - 1, max(1, len(data) // 300)):
        framing = NettraceFraming()
        framing.feed(data[:cut])
        assert not framing.ended


def test_garbage_and_trailing_bytes_are_errors() -> None:
    data = (DATA / "counters.nettrace").read_bytes()
    with pytest.raises(NettraceError, match="magic"):
        NettraceFraming().feed(b"Nettracx" + data[8:])
    with pytest.raises(NettraceError, match="after the end-of-stream"):
        NettraceFraming().feed(data + b"\x05")
    broken = bytearray(data)
    broken[32] = 0x07  # the first object's tag
    with pytest.raises(NettraceError, match="offset 32"):
        NettraceFraming().feed(bytes(broken))
