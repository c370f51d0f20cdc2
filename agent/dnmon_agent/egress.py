"""Egress: where a capture's bytes go while it runs. S3 and the filesystem implement one protocol.

The S3 writer drives the multipart upload by hand with fixed-size parts, so the agent's memory is
bounded by one part whatever the trace's length (boto3's managed transfer buffers far more —
aws-facts.md). botocore's standard retry mode retries throttling and 5xx; what still fails after
that aborts the upload, so no orphaned parts are billed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as AwsConnectionError

PART_SIZE = 8 << 20  # S3's minimum is 5 MiB for every part but the last

log = logging.getLogger("dnmon.agent.egress")
T = TypeVar("T")


class EgressError(Exception):
    """Writing the artifact failed; the partial artifact has been discarded."""


@dataclass(frozen=True)
class ArtifactLocation:
    """Where a finished artifact is: enough to build ``resourceLocation`` and to download it."""

    kind: str  # "s3" | "filesystem" | "memory"
    size: int
    bucket: str | None = None
    key: str | None = None
    path: str | None = None
    chunks: int | None = None  # how many chunks the live view published (streamed responses)
    chunks_broken: str | None = None  # why the live view stopped early, if it did
    partial: bool | None = None  # what the runtime sent before the capture failed

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _ride_out_outage(call: Callable[[], T], outage_seconds: float) -> T:
    """S3 unreachable (refused, reset, timed out) after botocore's own retries is an outage, ridden
    out for ``outage_seconds`` (every call made through here is idempotent); other errors raise."""
    give_up, delay = time.monotonic() + outage_seconds, 0.5
    while True:
        try:
            return call()
        except (AwsConnectionError, HTTPClientError):
            if time.monotonic() + delay >= give_up:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class ArtifactWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def complete(self) -> ArtifactLocation: ...

    def abort(self) -> None: ...


class S3MultipartWriter:
    """Streams into S3: a part goes out whenever ``part_size`` bytes have gathered."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        part_size: int = PART_SIZE,
        kms_key_id: str | None = None,
        outage_seconds: float = 0.0,
    ) -> None:
        if part_size < 5 << 20:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        self.part_size = part_size
        self.kms_key_id = kms_key_id
        self.outage_seconds = outage_seconds  # how long S3 may stay unreachable before giving up
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"ContentType": self.content_type}
        if self.kms_key_id:
            extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        return extra

    def _call(self, what: str, method: Any, **kwargs: Any) -> Any:
        try:
            return _ride_out_outage(lambda: method(**kwargs), self.outage_seconds)
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise EgressError(f"S3 {what} failed for s3://{self.bucket}/{self.key}: {exc}") from exc

    def write(self, data: bytes) -> None:
        # Fill the part buffer exactly to the part size and hand that very buffer to S3, so the
        # only copy of the data in memory is one part (plus the chunk being written).
        self._size += len(data)
        view = memoryview(data)
        while view:
            room = self.part_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self.part_size:
                part, self._buffer = self._buffer, bytearray()
                self._send_part(part)

    def _send_part(self, body: bytes | bytearray) -> None:
        if self._upload_id is None:  # created lazily: a small artifact is one PutObject
            response = self._call(
                "CreateMultipartUpload",
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                **self._extra(),
            )
            self._upload_id = response["UploadId"]
        number = len(self._parts) + 1
        response = self._call(
            f"UploadPart {number}",
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def complete(self) -> ArtifactLocation:
        if self._upload_id is None:
            self._call(
                "PutObject",
                self.client.put_object,
                Bucket=self.bucket,
                Key=self.key,
                Body=bytes(self._buffer),
                **self._extra(),
            )
        else:
            if self._buffer:
                self._send_part(self._buffer)
            self._call(
                "CompleteMultipartUpload",
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()
        return ArtifactLocation("s3", self._size, bucket=self.bucket, key=self.key)

    def abort(self) -> None:
        """Drop the upload (best effort: S3's lifecycle rule cleans up what this misses)."""
        upload_id, self._upload_id = self._upload_id, None
        self._buffer = bytearray()
        if upload_id is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)


class FileSystemWriter:
    """Writes ``<directory>/<name>`` through a ``.partial`` file renamed at completion."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.path = Path(directory) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = self._partial.open("wb")
        self._size = 0

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise EgressError(f"writing {self.path} failed: {exc.strerror}") from exc
        self._size += len(data)

    def complete(self) -> ArtifactLocation:
        self._file.close()
        os.replace(self._partial, self.path)
        return ArtifactLocation("filesystem", self._size, path=str(self.path))

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class S3ChunkPublisher:
    """Publishes the artifact as it is produced, in small numbered S3 objects (``dnmon_core.chunks``)
    that the streaming function relays to the client: at least every ``flush_seconds``, at most
    ``chunk_bytes`` at a time. It writes nothing while nothing comes.

    A publisher that fails (S3 unreachable past ``outage_seconds``) stops publishing and says so
    in ``broken``; the artifact itself goes on into its own writer, so only the live view is lost.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key_of: Callable[[int], str],
        *,
        content_type: str,
        flush_seconds: float,
        chunk_bytes: int,
        outage_seconds: float = 0.0,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key_of = key_of
        self.content_type = content_type
        self.chunk_bytes = chunk_bytes
        self.outage_seconds = outage_seconds
        self.count = 0
        self.broken: str | None = None
        self._buffer = bytearray()
        self._lock = threading.Lock()  # the buffer
        self._put_lock = threading.Lock()  # one PutObject at a time, in order
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_every, args=(flush_seconds,), name="chunk-flusher", daemon=True
        )
        self._flusher.start()

    def write(self, data: bytes) -> None:
        if self.broken is not None:
            return
        with self._lock:
            self._buffer += data
            full = len(self._buffer) >= self.chunk_bytes
        if full:
            self._flush()

    def _flush_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self._flush()

    def _flush(self) -> None:
        with self._put_lock:
            with self._lock:
                data, self._buffer = bytes(self._buffer), bytearray()
            if not data or self.broken is not None:
                return
            key = self.key_of(self.count)
            try:
                _ride_out_outage(
                    lambda: self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=data, ContentType=self.content_type
                    ),
                    self.outage_seconds,
                )
            except (ClientError, BotoCoreError) as exc:
                self.broken = f"publishing chunk {self.count} to s3://{self.bucket}/{key} failed: {exc}"
                log.warning("%s; the live stream stops here, the artifact goes on", self.broken)
                return
            self.count += 1

    def close(self) -> None:
        """Publish what is left and stop the flusher."""
        self._stop.set()
        self._flusher.join()
        self._flush()


class TeeWriter:
    """The artifact into its writer, and the same bytes to the chunk publisher for the live view."""

    def __init__(self, artifact: ArtifactWriter, chunks: S3ChunkPublisher) -> None:
        self.artifact = artifact
        self.chunks = chunks

    def write(self, data: bytes) -> None:
        self.artifact.write(data)
        self.chunks.write(data)

    def complete(self) -> ArtifactLocation:
        self.chunks.close()
        location = self.artifact.complete()
        return replace(location, chunks=self.chunks.count, chunks_broken=self.chunks.broken)

    def abort(self) -> None:
        self.chunks.close()
        self.artifact.abort()


class MemoryWriter:
    """Keeps the artifact in memory (tests, and small inline responses)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.completed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def complete(self) -> ArtifactLocation:
        self.completed = True
        return ArtifactLocation("memory", len(self.data))

    def abort(self) -> None:
        self.aborted = True
