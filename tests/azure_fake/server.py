# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""HTTPS fake of the Azure endpoints the azure provider uses, driven by the real SDKs.

- Microsoft Entra ID (the authority azure-identity's client-secret flow talks to, with instance discovery off):
  ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``POST /{tenant}/oauth2/v2.0/token``; the secret
  is checked and the bearer tokens it hands out are required by every ARM request.
- Azure Resource Manager, Microsoft.Compute: virtualMachines (get, list, instanceView, PATCH, deallocate, start,
  powerOff), disks and snapshots (get, list, PUT, PATCH tags, DELETE, beginGetAccess, endGetAccess), and the
  operation status/location URLs of long-running operations.
- Managed-disk export/import through SAS URLs: page-blob reads, page lists, page-range diffs between snapshots
  (``x-ms-previous-snapshot-url``) and page uploads.

Everything is served on 127.0.0.1 with a self-signed certificate the tests trust (azure-core sends bearer tokens
over HTTPS only).
"""

from __future__ import annotations

import email.utils
import http.server
import json
import re
import ssl
import sys
import threading
import typing as t
import urllib.parse
import uuid
import os

from .model import PAGE, ArmError, Cloud

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hyperv_sim.server import make_certificate  # noqa: E402  pylint: disable=wrong-import-position

_ARM = re.compile(r"^/subscriptions/(?P<sub>[^/]+)(?:/resourceGroups/(?P<rg>[^/]+))?/providers/Microsoft\.Compute/"
                  r"(?P<rest>.*)$", re.IGNORECASE)
_VHD_FOOTER = b"conectix" + bytes(PAGE - 8)  # what a managed disk's export carries after its last page


def page_ranges(pages: t.Iterable[int]) -> list[tuple[int, int]]:
    """Coalesce page numbers into (first byte, last byte) ranges."""
    ranges: list[tuple[int, int]] = []
    for number in sorted(pages):
        start = number * PAGE
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1] = (ranges[-1][0], start + PAGE - 1)
        else:
            ranges.append((start, start + PAGE - 1))
    return ranges


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002  pylint: disable=redefined-builtin
        pass

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def cloud(self) -> Cloud:
        return self.server.fake.cloud

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: t.Any = None, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        if data or body is not None:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        line = f"{self.command} {url.path}"
        body = self._body()
        with self.cloud.lock:
            self.cloud.log.append(line)
        try:
            if "/oauth2/" in url.path or "/.well-known/" in url.path:
                self._identity(url.path, body)
            elif url.path.startswith("/md-"):
                self._blob(url.path, query, body)
            elif url.path.startswith("/_guest/"):
                self._guest(url.path, query, body)
            else:
                self._check_token()
                fault = self.cloud.check_faults(line)
                self._arm(url.path, query, body, fault)
        except ArmError as exc:
            self._send(exc.status, exc.body(), exc.headers)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _dispatch

    # -- Entra ID -------------------------------------------------------------------------------------

    def _identity(self, path: str, body: bytes) -> None:
        tenant = path.strip("/").split("/")[0]
        if path.endswith("/.well-known/openid-configuration"):
            root = f"{self.base}/{tenant}"
            self._send(200, {"token_endpoint": f"{root}/oauth2/v2.0/token", "issuer": f"{root}/v2.0",
                             "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                             "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                             "tenant_region_scope": "EU"})
            return
        form = dict(urllib.parse.parse_qsl(body.decode()))
        cloud = self.cloud
        if tenant != cloud.tenant:
            self._send(400, {"error": "invalid_request", "error_description": f"AADSTS90002: Tenant '{tenant}' not found."})
        elif form.get("client_id") != cloud.client_id or form.get("client_secret") != cloud.secret:
            self._send(401, {"error": "invalid_client", "error_description":
                             "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
                             "request is the client secret value, not the client secret ID."})
        else:
            token = uuid.uuid4().hex
            with cloud.lock:
                cloud.tokens.add(token)
            self._send(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def _check_token(self) -> None:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.cloud.tokens:
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing "
                                                        "or invalid.")

    # -- ARM ----------------------------------------------------------------------------------------

    def _lro(self, op: t.Any, status: int, body: t.Any, location: bool = True) -> None:
        loc = self.cloud.location
        url = f"{self.base}/subscriptions/{self.cloud.subscription}/providers/Microsoft.Compute/locations/{loc}/operations/{op.id}"
        headers = {"Azure-AsyncOperation": f"{url}?api-version=2025-01-02",
                   "Retry-After": str(self.cloud.retry_after)}
        if location:
            headers["Location"] = f"{url}?monitor=true&api-version=2025-01-02"
        self._send(status, body, headers)

    def _arm(self, path: str, query: dict[str, str], raw: bytes, fault: t.Any) -> None:
        cloud = self.cloud
        if "api-version" not in query:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required.")
        match = _ARM.match(path)
        if match is None or match["sub"] != cloud.subscription:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription in '{path}' could not be found.")
        rest = match["rest"].split("/")
        group = match["rg"]
        body = json.loads(raw) if raw else {}
        method = self.command
        if rest[0].lower() == "locations" and len(rest) == 4:
            op = cloud.poll(rest[3])
            if query.get("monitor") == "true":  # the Location URL: 202 until done, then the result
                if op.status == "InProgress":
                    self._send(202, None, {"Location": self.path, "Retry-After": str(cloud.retry_after)})
                elif op.status == "Failed":
                    self._send(500, {"error": op.error})
                else:
                    self._send(200, op.result if op.result is not None else None)
                return
            answer: dict[str, t.Any] = {"name": op.id, "status": op.status, "startTime": "2026-12-04T00:00:00Z"}
            if op.error:
                answer["error"] = op.error
            if op.status == "Succeeded" and op.result is not None:
                answer["properties"] = {"output": op.result}
            self._send(200, answer, {"Retry-After": str(cloud.retry_after)} if op.status == "InProgress" else None)
            return
        kind = rest[0]
        tables = {"virtualmachines": cloud.vms, "disks": cloud.disks, "snapshots": cloud.snapshots}
        table = tables.get(kind.lower())
        if table is None:
            raise ArmError(400, "InvalidResourceType", f"The resource type '{kind}' is not served by this fake.")
        if len(rest) == 1:  # list
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", "Lists are read with GET.")
            prefix = f"/subscriptions/{cloud.subscription}/resourcegroups/{group.lower()}/" if group else ""
            with cloud.lock:
                items = [cloud.public(r) for k, r in table.items() if k.startswith(prefix)]
            self._send(200, {"value": items})
            return
        if group is None:
            raise ArmError(404, "NotFound", "Resources are addressed within a resource group.")
        rid = cloud.rid(group, {"virtualmachines": "virtualMachines"}.get(kind.lower(), kind.lower()), rest[1])
        action = rest[2] if len(rest) > 2 else None
        if table is cloud.vms:
            self._vm(rid, action, method, body, fault)
        else:
            self._disk_or_snapshot(table, rid, action, method, body, fault)

    def _vm(self, rid: str, action: str | None, method: str, body: dict[str, t.Any], fault: t.Any) -> None:
        cloud = self.cloud
        if action is None and method == "PUT" and cloud.key(rid) not in cloud.vms:
            with cloud.lock:
                vm, complete = cloud.put_vm(rid, body)
            answer = cloud.public(vm)
            self._lro(cloud.start_op(complete, fault), 201, answer, location=False)
            return
        vm = cloud.find(cloud.vms, rid, "VM")
        if action is None and method == "GET":
            answer = cloud.public(vm)
            if "instanceView" in (urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("$expand") or []):
                answer["properties"]["instanceView"] = cloud.instance_view(vm)
            self._send(200, answer)
        elif action == "instanceView" and method == "GET":
            self._send(200, cloud.instance_view(vm))
        elif action is None and method == "PATCH":
            op = cloud.start_op(cloud.patch_vm(vm, body), fault)
            answer = cloud.public(vm)
            answer["properties"]["provisioningState"] = "Updating"
            self._lro(op, 200, answer, location=False)
        elif action in ("deallocate", "start", "powerOff", "restart") and method == "POST":
            op = cloud.start_op(cloud.power(vm, action), fault)
            self._lro(op, 202, None)
        else:
            raise ArmError(405, "MethodNotAllowed", f"{method} {action or ''} is not served for VMs by this fake.")

    def _disk_or_snapshot(self, table: dict[str, t.Any], rid: str, action: str | None, method: str,
                          body: dict[str, t.Any], fault: t.Any) -> None:
        cloud = self.cloud
        is_snap = table is cloud.snapshots
        if action is None and method == "GET":
            self._send(200, cloud.public(cloud.find(table, rid, "resource")))
        elif action is None and method == "PUT":
            with cloud.lock:
                if cloud.key(rid) in table:
                    raise ArmError(409, "Conflict", f"{rid.rsplit('/', 1)[1]} exists; this fake does not replace it.")
                resource, complete = cloud.put_snapshot(rid, body) if is_snap else cloud.put_disk(rid, body)
            self._lro(cloud.start_op(complete, fault), 202, cloud.public(resource))
        elif action is None and method == "PATCH":
            found = cloud.find(table, rid, "resource")
            if set(body) - {"tags"}:
                raise ArmError(400, "InvalidParameter", "This fake updates tags only.")

            def complete() -> None:
                with cloud.lock:
                    found["tags"] = dict(body.get("tags") or {})
            self._lro(cloud.start_op(complete, fault), 202, cloud.public(found))
        elif action is None and method == "DELETE":
            complete = cloud.delete(table, rid)
            if complete is None:
                self._send(204)
            else:
                self._lro(cloud.start_op(complete, fault), 202, None)
        elif action == "beginGetAccess" and method == "POST":
            self._lro(cloud.start_op(cloud.grant(table, rid, body, self.base), fault), 202, None)
        elif action == "endGetAccess" and method == "POST":
            self._lro(cloud.start_op(cloud.revoke(table, rid), fault), 202, None)
        else:
            raise ArmError(405, "MethodNotAllowed", f"{method} {action or ''} is not served by this fake.")

    # -- what a guest does (a test control, not an Azure endpoint) -----------------------------------

    def _guest(self, path: str, query: dict[str, str], body: bytes) -> None:
        """``POST /_guest/<group>/<vm>/write?slot=os&offset=N``: the guest writes ``body`` to that disk."""
        group, name, verb = path.split("/")[2:5]
        vm = self.cloud.vm(group, name)
        if verb != "write" or vm["_power"] != "running":
            raise ArmError(409, "Conflict", f"VM {name} is {vm['_power']}: its guest writes nothing.")
        data = body.ljust(-(-len(body) // PAGE) * PAGE, b"\0")
        self.cloud.write(self.cloud.vm_disk_ids(vm)[query.get("slot", "os")], int(query.get("offset", 0)), data)
        self._send(204)

    # -- page blobs behind SAS URLs --------------------------------------------------------------------

    def _resolve_sas(self, query: dict[str, str], url: str | None = None) -> tuple[str, str]:
        if url is not None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        found = self.cloud.sas.get(query.get("sig") or "")
        if found is None:
            raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request: the SAS is not "
                                                        "valid (revoked or expired).")
        return found

    def _blob(self, path: str, query: dict[str, str], raw: bytes) -> None:
        cloud = self.cloud
        key, access = self._resolve_sas(query)
        blob = cloud.blobs[key]
        total = blob.size + PAGE
        common = {"x-ms-blob-type": "PageBlob", "x-ms-version": "2025-01-05", "ETag": '"0x8DC0000000000001"',
                  "Last-Modified": email.utils.formatdate(usegmt=True), "Accept-Ranges": "bytes"}
        rng = self.headers.get("x-ms-range") or self.headers.get("Range")
        if self.command == "PUT" and query.get("comp") == "page":
            if access != "Write":
                raise ArmError(403, "AuthorizationPermissionMismatch", "This SAS does not allow writes.")
            first, last = (int(x) for x in rng.split("=", 1)[1].split("-"))
            if first % PAGE or (last + 1) % PAGE or last >= total:
                raise ArmError(416, "InvalidPageRange", "The page range specified is invalid.")
            if self.headers.get("x-ms-page-write", "update").lower() == "clear":
                for number in range(first // PAGE, (last + 1) // PAGE):
                    blob.pages.pop(number, None)
            else:
                data = raw
                if len(data) != last - first + 1:
                    raise ArmError(400, "InvalidHeaderValue", "The body length does not match the range.")
                upto = min(last + 1, blob.size)
                if upto > first:
                    cloud.write(key, first, data[:upto - first])
            self._send(201, None, {**common, "x-ms-blob-sequence-number": "0", "x-ms-request-server-encrypted": "true"})
            return
        if self.command in ("GET", "HEAD") and query.get("comp") == "pagelist":
            previous = self.headers.get("x-ms-previous-snapshot-url")
            pages = set(blob.pages)
            clear: set[int] = set()
            if previous:
                prev_key = self._resolve_sas({}, previous)[0]
                snaps = cloud.snapshots
                mine, theirs = snaps.get(key), snaps.get(prev_key)
                if mine is None or theirs is None or (mine["properties"].get("incrementalSnapshotFamilyId")
                                                      != theirs["properties"].get("incrementalSnapshotFamilyId")):
                    raise ArmError(409, "PreviousSnapshotNotFound" if theirs is None else "InvalidPreviousSnapshot",
                                   "Page-range diffs are answered only between incremental snapshots of one disk.")
                old = cloud.blobs[prev_key].pages
                pages = {n for n, p in blob.pages.items() if old.get(n) != p}
                clear = {n for n in old if n not in blob.pages}
            if rng:
                first, last = (int(x) for x in rng.split("=", 1)[1].split("-"))
                pages = {n for n in pages if first <= n * PAGE <= last}
                clear = {n for n in clear if first <= n * PAGE <= last}
            xml = ['<?xml version="1.0" encoding="utf-8"?><PageList>']
            xml += [f"<PageRange><Start>{a}</Start><End>{b}</End></PageRange>" for a, b in page_ranges(pages)]
            xml += [f"<ClearRange><Start>{a}</Start><End>{b}</End></ClearRange>" for a, b in page_ranges(clear)]
            xml.append("</PageList>")
            self._send(200, "".join(xml).encode(), {**common, "x-ms-blob-content-length": str(total)},
                       content_type="application/xml")
            return
        if self.command in ("GET", "HEAD"):
            if access != "Read":
                raise ArmError(403, "AuthorizationPermissionMismatch", "This SAS does not allow reads.")
            first, last = 0, total - 1
            status = 200
            if rng:
                first, last = (int(x) for x in rng.split("=", 1)[1].split("-"))
                last = min(last, total - 1)
                status = 206
            data = blob.read(first, max(0, min(last + 1, blob.size) - first)) if first < blob.size else b""
            if last >= blob.size:
                data += _VHD_FOOTER[max(0, first - blob.size):last + 1 - blob.size]
            with cloud.lock:
                cloud.bytes_served += len(data)
            headers = {**common, "Content-Range": f"bytes {first}-{last}/{total}"} if status == 206 else common
            self._send(status, data, headers, content_type="application/octet-stream")
            return
        raise ArmError(405, "UnsupportedHttpVerb", f"{self.command} is not served for blobs by this fake.")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    fake: "AzureFake"


class AzureFake:
    """The running fake: ``with AzureFake(tmpdir) as fake: ...``; ``fake.cloud`` is its state."""

    def __init__(self, directory: str) -> None:
        self.cloud = Cloud()
        self.ca_path, self.key_path = make_certificate(directory, common_name="vmsafe azure fake", prefix="azure")
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reset(self) -> Cloud:
        self.cloud = Cloud()
        return self.cloud

    def connection(self, **extra: t.Any) -> dict[str, t.Any]:
        """Module options that reach this fake."""
        cloud = self.cloud
        args = {"hypervisor": "azure", "base_url": self.url, "authority_host": self.url, "ca_path": self.ca_path,
                "subscription_id": cloud.subscription, "client_id": cloud.client_id, "secret": cloud.secret,
                "tenant": cloud.tenant, "connect_timeout": 20}
        args.update(extra)
        return args

    def start(self) -> None:
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.fake = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_path, self.key_path)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> AzureFake:
        self.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()
