"""The runbook client's pure parts and its HTTP edge, over httpx's mock transport (no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest

from dnmon_agent.runbook import artifacts, config
from dnmon_agent.runbook.errors import ApiError, ExitCode
from dnmon_agent.runbook.http import ApiClient, raise_for_problem
from dnmon_agent.runbook.metrics import JsonSeqReader, MetricsBoard, sparkline

RECORDS = [{"provider": "P", "name": f"n{i}", "value": i, "tags": ""} for i in range(5)]
RAW = b"".join(b"\x1e" + json.dumps(r).encode() + b"\n" for r in RECORDS)


@pytest.mark.parametrize("split", ["whole", "bytewise", "random"])
def test_json_seq_reader_same_records_however_split(split: str) -> None:
    if split == "whole":
        chunks = [RAW]
    elif split == "bytewise":
        chunks = [RAW[i : i + 1] for i in range(len(RAW))]
    else:
        rng, chunks, at = random.Random(7), [], 0
        while at < len(RAW):
            step = rng.randint(1, 20)
            chunks.append(RAW[at : at + step])
            at += step
    reader = JsonSeqReader()
    assert [r for c in chunks for r in reader.feed(c)] == RECORDS


def test_json_seq_reader_skips_a_damaged_record() -> None:
    assert JsonSeqReader().feed(b'\x1e{bad\n\x1e{"a": 1}\n') == [{"a": 1}]


def test_board_sees_intervals_and_keeps_history() -> None:
    board = MetricsBoard("t")
    a = {"provider": "P", "name": "a", "value": 1}
    b = {"provider": "P", "name": "b", "value": 2, "tags": "Percentile=50"}
    assert not board.opens_interval(a)
    board.add(a)
    board.add(b)
    assert board.opens_interval({**a, "value": 5})
    board.add({**a, "value": 5})
    assert list(board.series[("P", "a", "")].values) == [1.0, 5.0]
    assert sparkline(board.series[("P", "a", "")].values) == "▁█"
    assert board.intervals == 1


def test_sparkline_flat_series_is_a_line() -> None:
    from collections import deque

    assert sparkline(deque([3.0, 3.0, 3.0])) == "▄▄▄"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"detail": "Authentication is required"}, ExitCode.AUTH),
        (403, None, ExitCode.AUTH),
        (429, {"detail": "Rate limit reached."}, ExitCode.THROTTLED),
        (400, {"detail": "Operation 1 was not found."}, ExitCode.NOT_FOUND),
        (404, {"detail": "No such route."}, ExitCode.NOT_FOUND),
        (400, {"detail": "durationSeconds: bad", "errors": {"durationSeconds": ["bad"]}}, ExitCode.USAGE),
        (400, {"detail": "Unable to resolve the default process: 2 processes"}, ExitCode.USAGE),
        (400, {"detail": "the target exited"}, ExitCode.FAILED),
        (503, {"detail": "The operation store is unavailable; try again."}, ExitCode.SERVER),
    ],
)
def test_problem_to_exit_code(status: int, body: object, code: ExitCode) -> None:
    response = httpx.Response(status, json=body)
    with pytest.raises(ApiError) as raised:
        raise_for_problem(response)
    assert raised.value.code == code


def test_problem_message_lists_each_field_once() -> None:
    error = ApiError(400, "a: first", {"a": ["first"], "b": ["second", "third"]})
    assert str(error) == "a: first (HTTP 400)\n  b: second\n  b: third"


def test_config_precedence(tmp_path: Path) -> None:
    folder = tmp_path / "dnmon"
    folder.mkdir()
    (folder / "config.toml").write_text(
        'default = "a"\n[profiles.a]\nurl = "http://a"\ntoken = "ta"\n'
        '[profiles.b]\nurl = "http://b/"\ntoken_env = "B_TOKEN"\n'
    )
    (folder / "config.toml").chmod(0o600)
    env = {"XDG_CONFIG_HOME": str(tmp_path), "B_TOKEN": "tb"}
    assert config.resolve(url=None, token=None, profile=None, env=env) == config.ApiConfig("http://a", "ta")
    with_env = {**env, "DNMON_URL": "http://e", "DNMON_TOKEN": "te"}
    assert config.resolve(url=None, token=None, profile=None, env=with_env) == config.ApiConfig(
        "http://e", "te"
    )
    assert config.resolve(url=None, token=None, profile="b", env=with_env) == config.ApiConfig(
        "http://b", "tb"
    )
    flags = config.resolve(url="http://f", token="tf", profile="b", env=with_env)
    assert flags == config.ApiConfig("http://f", "tf") and "tf" not in repr(flags)
    bare = config.resolve(url=None, token=None, profile=None, env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert bare == config.ApiConfig(config.DEFAULT_URL, None)


def test_download_resumes_after_a_cut_and_never_sends_the_token(tmp_path: Path) -> None:
    artifact = bytes(range(256)) * 1024
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        body = {"url": "https://bucket.s3.example/key.nettrace?X-Amz-Signature=s", "size": len(artifact),
                "key": "egress/x.nettrace"}  # fmt: skip
        return httpx.Response(302, json=body, headers={"Location": body["url"]})

    class CutOnce(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield artifact[:131_072]  # two whole 64 KiB chunks reach the file
            raise httpx.ReadError("connection reset")

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(200, stream=CutOnce())
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(206, content=artifact[start:])

    with ApiClient(config.ApiConfig("http://api", "secret"), transport=httpx.MockTransport(api)) as client:
        out = tmp_path / "a.nettrace"
        size = artifacts.download(
            client, "0" * 36, out, sleep=lambda s: None, store_transport=httpx.MockTransport(store)
        )
    assert size == len(artifact) and out.read_bytes() == artifact
    assert [r.headers.get("Range") for r in seen] == [None, "bytes=131072-"]
    assert all("authorization" not in r.headers for r in seen)
    assert not list(tmp_path.glob("*.part"))


def test_metrics_past_the_stream_cap_is_a_run_of_streamed_windows() -> None:
    """A streamed response lasts 15 minutes at most; ``-1`` and long durations become windows."""
    from itertools import islice

    from dnmon_agent.runbook.metrics import WINDOW_SECONDS, windows

    assert list(windows(30)) == [30]
    assert list(windows(WINDOW_SECONDS * 2 + 5)) == [WINDOW_SECONDS, WINDOW_SECONDS, 5]
    assert list(windows(0)) == []
    assert list(islice(windows(-1), 4)) == [WINDOW_SECONDS] * 4
