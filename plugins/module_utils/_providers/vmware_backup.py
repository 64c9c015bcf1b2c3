# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""VMware backups: a snapshot, Changed Block Tracking, and byte-range reads through the datastore HTTP interface.

One run: CBT is turned on when it is off (the run is then a full one), a snapshot ``vmsafe-backup-<time>`` freezes
the disks (quiesced through VMware Tools when asked), ``QueryChangedDiskAreas`` lists per disk the areas written since
the change id the last backup recorded ("*": every allocated area, for a full), and those areas are read from the
disk's flat file with HTTP ``Range`` requests on ``/folder/<path>?dcPath=&dsName=``, authenticated by the API
session's cookie. The snapshot's change ids are recorded with the backup; ``close`` removes the snapshot whatever
happened, so only CBT's state remains on the VM.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import typing as t
import urllib.parse

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef

READ_PIECE = 4 * 1024 * 1024  # bytes per HTTP range request


@dataclasses.dataclass
class DatastoreHttp:
    """Byte ranges of datastore files over the vCenter/ESXi HTTPS interface, on one kept-alive connection."""

    hostname: str
    port: int
    cookie: str
    context: ssl.SSLContext | None
    timeout: float
    conn: http.client.HTTPSConnection | None = None
    proxy_host: str | None = None  # the proxy_host option: tunnel through it (CONNECT), as pyVmomi does
    proxy_port: int = 80

    def _connection(self) -> http.client.HTTPSConnection:
        if self.conn is None:
            if self.proxy_host:
                self.conn = http.client.HTTPSConnection(self.proxy_host, self.proxy_port, context=self.context,
                                                        timeout=self.timeout)
                self.conn.set_tunnel(self.hostname, self.port)
            else:
                self.conn = http.client.HTTPSConnection(self.hostname, self.port, context=self.context,
                                                        timeout=self.timeout)
        return self.conn

    @staticmethod
    def url(datacenter: str, datastore: str, path: str) -> str:
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
        return f"/folder/{urllib.parse.quote(path)}?{query}"

    def request(self, method: str, url: str, body: t.Any = None, headers: dict[str, str] | None = None) -> bytes:
        sent = {"Cookie": self.cookie, **(headers or {})}
        try:
            conn = self._connection()
            conn.request(method, url, body=body, headers=sent)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ProviderError(f"Datastore HTTP {method} {url.split('?')[0]} on {self.hostname}:{self.port} failed: "
                                f"{exc}") from exc
        if answer.status not in (200, 201, 204, 206):
            raise ProviderError(f"Datastore HTTP {method} {url.split('?')[0]} on {self.hostname}:{self.port} answered "
                                f"{answer.status} {answer.reason}.")
        return data

    def read(self, url: str, offset: int, length: int) -> bytes:
        try:
            data = self.request("GET", url, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        except ProviderError as exc:
            if " 416 " not in str(exc):
                raise
            data = b""  # wholly past the end of a sparse flat file
        if len(data) < length:  # past the end of a sparse flat file the disk reads as zeros
            data += bytes(length - len(data))
        return data[:length]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclasses.dataclass
class VmwareDisk:
    """One disk of the backup snapshot."""

    target: str  # the device label, e.g. "Hard disk 1"
    key: int
    size: int
    url: str
    change_id: str  # the change id the snapshot gave this disk
    since: str  # the change id of the last backup, or "*" for a full read
    query: t.Callable[[int, int, str], t.Any]  # (device key, start offset, change id) -> DiskChangeInfo
    http: DatastoreHttp

    def ranges(self) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        offset = 0
        while offset < self.size:
            info = self.query(self.key, offset, self.since)
            found.extend((int(a.start), int(a.length)) for a in info.changedArea or [])
            if int(info.length) <= 0:
                raise ProviderError(f"QueryChangedDiskAreas covered nothing at offset {offset} of {self.target}.")
            offset = int(info.startOffset) + int(info.length)
        return found

    def extents(self) -> t.Iterator[tuple[int, int, bytes]]:
        for start, length in self.ranges():
            while length > 0:
                step = min(length, READ_PIECE)
                yield start, step, self.http.read(self.url, start, step)
                start += step
                length -= step


@dataclasses.dataclass
class VmwareBackupSession:
    """An open VMware backup: the snapshot and its disks."""

    vm: VmRef
    checkpoint: str  # JSON: device key -> change id of the snapshot
    consistency: str
    vm_definition: str
    disks: list[VmwareDisk]
    remove_snapshot: t.Callable[[], None]
    http: DatastoreHttp
    done: bool = False

    def abort(self) -> None:
        self.http.close()  # a read in progress fails at once

    def close(self, success: bool) -> None:  # pylint: disable=unused-argument  # the snapshot goes either way
        if self.done:
            return
        self.done = True
        self.http.close()
        self.remove_snapshot()


def change_ids(disks: list[VmwareDisk]) -> str:
    return json.dumps({str(d.key): d.change_id for d in disks}, sort_keys=True)


DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW {sectors} VMFS "{flat}"

# The Disk Data Base
ddb.adapterType = "lsilogic"
ddb.virtualHWVersion = "13"
"""
