# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The peers' option names against vcsim through the real ``ansible`` command: moid, memory_dump, state revert,
vSphere's integer snapshot id, and proxy_host/proxy_port (and VMWARE_PROXY_*) through a real HTTP CONNECT proxy."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

VM = "DC0_H0_VM0"
Run = t.Callable[..., t.Dict[str, t.Any]]


class ConnectProxy:
    """A minimal HTTP proxy on 127.0.0.1 (free port) that only tunnels CONNECT and records each target."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.targets: list[str] = []
        self.closing = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closing:
            try:
                client, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT":
                client.sendall(b"HTTP/1.0 405 Method Not Allowed\r\n\r\n")
                return
            host, port = target.decode().rsplit(":", 1)
            self.targets.append(target.decode())
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.0 200 Connection established\r\n\r\n")
                pair = [client, upstream]
                while True:
                    ready, _w, _x = select.select(pair, [], [], 30)
                    if not ready:
                        return
                    for src in ready:
                        data = src.recv(65536)
                        if not data:
                            return
                        (upstream if src is client else client).sendall(data)

    def close(self) -> None:
        self.closing = True
        self.sock.close()


@pytest.fixture
def sim() -> t.Iterator[Vcsim]:
    with Vcsim() as simulator:
        simulator.si = simulator.connect()
        yield simulator


@pytest.fixture
def proxy() -> t.Iterator[ConnectProxy]:
    relay = ConnectProxy()
    try:
        yield relay
    finally:
        relay.close()


def vm_obj(sim: Vcsim) -> t.Any:
    content = sim.si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(v for v in view.view if v.name == VM)
    finally:
        view.Destroy()


def test_proxy_options_route_the_connection(sim: Vcsim, proxy: ConnectProxy, ansible: Run) -> None:
    through = ansible("vm_snapshot_info", sim.module_args(vm_name=VM, proxy_host="127.0.0.1", proxy_port=proxy.port))
    assert through["_status"] == "ok", through
    assert proxy.targets and set(proxy.targets) == {f"{sim.host}:{sim.port}"}, proxy.targets
    # nothing listens on the proxy port any more: the module must fail, not connect around the proxy
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    failed = ansible("vm_snapshot_info", sim.module_args(vm_name=VM, proxy_host="127.0.0.1", proxy_port=dead_port))
    assert failed["_status"] == "failed" and f"through proxy 127.0.0.1:{dead_port}" in failed["msg"], failed


def test_proxy_from_the_environment(sim: Vcsim, proxy: ConnectProxy, ansible: Run,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMWARE_PROXY_HOST", "127.0.0.1")
    monkeypatch.setenv("VMWARE_PROXY_PORT", str(proxy.port))
    result = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="via-env"))
    assert result["_status"] == "ok" and result["changed"], result
    assert f"{sim.host}:{sim.port}" in proxy.targets


def test_peer_words_moid_memory_dump_revert_and_integer_id(sim: Vcsim, ansible: Run) -> None:
    vm = vm_obj(sim)
    moid = vm._moId  # pylint: disable=protected-access
    first = ansible("vm_snapshot", sim.module_args(moid=moid, snapshot_name="first", memory_dump=True))
    assert first["_status"] == "ok" and first["vm"]["name"] == VM, first
    assert first["consistency"] == "memory" and first["snapshot"]["memory"] is True
    second = ansible("vm_snapshot", sim.module_args(moid=moid, snapshot_name="second"))
    (root,) = vm_obj(sim).snapshot.rootSnapshotList
    (child,) = root.childSnapshotList
    numbers = {root.name: root.id, child.name: child.id}  # vSphere's per-VM integer ids
    assert second["snapshot"]["number"] == numbers["second"] and first["snapshot"]["number"] == numbers["first"]

    reverted = ansible("vm_snapshot", sim.module_args(moid=moid, snapshot_id=numbers["first"], state="revert"))
    assert reverted["_status"] == "ok" and reverted["changed"], reverted
    assert reverted["snapshot"]["name"] == "first"
    assert vm_obj(sim).snapshot.currentSnapshot._moId == first["snapshot"]["id"]  # pylint: disable=protected-access
