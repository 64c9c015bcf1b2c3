# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Small command line entry to the backup engine, so the benchmark can run it as a child process.

Usage (passphrase from VMSAFE_PASSPHRASE; empty means encryption none):
    vmsafe_cli.py init REPO [--chunk-size N] [--level N]
    vmsafe_cli.py backup REPO IMAGE [--vm NAME] [--disk NAME] [--parent ID] [--extents FILE.json] [--skip-holes]
    vmsafe_cli.py restore REPO BACKUP_ID DISK TARGET
    vmsafe_cli.py verify REPO [--read-data]
Prints one JSON object on stdout. VMSAFE_BACKEND_OPTIONS (JSON object) is passed to open_backend (S3 options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
LAB = os.path.join(os.path.dirname(HERE), ".lab", "collections")
if os.path.isdir(LAB) and LAB not in sys.path:
    sys.path.insert(0, LAB)

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import (  # noqa: E402
    FileRange,
    file_extents,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackupError  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import (  # noqa: E402
    DiskSource,
    Repository,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsafe_cli")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init")
    p_init.add_argument("repo")
    p_init.add_argument("--chunk-size", type=int, default=None)
    p_init.add_argument("--level", type=int, default=None)
    p_backup = sub.add_parser("backup")
    p_backup.add_argument("repo")
    p_backup.add_argument("image")
    p_backup.add_argument("--vm", default="bench-vm")
    p_backup.add_argument("--disk", default="vda")
    p_backup.add_argument("--parent")
    p_backup.add_argument("--extents", help="JSON list of [offset, length] changed extents (incremental)")
    p_backup.add_argument("--skip-holes", action="store_true")
    p_restore = sub.add_parser("restore")
    p_restore.add_argument("repo")
    p_restore.add_argument("backup_id")
    p_restore.add_argument("disk")
    p_restore.add_argument("target")
    p_verify = sub.add_parser("verify")
    p_verify.add_argument("repo")
    p_verify.add_argument("--read-data", action="store_true")
    args = parser.parse_args(argv)
    passphrase = os.environ.get("VMSAFE_PASSPHRASE") or None
    try:
        backend = open_backend(args.repo, **json.loads(os.environ.get("VMSAFE_BACKEND_OPTIONS") or "{}"))
        if args.cmd == "init":
            opts: dict[str, t.Any] = {}
            if args.chunk_size:
                opts["chunk_size"] = args.chunk_size
            if args.level is not None:
                opts["compression_level"] = args.level
            repo = Repository.init(
                backend, passphrase=passphrase, encryption="aes-256-gcm" if passphrase else "none", **opts
            )
            out: dict[str, t.Any] = {"config": repo.config}
        elif args.cmd == "backup":
            repo = Repository.open(backend, passphrase)
            fd = os.open(args.image, os.O_RDONLY)
            size = os.fstat(fd).st_size
            if args.extents:
                with open(args.extents, encoding="utf-8") as handle:
                    ranges = json.load(handle)
                extents: t.Any = ((off, length, FileRange(fd, off)) for off, length in ranges)
            else:
                extents = file_extents(fd, size, skip_holes=args.skip_holes)
            record = repo.backup(args.vm, [DiskSource(args.disk, size, extents)], parent=args.parent)
            os.close(fd)
            out = {"id": record.id, "stats": record.stats, "digest": record.disks[0].content_digest}
        elif args.cmd == "restore":
            repo = Repository.open(backend, passphrase)
            out = repo.restore(args.backup_id, args.disk, args.target)
        else:
            repo = Repository.open(backend, passphrase)
            report = repo.verify(read_data=args.read_data)
            out = {
                "ok": report.ok,
                "errors": report.errors,
                "damaged": len(report.damaged),
                "chunks_checked": report.chunks_checked,
            }
    except BackupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
