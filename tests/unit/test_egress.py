"""Egress writers: multipart framing and abort on S3 (moto in-process), files, streams."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from dnmon_agent.egress import EgressError, FileSystemWriter, S3MultipartWriter

MIB = 1 << 20


@pytest.fixture
def s3() -> Iterator[Any]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="dnmon-test")
        yield client


class PartSpy:
    """The real client, with the size of every uploaded part noted."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.part_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        self.part_sizes.append(len(kwargs["Body"]))
        return self.client.upload_part(**kwargs)


def test_parts_are_exactly_part_size_and_the_object_is_whole(s3: Any) -> None:
    spy = PartSpy(s3)
    writer = S3MultipartWriter(spy, "dnmon-test", "k", part_size=5 * MIB)
    data = os.urandom(12 * MIB + 123)
    for start in range(0, len(data), 70_001):  # odd chunk sizes straddle part boundaries
        writer.write(data[start : start + 70_001])
    assert spy.part_sizes == [5 * MIB, 5 * MIB]  # sent while writing, not at the end
    location = writer.complete()
    assert location.size == len(data)
    assert spy.part_sizes == [5 * MIB, 5 * MIB, 2 * MIB + 123]
    assert s3.get_object(Bucket="dnmon-test", Key="k")["Body"].read() == data


def test_small_artifact_is_one_put_without_multipart(s3: Any) -> None:
    writer = S3MultipartWriter(
        s3, "dnmon-test", "small", content_type="application/json-seq", part_size=5 * MIB
    )
    writer.write(b"\x1e{}\n")
    writer.complete()
    head = s3.head_object(Bucket="dnmon-test", Key="small")
    assert head["ContentLength"] == 4 and head["ContentType"] == "application/json-seq"
    assert not s3.list_multipart_uploads(Bucket="dnmon-test").get("Uploads")


def test_abort_leaves_no_upload_behind(s3: Any) -> None:
    writer = S3MultipartWriter(s3, "dnmon-test", "cut", part_size=5 * MIB)
    writer.write(os.urandom(6 * MIB))
    assert s3.list_multipart_uploads(Bucket="dnmon-test").get("Uploads")
    writer.abort()
    assert not s3.list_multipart_uploads(Bucket="dnmon-test").get("Uploads")


def test_missing_bucket_is_an_egress_error(s3: Any) -> None:
    writer = S3MultipartWriter(s3, "nope", "k", part_size=5 * MIB)
    writer.write(b"x")
    with pytest.raises(EgressError, match="PutObject failed for s3://nope/k"):
        writer.complete()


def test_part_size_floor() -> None:
    with pytest.raises(ValueError):
        S3MultipartWriter(object(), "dnmon-test", "k", part_size=MIB)


def test_filesystem_writer_renames_only_when_complete(tmp_path: Path) -> None:
    writer = FileSystemWriter(tmp_path, "a.nettrace")
    writer.write(b"abc")
    assert not (tmp_path / "a.nettrace").exists()
    assert writer.complete().path == str(tmp_path / "a.nettrace")
    assert (tmp_path / "a.nettrace").read_bytes() == b"abc"
    aborted = FileSystemWriter(tmp_path, "b.nettrace")
    aborted.write(b"x")
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nettrace"]
