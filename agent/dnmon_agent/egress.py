"""Egress: where a capture's bytes go while it runs. S3 and the filesystem implement one protocol.

The S3 writer drives the multipart upload by hand with fixed-size parts, so the agent's memory is
bounded by one part whatever the trace's length (boto3's managed transfer buffers far more —
aws-facts.md). botocore's standard retry mode retries throttling and 5xx; what still fails after
that aborts the upload, so no orphaned parts are billed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as AwsConnectionError

PART_SIZE = 8 << 20  # S3's minimum is 5 MiB for every part but the last


class EgressError(Exception):
    """Writing the artifact failed; the partial artifact has been discarded."""


@dataclass(frozen=True)
class ArtifactLocation:
    """Where a finished artifact is: enough to build ``resourceLocation`` and to download it."""

    kind: str  # "s3" | "filesystem" | "stream"
    size: int
    bucket: str | None = None
    key: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


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
        # S3 unreachable (refused, reset, timed out) after botocore's own retries: an outage, ridden
        # out for ``outage_seconds`` (each call is idempotent) rather than discarding the artifact.
        give_up, delay = time.monotonic() + self.outage_seconds, 0.5
        while True:
            try:
                return method(**kwargs)
            except (AwsConnectionError, HTTPClientError) as exc:
                if time.monotonic() + delay < give_up:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                error: Exception = exc
            except (ClientError, BotoCoreError) as exc:
                error = exc
            self.abort()
            raise EgressError(f"S3 {what} failed for s3://{self.bucket}/{self.key}: {error}") from error

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


class HttpStreamWriter:
    """Streams the artifact, chunk by chunk, to an HTTP endpoint as it is produced.

    The local stack's gateway relays these chunks to the client that asked without an egress
    provider, so the response streams exactly as dotnet-monitor's does (DESIGN.md's matrix).
    """

    def __init__(self, url: str, content_type: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise EgressError(f"stream egress needs an http:// URL, got {url!r}")
        self.url = url
        self._size = 0
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        try:
            self._conn.putrequest("POST", parts.path or "/")
            self._conn.putheader("Content-Type", content_type)
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.endheaders()
        except OSError as exc:
            self._conn.close()
            raise EgressError(f"cannot stream to {url}: {exc}") from exc

    def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._conn.send(b"%X\r\n%s\r\n" % (len(data), data))
        except OSError as exc:
            self.abort()
            raise EgressError(f"the stream to {self.url} broke (the client went away?): {exc}") from exc
        self._size += len(data)

    def complete(self) -> ArtifactLocation:
        try:
            self._conn.send(b"0\r\n\r\n")
            response = self._conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EgressError(f"the stream to {self.url} did not complete: {exc}") from exc
        finally:
            self._conn.close()
        if response.status >= 300:
            raise EgressError(f"the stream to {self.url} was refused: HTTP {response.status}")
        return ArtifactLocation("stream", self._size, path=self.url)

    def abort(self) -> None:
        """Close without the last chunk: the receiver sees the stream break, not end."""
        self._conn.close()


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
