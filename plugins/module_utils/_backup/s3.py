# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""An S3 (object storage) backend: ``s3://bucket/prefix`` on AWS S3 or any S3-compatible store.

PRIVATE to this collection; no compatibility guarantees.

How the ``Backend`` contract maps onto S3:

- ``open_writer``: the object is invisible until ``commit``. Small objects are one PUT at commit; an object that
  grows past one part becomes a multipart upload whose parts are sent while the caller writes (at most
  ``upload_threads`` parts in flight plus one being filled, so memory stays bounded whatever the pack size) and is
  published atomically by CompleteMultipartUpload. ``abort`` (or a killed process) leaves no visible object; a killed
  process leaves an incomplete upload that the store's lifecycle rule (AbortIncompleteMultipartUpload) removes.
- ``create_exclusive``: a HEAD (refuse an existing name), then a PUT with ``If-None-Match: *`` (a 412 means another
  writer won the race). On a store that ignores the header (rclone's ``serve s3``), the HEAD alone is checked: a
  simultaneous creator of the same name could then win silently. The engine never depends on it: ``init`` runs under
  the exclusive init lock, manifests, index files and lock objects have random names.
- ``mtime``: the object's ``LastModified`` as the store reports it (the storage's clock, what lock staleness needs).
- ``list``: ListObjectsV2 below ``prefix/directory/``, paginated. There are no temporaries on S3.
- ``make_dirs``: checks that the bucket is reachable (S3 has no directories).
- Reads: GetObject, ranged GetObject (``Range: bytes=a-b``) for ``read_range``.
- Retries: botocore's retry handler (``standard`` mode by default: exponential backoff with jitter on 5xx, throttling
  and connection errors), connect and read timeouts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import traceback
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import Backend, ObjectWriter
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackendError,
    InvalidArgumentError,
    MissingDependencyError,
)

boto3: t.Any = None
botocore: t.Any = None

MIB = 1024 * 1024
#: S3's smallest part (all but the last). Parts start at part_size and double every 1000 parts (see _S3Writer),
#: so an object of any size fits in S3's 10,000 parts while memory stays bounded by the part size.
MIN_PART = 5 * MIB
DEFAULT_PART = 8 * MIB
MAX_PARTS = 10000
CHECKSUM_MODES = ("when_supported", "when_required")
RETRY_MODES = ("standard", "adaptive", "legacy")
CONDITIONAL_MODES = ("auto", "always", "never")
#: the keyword options open_backend() accepts for s3:// URLs
OPTIONS = ("endpoint_url", "region", "access_key", "secret_key", "session_token", "profile", "ca_bundle",
           "validate_certs", "path_style", "part_size", "upload_threads", "timeout", "max_attempts", "retry_mode",
           "checksums", "conditional_writes", "read_ahead", "cache_blocks", "prefetch")


def _require_boto3() -> None:
    """Import boto3/botocore or raise MissingDependencyError naming the pip package."""
    global boto3, botocore  # pylint: disable=global-statement
    if boto3 is None:
        try:
            import boto3 as _boto3  # pylint: disable=import-outside-toplevel
            import botocore as _botocore  # pylint: disable=import-outside-toplevel
            import botocore.config  # pylint: disable=import-outside-toplevel,unused-import
            import botocore.exceptions  # pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            raise MissingDependencyError("boto3", "S3 repositories", traceback.format_exc()) from None
        boto3, botocore = _boto3, _botocore


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket[/prefix]`` into (bucket, prefix without slashes at either end)."""
    if not url.startswith("s3://"):
        raise InvalidArgumentError(f"'{url}' is not an S3 URL; use s3://bucket/prefix.")
    rest = url[len("s3://"):]
    bucket, _sep, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # never echoed: credentials in the URL would land in task results and logs
        raise InvalidArgumentError(
            "The S3 repository URL carries credentials or a port. Write it as s3://bucket/prefix, give the endpoint "
            "in repository_s3_endpoint_url and the keys in repository_s3_access_key/repository_s3_secret_key (or "
            "the AWS_* environment variables)."
        )
    if not 3 <= len(bucket) <= 63:
        raise InvalidArgumentError(f"The S3 URL '{url}' names no valid bucket (3 to 63 characters); use s3://bucket/prefix.")
    prefix = prefix.strip("/")
    if ".." in prefix.split("/"):
        raise InvalidArgumentError(f"The S3 prefix in '{url}' must not contain '..'.")
    return bucket, prefix


class _S3Writer(ObjectWriter):
    """A streamed write: one PUT when small, else a multipart upload with parts sent while the caller writes."""

    def __init__(self, backend: "S3Backend", name: str) -> None:
        self._backend = backend
        self._name = name
        self._key = backend.key(name)
        self._buf = bytearray()
        self._part_size = backend.part_size
        self._upload_id: str | None = None
        self._parts: list[dict[str, t.Any]] = []
        self._pending: collections.deque[concurrent.futures.Future[dict[str, t.Any]]] = collections.deque()
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise BackendError("write after commit/abort")
        self._buf += data
        while len(self._buf) >= self._part_size:
            with memoryview(self._buf) as view:
                chunk = bytes(view[: self._part_size])  # one copy (slicing the bytearray would make two)
            del self._buf[: self._part_size]
            self._send_part(chunk)

    def _send_part(self, chunk: bytes) -> None:
        backend = self._backend
        if self._upload_id is None:
            response = backend.call("start the upload of", self._name, backend.client.create_multipart_upload,
                                    Bucket=backend.bucket, Key=self._key)
            self._upload_id = response["UploadId"]
        number = len(self._parts) + len(self._pending) + 1
        if number >= MAX_PARTS:
            raise BackendError(f"The object s3://{backend.bucket}/{self._key} would need more than {MAX_PARTS} parts; "
                               "use a smaller pack_size.")
        # bounded memory: at most upload_threads parts in flight
        while len(self._pending) >= backend.upload_threads:
            self._parts.append(self._pending.popleft().result())
        self._pending.append(backend.pool().submit(self._upload_part, number, chunk))
        # parts grow so that objects of any size fit into 10,000 parts (1000 parts of each size step)
        if number % 1000 == 0:
            self._part_size *= 2

    def _upload_part(self, number: int, chunk: bytes) -> dict[str, t.Any]:
        backend = self._backend
        response = backend.call("upload a part of", self._name, backend.client.upload_part, Bucket=backend.bucket,
                                Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk)
        return {"PartNumber": number, "ETag": response["ETag"]}

    def commit(self) -> None:
        if self._closed:
            raise BackendError("commit after commit/abort")
        backend = self._backend
        try:
            if self._upload_id is None:
                backend.call("store", self._name, backend.client.put_object, Bucket=backend.bucket, Key=self._key,
                             Body=bytes(self._buf))
            else:
                if self._buf or not (self._parts or self._pending):
                    self._send_part(bytes(self._buf))
                while self._pending:
                    self._parts.append(self._pending.popleft().result())
                backend.call("complete the upload of", self._name, backend.client.complete_multipart_upload,
                             Bucket=backend.bucket, Key=self._key, UploadId=self._upload_id,
                             MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])})
                self._upload_id = None
        except BaseException:
            self.abort()
            raise
        self._buf = bytearray()
        self._closed = True

    def abort(self) -> None:
        self._closed = True
        self._buf = bytearray()
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            try:
                future.result()
            except BaseException:  # pylint: disable=broad-except  # abort must never raise
                pass
        self._pending.clear()
        if self._upload_id is not None:
            backend = self._backend
            try:
                backend.client.abort_multipart_upload(Bucket=backend.bucket, Key=self._key, UploadId=self._upload_id)
            except Exception:  # pylint: disable=broad-except  # abort must never raise
                pass
            self._upload_id = None


class S3Backend(Backend):
    """A repository below ``prefix`` in an S3 bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        ca_bundle: str | None = None,
        validate_certs: bool = True,
        path_style: bool | None = None,
        part_size: int = DEFAULT_PART,
        upload_threads: int = 4,
        timeout: float = 60.0,
        max_attempts: int = 8,
        retry_mode: str = "standard",
        checksums: str = "when_supported",
        conditional_writes: str = "auto",
        read_ahead: int = 4 * MIB,
        cache_blocks: int = 8,
        prefetch: int = 3,
    ) -> None:
        _require_boto3()
        if bool(access_key) != bool(secret_key):
            raise InvalidArgumentError("Give both the S3 access key and the secret key, or neither (then the AWS "
                                       "environment variables, shared credentials file or profile are used).")
        if part_size < MIN_PART:
            raise InvalidArgumentError(f"The S3 part size must be at least {MIN_PART} bytes (5 MiB), not {part_size}.")
        for value, allowed, what in ((retry_mode, RETRY_MODES, "retry_mode"), (checksums, CHECKSUM_MODES, "checksums"),
                                     (conditional_writes, CONDITIONAL_MODES, "conditional_writes")):
            if value not in allowed:
                raise InvalidArgumentError(f"The S3 option {what} must be one of {', '.join(allowed)}, not '{value}'.")
        # the variables botocore itself reads: set here too, so that path-style and messages know the endpoint
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        where = f" at {endpoint_url}" if endpoint_url else ""
        self.location = f"s3://{bucket}/{self.prefix}{where}"
        self.part_size = part_size
        self.upload_threads = max(1, upload_threads)
        self.conditional_writes = conditional_writes
        self.read_ahead = max(0, int(read_ahead))
        self._cache_blocks = max(1, int(cache_blocks))
        self.prefetch = max(0, min(int(prefetch), self._cache_blocks - 1))
        self._blocks: collections.OrderedDict[tuple[str, int], concurrent.futures.Future[bytes]] = (
            collections.OrderedDict())
        self._last_block: dict[str, int] = {}  # per pack, the last block read or prefetched
        self._ends: dict[str, int] = {}  # per pack, its size once a short block showed it
        self._blocks_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if path_style is None:
            path_style = endpoint_url is not None  # custom endpoints (127.0.0.1, on-prem) rarely have bucket DNS
        config = botocore.config.Config(
            region_name=region,
            retries={"total_max_attempts": max(1, max_attempts), "mode": retry_mode},  # attempts, the first included
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=max(10, self.upload_threads * 2 + 8),
            s3={"addressing_style": "path" if path_style else "auto"},
            request_checksum_calculation=checksums,
            # every blob is authenticated by the engine itself; ranged GETs carry no whole-object checksum
            response_checksum_validation="when_required",
        )
        try:
            session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
            self.client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                aws_session_token=session_token or None,
                verify=(ca_bundle or True) if validate_certs else False,
                config=config,
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise BackendError(f"The AWS profile '{profile}' does not exist in the shared config or credentials "
                               "files; check the profile name or AWS_CONFIG_FILE.") from exc
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise BackendError(f"Cannot set up the S3 client for {self.location}: {exc}.") from exc

    def __repr__(self) -> str:
        return f"<S3Backend {self.location}>"

    # -- helpers -------------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise InvalidArgumentError(f"Invalid object name '{name}'.")
        return f"{self.prefix}/{name}" if self.prefix else name

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.upload_threads, thread_name_prefix="vmsafe-s3")
            return self._pool

    def _fail(self, verb: str, name: str, exc: Exception) -> BackendError:
        """A BackendError naming bucket, key and the likely fix; never includes credentials."""
        where = f"s3://{self.bucket}/{self.key(name) if name else self.prefix}"
        endpoint = f" at {self.endpoint_url}" if self.endpoint_url else ""
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.get("Message") or code
            if code == "NoSuchBucket":
                fix = f"The bucket '{self.bucket}' does not exist{endpoint}: create it (e.g. aws s3 mb s3://{self.bucket}) or fix the URL."
            elif code in ("AccessDenied", "AllAccessDisabled") or status == 403 and code not in (
                    "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                fix = ("Access denied: the credential lacks the permission for this request (a backup-only credential "
                       "cannot delete; prune, gc and repair need one that can).")
            elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                fix = ("The store refused the credentials: check repository_s3_access_key/repository_s3_secret_key "
                       "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE) and the region.")
            elif code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
                fix = "The bucket is in another region: set repository_s3_region to the bucket's region."
            else:
                fix = "Check the store's logs; transient errors were already retried."
            return BackendError(f"Cannot {verb} {where}{endpoint}: {message} ({code or status}). {fix}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return BackendError(
                f"Cannot {verb} {where}{endpoint}: no S3 credentials found. Set repository_s3_access_key and "
                "repository_s3_secret_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile.")
        if isinstance(exc, botocore.exceptions.SSLError):
            return BackendError(
                f"Cannot {verb} {where}{endpoint}: the TLS certificate could not be verified ({exc}). Give the CA that "
                "signed it in repository_s3_ca_bundle (or AWS_CA_BUNDLE).")
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
            return BackendError(
                f"Cannot {verb} {where}: the S3 endpoint{endpoint or ' (AWS)'} is unreachable ({exc}) after retries. "
                "Check the endpoint URL, the network and the firewall.")
        return BackendError(f"Cannot {verb} {where}{endpoint}: {exc}.")

    def call(self, verb: str, name: str, function: t.Callable[..., t.Any], **kwargs: t.Any) -> t.Any:
        try:
            return function(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(verb, name, exc) from exc

    @staticmethod
    def _missing(exc: Exception) -> bool:
        if not isinstance(exc, botocore.exceptions.ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")

    def _head(self, name: str) -> dict[str, t.Any]:
        try:
            return t.cast(dict, self.client.head_object(Bucket=self.bucket, Key=self.key(name)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if self._missing(exc):
                raise FileNotFoundError(name) from None
            raise self._fail("read the metadata of", name, exc) from exc

    def _get(self, name: str, **kwargs: t.Any) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(name), **kwargs)
            return t.cast(bytes, response["Body"].read())
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if self._missing(exc):
                raise FileNotFoundError(name) from None
            raise self._fail("read", name, exc) from exc

    # -- the Backend contract ------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        return self._get(name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self.read_ahead and name.startswith("packs/") and length < self.read_ahead:
            data = self._read_cached(name, offset, length)
        else:
            data = self._get_range(name, offset, length)
        if len(data) != length:
            raise BackendError(
                f"Short read of s3://{self.bucket}/{self.key(name)} at offset {offset}: wanted {length} bytes, got "
                f"{len(data)}. The object is truncated; run verify and restore from another backup."
            )
        return data

    def _get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            return self._get(name, Range=f"bytes={offset}-{offset + length - 1}")
        except BackendError as exc:
            if "InvalidRange" in str(exc):  # the range starts past the end of the object
                return b""
            raise

    def _read_cached(self, name: str, offset: int, length: int) -> bytes:
        """Serve a small read of a pack from aligned read-ahead blocks (packs never change once written).

        Restore and verify read a pack's blobs one by one, mostly in order: one GET per block instead of one per
        blob turns a latency-bound restore into a bandwidth-bound one. When a pack is read from its start or in
        order, the next ``prefetch`` blocks are fetched in the background (the backend's pool) while the caller
        decodes this one, so the GETs overlap each other and the caller's work. At most cache_blocks blocks are
        kept or in flight (memory stays bounded: cache_blocks x read_ahead).
        """
        size = self.read_ahead
        out = bytearray()
        block = offset - offset % size
        while len(out) < length:
            data = self._block(name, block).result()
            start = offset + len(out) - block
            piece = data[start:start + length - len(out)]
            out += piece
            if len(data) < size or not piece:
                break  # end of the object
            block += size
        return bytes(out)

    def _block(self, name: str, block: int) -> "concurrent.futures.Future[bytes]":
        """The (possibly still running) GET of one read-ahead block; schedules the prefetch of the next ones."""
        size = self.read_ahead
        prefetch: list[tuple[int, concurrent.futures.Future[bytes]]] = []
        with self._blocks_lock:
            future = self._blocks.get((name, block))
            mine = future is None
            if future is None:
                future = self._blocks[(name, block)] = concurrent.futures.Future()
                # a pack read from its start or block after block (restore, verify, repack)
                sequential = block == 0 or self._last_block.get(name) == block - size
            else:
                self._blocks.move_to_end((name, block))
                sequential = True  # read before or prefetched: keep the blocks ahead coming
            self._last_block[name] = block
            end = self._ends.get(name)
            for ahead in range(1, self.prefetch + 1 if sequential else 1):
                nxt = block + ahead * size
                if (end is not None and nxt >= end) or (name, nxt) in self._blocks:
                    continue
                prefetch.append((nxt, concurrent.futures.Future()))
                self._blocks[(name, nxt)] = prefetch[-1][1]
            for table in (self._last_block, self._ends):
                while len(table) > 4 * self._cache_blocks:
                    table.pop(next(iter(table)))
            while len(self._blocks) > self._cache_blocks:
                self._blocks.popitem(last=False)  # an evicted GET still in flight just finishes unused
        for nxt, pending in prefetch:
            try:
                self.pool().submit(self._fill, name, nxt, pending)
            except RuntimeError as exc:  # the pool was shut down (close()): no prefetch
                self._fill_failed(name, nxt, pending, exc)
        if mine:
            self._fill(name, block, future)  # the caller waits for this one: fetch it here, never behind uploads
        return future

    def _fill(self, name: str, block: int, future: "concurrent.futures.Future[bytes]") -> None:
        try:
            data = self._get_range(name, block, self.read_ahead)
        except BaseException as exc:  # pylint: disable=broad-except  # handed to whoever waits for the block
            self._fill_failed(name, block, future, exc)
            return
        if len(data) < self.read_ahead:
            with self._blocks_lock:
                self._ends[name] = block + len(data)
        future.set_result(data)

    def _fill_failed(self, name: str, block: int, future: "concurrent.futures.Future[bytes]",
                     exc: BaseException) -> None:
        with self._blocks_lock:
            if self._blocks.get((name, block)) is future:
                del self._blocks[(name, block)]  # a failed GET is not cached: the next read tries again
        future.set_exception(exc)

    def open_writer(self, name: str) -> ObjectWriter:
        return _S3Writer(self, name)

    def write_atomic(self, name: str, data: bytes) -> None:
        self.call("store", name, self.client.put_object, Bucket=self.bucket, Key=self.key(name), Body=bytes(data))

    def create_exclusive(self, name: str, data: bytes) -> None:
        if self.conditional_writes != "always" and self.exists(name):
            raise FileExistsError(name)
        kwargs: dict[str, t.Any] = {}
        if self.conditional_writes != "never":
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=bytes(data), **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if isinstance(exc, botocore.exceptions.ClientError):
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "PreconditionFailed" or status == 412:
                    raise FileExistsError(name) from None
                if code == "ConditionalRequestConflict" or status == 409:
                    # a concurrent conditional write of the same name is in progress: it wins, or neither does
                    raise FileExistsError(name) from None
                if code == "NotImplemented" and self.conditional_writes == "auto":
                    # the store refuses the header: the HEAD above was the check (see the module docstring)
                    self.conditional_writes = "never"
                    self.write_atomic(name, data)
                    return
            raise self._fail("create", name, exc) from exc

    def mtime(self, name: str) -> float:
        return float(self._head(name)["LastModified"].timestamp())

    def list(self, directory: str) -> list[tuple[str, int]]:
        base = self.key(directory).rstrip("/") + "/"
        skip = len(self.prefix) + 1 if self.prefix else 0
        found: list[tuple[str, int]] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", ()):
                    found.append((item["Key"][skip:], int(item["Size"])))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail("list", directory, exc) from exc
        found.sort()
        return found

    def delete(self, name: str) -> None:
        with self._blocks_lock:
            for key in [k for k in self._blocks if k[0] == name]:
                del self._blocks[key]
            self._last_block.pop(name, None)
            self._ends.pop(name, None)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if self._missing(exc):
                return
            raise self._fail("delete", name, exc) from exc

    def exists(self, name: str) -> bool:
        try:
            self._head(name)
            return True
        except FileNotFoundError:
            return False

    def size(self, name: str) -> int:
        return int(self._head(name)["ContentLength"])

    def abort_incomplete_writes(self, reference: str, min_age: float) -> int:
        """Abort the incomplete multipart uploads below the prefix (packs of killed writers) started more than
        ``min_age`` seconds before ``reference`` was last written, both by the store's clock. A store without
        ListMultipartUploads, or a credential without the permission, aborts nothing (the bucket's lifecycle rule
        AbortIncompleteMultipartUpload then does it)."""
        try:
            now = self.mtime(reference)
        except FileNotFoundError:
            return 0  # the lock object was just renamed by its refresh: the next GC does it
        base = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for upload in page.get("Uploads", ()):
                    if now - upload["Initiated"].timestamp() <= min_age:
                        continue
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
                    except botocore.exceptions.ClientError as exc:
                        if str(exc.response.get("Error", {}).get("Code", "")) != "NoSuchUpload":
                            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            # rclone serve s3 answers NoSuchUpload when nothing is pending below a nested prefix
            if isinstance(exc, botocore.exceptions.ClientError) and (
                    str(exc.response.get("Error", {}).get("Code", "")) in ("NotImplemented", "AccessDenied",
                                                                           "NoSuchUpload")
                    or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (403, 501)):
                return aborted
            raise self._fail("abort the incomplete uploads of", "", exc) from exc
        return aborted

    def make_dirs(self, directories: t.Iterable[str]) -> None:
        # S3 has no directories; check the bucket is there and ours, so that init fails early and clearly
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if isinstance(exc, botocore.exceptions.ClientError) and str(
                    exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchBucket", "NotFound"):
                exc.response["Error"]["Code"] = "NoSuchBucket"
                exc.response["Error"]["Message"] = "The specified bucket does not exist"
            raise self._fail("use the bucket of", "", exc) from exc

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        try:
            self.client.close()
        except Exception:  # pylint: disable=broad-except
            pass
