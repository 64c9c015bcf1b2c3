# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The S3 backend against real S3 servers: SeaweedFS (``weed server -s3``) and ``rclone serve s3``.

No mocks: both servers run from their PyPI wheels on 127.0.0.1 (conftest.py fixtures ``seaweedfs``/``rclone_s3``).
The backend contract (writes invisible until commit, no-overwrite creates, ranged reads, list, delete, mtime), the
engine round trip (init, full + incremental backup, bit-identical restore, verify with read_data, prune + GC), the
error messages, and what a backup-only credential can and cannot do.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import secrets
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackendError,
    InvalidArgumentError,
    LockedError,
    LockLostError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    FAST_KDF,
    PASSPHRASE,
    make_image,
)

SERVERS = ["seaweedfs", "rclone_s3"]
MIB = 1024 * 1024


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> t.Any:
    return request.getfixturevalue(request.param)


def backend_on(server: t.Any, bucket: str | None = None, who: str = "admin", **extra: t.Any) -> t.Any:
    bucket = bucket or server.new_bucket()
    return open_backend(f"s3://{bucket}/repo-{secrets.token_hex(3)}", **server.options(who, **extra))


# --------------------------------------------------------------------------- the backend contract

def test_objects_round_trip(server: t.Any) -> None:
    backend = backend_on(server)
    backend.make_dirs(["packs", "index"])
    backend.write_atomic("config", b"cfg")
    backend.write_atomic("packs/ab/abcd", b"x" * 1000)
    backend.write_atomic("packs/cd/cdef", b"y" * 10)
    backend.write_atomic("index/1", b"i")
    assert backend.read("config") == b"cfg"
    assert backend.list("packs") == [("packs/ab/abcd", 1000), ("packs/cd/cdef", 10)]
    assert backend.list("nothing") == []
    assert backend.size("packs/ab/abcd") == 1000 and backend.exists("index/1")
    assert backend.read_range("packs/ab/abcd", 10, 5) == b"xxxxx"
    with pytest.raises(BackendError, match="Short read"):
        backend.read_range("packs/cd/cdef", 5, 20)
    with pytest.raises(FileNotFoundError):
        backend.read("missing")
    with pytest.raises(FileNotFoundError):
        backend.read_range("missing", 0, 1)
    with pytest.raises(FileNotFoundError):
        backend.size("missing")
    backend.delete("index/1")
    backend.delete("index/1")  # missing is fine
    assert not backend.exists("index/1") and backend.list("index") == []
    backend.close()


def test_writer_invisible_until_commit_small_and_multipart(server: t.Any) -> None:
    backend = backend_on(server, part_size=5 * MIB, upload_threads=2)
    rng = random.Random(7)
    data = rng.randbytes(12 * MIB + 12345)  # three parts: 5 + 5 + the rest
    writer = backend.open_writer("packs/aa/big")
    for pos in range(0, len(data), 700_000):
        writer.write(data[pos:pos + 700_000])
        assert not backend.exists("packs/aa/big")
    assert backend.list("packs") == []
    writer.commit()
    assert backend.size("packs/aa/big") == len(data)
    assert backend.read_range("packs/aa/big", 5 * MIB - 3, 10) == data[5 * MIB - 3:5 * MIB + 7]
    assert backend.read("packs/aa/big") == data
    small = backend.open_writer("packs/aa/small")
    small.write(b"abc")
    assert not backend.exists("packs/aa/small")
    small.commit()
    assert backend.read("packs/aa/small") == b"abc"
    # an aborted multipart write leaves no object and no pending upload
    aborted = backend.open_writer("packs/aa/aborted")
    aborted.write(data[: 11 * MIB])
    aborted.abort()
    assert not backend.exists("packs/aa/aborted")
    assert [n for n, _s in backend.list("packs")] == ["packs/aa/big", "packs/aa/small"]
    if server.kind == "seaweedfs":
        uploads = server.client().list_multipart_uploads(Bucket=backend.bucket).get("Uploads", [])
        assert [u for u in uploads if u["Key"].endswith("aborted")] == []
    backend.close()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_read_ahead_blocks_and_prefetch(seaweedfs: t.Any, prefetch: int) -> None:
    """Small pack reads are served from aligned read-ahead blocks; reading a pack in order fetches the next blocks
    in the background. Whatever the pattern, every read returns the stored bytes, the cache stays bounded, and a
    block past the end of the object is an empty read, not an error."""
    block = 64 * 1024
    backend = backend_on(seaweedfs, read_ahead=block, cache_blocks=6, prefetch=prefetch)
    rng = random.Random(prefetch)
    data = rng.randbytes(10 * block + 777)
    backend.write_atomic("packs/ab/ab01", data)
    gets = []
    backend.client.meta.events.register("before-call.s3.GetObject", lambda params, **_kw: gets.append(
        params.get("headers", {}).get("Range")))
    pos = 0
    while pos < len(data):  # restore's pattern: blob after blob, in order
        length = min(rng.randrange(1, block), len(data) - pos)
        assert backend.read_range("packs/ab/ab01", pos, length) == data[pos:pos + length]
        pos += length
        assert len(backend._blocks) <= 6  # pylint: disable=protected-access
    backend.pool().shutdown(wait=True)  # prefetches finished
    # every block was fetched once (no block twice, none missed); with prefetch, ahead of being needed
    assert len(gets) == len(set(gets)) and len(gets) <= 11 + prefetch
    assert {f"bytes={n * block}-{(n + 1) * block - 1}" for n in range(11)} <= set(gets)
    backend._pool = None  # pylint: disable=protected-access
    for _unused in range(40):  # verify's pattern: anywhere
        pos = rng.randrange(0, len(data))
        length = rng.randrange(1, block)
        want = data[pos:pos + length]
        if len(want) < length:
            with pytest.raises(BackendError, match="Short read"):
                backend.read_range("packs/ab/ab01", pos, length)
        else:
            assert backend.read_range("packs/ab/ab01", pos, length) == want
    with pytest.raises(FileNotFoundError):
        backend.read_range("packs/ab/missing", 0, 10)
    backend.write_atomic("packs/ab/missing", b"now here")  # a failed read is not cached
    assert backend.read_range("packs/ab/missing", 4, 4) == b"here"
    backend.close()


def test_create_exclusive_never_replaces(server: t.Any) -> None:
    backend = backend_on(server)
    backend.create_exclusive("keys/repokey", b"first")
    with pytest.raises(FileExistsError):
        backend.create_exclusive("keys/repokey", b"second")
    assert backend.read("keys/repokey") == b"first"
    backend.close()


def test_if_none_match_honoured_by_seaweedfs_ignored_by_rclone(server: t.Any) -> None:
    """With the HEAD check off (conditional_writes=always), only the server's If-None-Match refuses an overwrite:
    SeaweedFS does (412), rclone does not, which is why the engine never depends on it."""
    backend = backend_on(server, conditional_writes="always")
    backend.create_exclusive("snapshots/x", b"first")
    if server.kind == "seaweedfs":
        with pytest.raises(FileExistsError):
            backend.create_exclusive("snapshots/x", b"second")
        assert backend.read("snapshots/x") == b"first"
    else:
        backend.create_exclusive("snapshots/x", b"second")
        assert backend.read("snapshots/x") == b"second"
    backend.close()


def test_create_exclusive_race_has_one_winner_on_seaweedfs(seaweedfs: t.Any) -> None:
    backend = backend_on(seaweedfs, conditional_writes="always")
    for round_ in range(5):
        name = f"locks/race-{round_}"

        def attempt(n: int, name: str = name) -> bool:
            try:
                backend.create_exclusive(name, f"writer {n}".encode())
                return True
            except FileExistsError:
                return False

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            won = [n for n, ok in enumerate(pool.map(attempt, range(8))) if ok]
        assert len(won) == 1, f"round {round_}: {len(won)} writers created {name}"
        assert backend.read(name) == f"writer {won[0]}".encode()
    backend.close()


def test_mtime_is_the_storage_clock(server: t.Any) -> None:
    backend = backend_on(server)
    before = time.time()
    backend.write_atomic("locks/a", b"1")
    first = backend.mtime("locks/a")
    assert before - 5 <= first <= time.time() + 5  # same machine: the server's clock is ours
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    backend.write_atomic("locks/b", b"2")
    assert backend.mtime("locks/b") > first
    with pytest.raises(FileNotFoundError):
        backend.mtime("locks/missing")
    backend.close()


# --------------------------------------------------------------------------- options and errors

def test_url_and_option_errors() -> None:
    pytest.importorskip("boto3")
    with pytest.raises(InvalidArgumentError, match="carries credentials") as info:
        open_backend("s3://AKIA:supersecret@bucket/prefix")
    assert "supersecret" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="Unknown S3 option"):
        open_backend("s3://bucket/prefix", password="x")
    with pytest.raises(InvalidArgumentError, match="valid bucket"):
        open_backend("s3://b/prefix")
    with pytest.raises(InvalidArgumentError, match="both"):
        open_backend("s3://bucket/prefix", access_key="AKIA")
    with pytest.raises(InvalidArgumentError, match="part size"):
        open_backend("s3://bucket/prefix", part_size=1024)


def test_error_messages_name_bucket_and_fix_without_secrets(seaweedfs: t.Any) -> None:
    missing = open_backend("s3://no-such-bucket-vmsafe/repo", **seaweedfs.options())
    with pytest.raises(BackendError, match="no-such-bucket-vmsafe.*does not exist.*create it"):
        missing.make_dirs(["packs"])
    with pytest.raises(BackendError, match="does not exist"):
        missing.list("packs")
    wrong_secret = "wrong-" + secrets.token_hex(8)
    bad = open_backend(f"s3://{seaweedfs.new_bucket()}/repo",
                       **seaweedfs.options(secret_key=wrong_secret))
    with pytest.raises(BackendError, match="refused the credentials") as info:
        bad.read("config")
    assert wrong_secret not in str(info.value) and seaweedfs.admin[1] not in str(info.value)
    dead = open_backend("s3://bucket-x/repo",
                        **seaweedfs.options(endpoint_url="http://127.0.0.1:9", max_attempts=1, timeout=2))
    with pytest.raises(BackendError, match="unreachable"):
        dead.read("config")


def test_credentials_from_the_aws_environment(seaweedfs: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.admin[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.admin[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    backend = open_backend(f"s3://{seaweedfs.new_bucket()}/repo", endpoint_url=seaweedfs.endpoint)
    backend.write_atomic("config", b"from env")
    assert backend.read("config") == b"from env"


# --------------------------------------------------------------------------- the engine on S3

def test_engine_round_trip(server: t.Any, tmp_path: t.Any) -> None:
    location = f"s3://{server.new_bucket()}/vmsafe/prod"
    options = server.options(part_size=5 * MIB)
    repo = Repository.init(open_backend(location, **options), PASSPHRASE, chunk_size=4096, pack_size=6 * MIB,
                           segment_chunks=8, kdf=FAST_KDF)
    rng = random.Random(11)
    full = make_image(rng, 7 * MIB)  # more than one part: packs go up as multipart uploads
    first = repo.backup("vm1", [DiskSource("vda", len(full), [(0, len(full), full)])])
    changed = bytearray(full)
    changed[MIB:MIB + 8192] = rng.randbytes(8192)
    second = repo.backup("vm1", [DiskSource("vda", len(changed), [(MIB, 8192, bytes(changed[MIB:MIB + 8192]))])],
                         parent=first.id)
    repo.close()
    reopened = Repository.open(open_backend(location, **options), PASSPHRASE)
    assert [r.id for r in reopened.list()] == [first.id, second.id]
    for record, want in ((first, full), (second, bytes(changed))):
        target = str(tmp_path / f"{record.id}.raw")
        reopened.restore(record.id, "vda", target)
        with open(target, "rb") as handle:
            assert handle.read() == want
    assert reopened.verify(read_data=True).ok
    result = reopened.prune({"keep_last": 1})
    assert [r.id for r in result.pruned] == [first.id]
    assert [r.id for r in reopened.list()] == [second.id]
    target = str(tmp_path / "after-prune.raw")
    reopened.restore(second.id, "vda", target)
    with open(target, "rb") as handle:
        assert handle.read() == bytes(changed)
    assert reopened.verify(read_data=True).ok
    reopened.close()


def test_gc_aborts_only_stale_incomplete_uploads(server: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed writer leaves an incomplete multipart upload (stored, invisible). GC aborts those of its repository
    that started more than the stale-lock age ago (store clock) and only while it holds the exclusive lock, so an
    upload a live backup may still complete is never touched: while any backup holds its lock, GC does not run."""
    bucket = server.new_bucket("uploads")
    location = f"s3://{bucket}/repo"
    options = server.options(part_size=5 * MIB)
    repo = Repository.init(open_backend(location, **options), PASSPHRASE, chunk_size=4096, pack_size=MIB,
                           segment_chunks=8, kdf=FAST_KDF)
    client = server.client()

    def upload(key: str) -> str:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1000)
        return t.cast(str, upload_id)

    def pending() -> set[str]:
        return {u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}

    killed = f"repo/packs/aa/{'a' * 64}"
    neighbour = f"repo-other/packs/bb/{'b' * 64}"  # another repository whose prefix starts the same
    upload(killed)
    upload(neighbour)
    if server.kind == "rclone" and not pending():
        pytest.skip("rclone serve s3 lists no incomplete uploads (ListMultipartUploads answers empty)")
    assert pending() == {killed, neighbour}
    monkeypatch.setattr(locks, "STALE_SECONDS", 3.0)
    time.sleep(4.2)  # LastModified/Initiated have one-second resolution
    young = f"repo/packs/cc/{'c' * 64}"
    upload(young)
    # a live backup (its shared lock held) writing a pack as a multipart upload: GC cannot start at all
    writer = Repository.open(open_backend(location, **options), PASSPHRASE)
    live = f"packs/dd/{'d' * 64}"
    with writer.lock(False, "backup"):
        handle = writer.backend.open_writer(live)
        handle.write(random.Random(1).randbytes(6 * MIB))  # one part sent: the upload exists
        with pytest.raises(LockedError):
            repo.gc()
        assert f"repo/{live}" in pending()
        handle.commit()
    writer.close()
    result = repo.gc()
    assert result.uploads_aborted == 1
    assert pending() == {neighbour, young}  # the young one may be a writer's whose lock is not stale yet
    time.sleep(4.2)
    assert repo.gc().uploads_aborted == 1
    assert pending() == {neighbour}
    assert repo.verify().ok
    repo.close()


# --------------------------------------------------------------------------- immutability (SeaweedFS)

DATA_PREFIXES = ("config", "keys/*", "packs/*", "index/*", "snapshots/*", "journal/*", "tombstones/*")


def deny_delete_policy(bucket: str, prefix: str) -> str:
    """The backup identity may not delete anything but locks/ (which every writer must remove) and may not write
    tombstones/ (only prune records removals: a tombstone written by a compromised host would hide a deletion)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "BackupsCannotDeleteBackups", "Effect": "Deny",
         "Principal": {"AWS": "arn:aws:iam::000000000000:user/backup"},
         "Action": ["s3:DeleteObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/{p}" for p in DATA_PREFIXES]},
        {"Sid": "BackupsCannotPrune", "Effect": "Deny",
         "Principal": {"AWS": "arn:aws:iam::000000000000:user/backup"},
         "Action": ["s3:PutObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/tombstones/*"]},
    ]})


def test_backup_only_credential_cannot_delete_backups(seaweedfs: t.Any, tmp_path: t.Any) -> None:
    bucket = seaweedfs.new_bucket("immutable")
    seaweedfs.client().put_bucket_policy(Bucket=bucket, Policy=deny_delete_policy(bucket, "repo"))
    location = f"s3://{bucket}/repo"
    hypervisor = Repository.init(open_backend(location, **seaweedfs.options("backup")), PASSPHRASE,
                                 chunk_size=4096, pack_size=MIB, segment_chunks=8, kdf=FAST_KDF)
    images = {}
    for n in range(3):
        images[n] = make_image(random.Random(n), 300_000)
        hypervisor.backup("vm", [DiskSource("vda", len(images[n]), [(0, len(images[n]), images[n])])],
                          tags={"n": str(n)})
    assert hypervisor.backend.list("locks") == []  # its locks were removed: locks/ stays deletable
    # a compromised hypervisor host: deleting backups, packs or the key is refused
    victims = [hypervisor.manifest_name(hypervisor.list()[0].id), hypervisor.backend.list("packs")[0][0],
               "keys/repokey", "config"]
    for name in victims:
        with pytest.raises(BackendError, match="Access denied"):
            hypervisor.backend.delete(name)
        assert hypervisor.backend.exists(name)
    with pytest.raises(BackendError, match="Access denied"):
        hypervisor.prune({"keep_last": 1})
    # what was refused left every backup whole
    admin = Repository.open(open_backend(location, **seaweedfs.options("admin")), PASSPHRASE)
    assert admin.backend.list("locks") == []  # the refused prune removed its lock: locks/ is allowed
    assert admin.backend.list("tombstones") == []
    assert len(admin.list()) == 3
    assert admin.verify(read_data=True).ok
    # prune runs with the other credential
    result = admin.prune({"keep_last": 1})
    assert len(result.pruned) == 2
    last = admin.list()[0]
    target = str(tmp_path / "last.raw")
    admin.restore(last.id, "vda", target)
    with open(target, "rb") as handle:
        assert handle.read() == images[int(last.tags["n"])]
    assert admin.verify(read_data=True).ok
    hypervisor.close()
    admin.close()


def test_backup_only_credential_cannot_void_committed_backups(seaweedfs: t.Any) -> None:
    """Why the backup-only policy denies writing tombstones/: a tombstone (a prune's, or a backup's own "uncommitted"
    void) hides a manifest from list() and makes the next prune remove it. A compromised hypervisor host holds the
    repository key and could seal one for every backup; with the policy, the store refuses it and the backups stay
    listed and survive a prune run with the admin credential."""
    bucket = seaweedfs.new_bucket("void")
    seaweedfs.client().put_bucket_policy(Bucket=bucket, Policy=deny_delete_policy(bucket, "repo"))
    location = f"s3://{bucket}/repo"
    host = Repository.init(open_backend(location, **seaweedfs.options("backup")), PASSPHRASE, chunk_size=4096,
                           pack_size=MIB, segment_chunks=8, kdf=FAST_KDF)
    image = make_image(random.Random(9), 200_000)
    record = host.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])])
    forged = host._seal_entry("tombstones", record, reason="uncommitted")  # pylint: disable=protected-access
    with pytest.raises(BackendError, match="Access denied"):
        host.backend.create_exclusive(f"tombstones/{record.id}", forged)
    admin = Repository.open(open_backend(location, **seaweedfs.options("admin")), PASSPHRASE)
    assert admin.prune({"keep_last": 5}).pruned == []
    assert [r.id for r in admin.list()] == [record.id]
    host.close()
    admin.close()


@pytest.mark.parametrize("who", ["admin", "backup"])
def test_manifest_written_after_the_lock_was_lost_never_looks_committed(
        seaweedfs: t.Any, tmp_path: t.Any, who: str) -> None:
    """The window the lock timing cannot close: a backup passes its last lock check before the manifest, then
    (stalled for longer than the stale-lock age, or its lock removed with break_lock) a prune runs and collects the
    backup's packs, which no manifest used yet, and then the manifest lands. The backup's check after the manifest
    fails and it voids the manifest (tombstone "uncommitted", then delete): with a credential that can delete,
    nothing committed-looking remains. A backup-only credential may do neither (the policy denies tombstones/), but
    break_lock recorded the broken lock (tombstones/lock-<token>) before removing it, and the manifest names its lock
    and has no journal entry: it is not listed, verify skips it, and the next prune removes it."""
    bucket = seaweedfs.new_bucket("lost")
    seaweedfs.client().put_bucket_policy(Bucket=bucket, Policy=deny_delete_policy(bucket, "repo"))
    location = f"s3://{bucket}/repo"
    admin = Repository.init(open_backend(location, **seaweedfs.options("admin")), PASSPHRASE, chunk_size=4096,
                            pack_size=MIB, segment_chunks=8, kdf=FAST_KDF)
    host = Repository.open(open_backend(location, **seaweedfs.options(who)), PASSPHRASE)
    create = host.backend.create_exclusive
    collected = []

    def late_manifest(name: str, data: bytes) -> None:
        if name.startswith("snapshots/") and not collected:
            admin.break_lock()  # or: the backup stalled past the stale-lock age and a prune removed its lock
            collected.append(admin.gc())
        create(name, data)

    host.backend.create_exclusive = late_manifest  # type: ignore[method-assign]
    image = make_image(random.Random(3), 300_000)
    with pytest.raises((LockLostError, BackendError)):
        host.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])])
    assert collected and collected[0].packs_deleted >= 1  # the prune took the backup's packs
    # whatever the credential: no backup is listed whose data is gone, and verify passes
    records = admin.list()
    for record in records:
        admin.restore(record.id, "vda", str(tmp_path / "r.raw"))
    assert records == [], "a manifest written after the lock was lost is listed as a backup"
    assert admin.verify(read_data=True).ok
    left = [n for n, _s in admin.backend.list("snapshots")]
    assert left == ([] if who == "admin" else left) and len(left) == (0 if who == "admin" else 1)
    assert admin.prune({"keep_last": 1}).replayed_removed == [n.split("/", 1)[1] for n in left]
    assert admin.backend.list("snapshots") == [] and admin.verify(read_data=True).ok
    host.close()
    admin.close()


# --------------------------------------------------------------------------- retries

class FlakyProxy:
    """An HTTP proxy in front of the S3 server that answers 503 SlowDown to every ``fail_every``-th request (the
    store throttling) and forwards the others unchanged (Host header included, so signatures stay valid)."""

    def __init__(self, upstream: str, fail_every: int) -> None:
        import http.client  # pylint: disable=import-outside-toplevel
        import http.server  # pylint: disable=import-outside-toplevel
        import threading  # pylint: disable=import-outside-toplevel
        import urllib.parse  # pylint: disable=import-outside-toplevel

        target = urllib.parse.urlsplit(upstream)
        proxy = self
        self.requests = 0
        self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: t.Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.requests += 1
                if proxy.requests % fail_every == 0:
                    proxy.refused += 1
                    payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    conn.putheader(key, value)
                conn.endheaders(body)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: t.Any, client_address: t.Any) -> None:
                pass  # clients closing idle keep-alive connections

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_throttling_is_retried_with_backoff(seaweedfs: t.Any, tmp_path: t.Any) -> None:
    proxy = FlakyProxy(seaweedfs.endpoint, fail_every=4)
    try:
        location = f"s3://{seaweedfs.new_bucket('flaky')}/repo"
        options = seaweedfs.options(endpoint_url=proxy.endpoint, max_attempts=5)
        repo = Repository.init(open_backend(location, **options), PASSPHRASE, chunk_size=4096, pack_size=MIB,
                               segment_chunks=8, kdf=FAST_KDF)
        image = make_image(random.Random(5), 200_000)
        record = repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])])
        target = str(tmp_path / "flaky.raw")
        repo.restore(record.id, "vda", target)
        with open(target, "rb") as handle:
            assert handle.read() == image
        assert repo.verify(read_data=True).ok
        repo.close()
        assert proxy.refused >= 4, f"only {proxy.refused} of {proxy.requests} requests were refused"
        # with retries off, the same store fails clearly, naming the bucket
        no_retry = open_backend(location, **dict(options, max_attempts=1))
        errors = []
        for _unused in range(4):
            try:
                no_retry.read("config")
            except BackendError as exc:
                errors.append(str(exc))
        assert errors and "SlowDown" in errors[0] and location.split("/")[2] in errors[0]
    finally:
        proxy.close()
