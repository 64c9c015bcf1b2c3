# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Restore-test pieces without libvirt: isolating a domain definition, probe definitions, and probes against local
listeners (TCP, an SSH banner, ICMP echo on the loopback)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import typing as t
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _restore_test as rt
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

BRIDGED = """<domain type='kvm'><name>web01</name><devices>
  <disk type='file' device='disk'><source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda'/></disk>
  <interface type='bridge'><mac address='52:54:00:aa:bb:01'/><source bridge='br0'/><model type='e1000'/></interface>
  <interface type='network'><source network='default'/></interface>
  <serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>
</devices></domain>"""


def test_isolate_moves_every_nic_and_keeps_models_and_macs() -> None:
    xml, changes = rt.isolate_domain_xml(BRIDGED, "rtnet", "/t/web01.console.log")
    root = ET.fromstring(xml)
    nics = root.findall("devices/interface")
    assert [(n.get("type"), n.find("source").get("network"), n.find("model").get("type")) for n in nics] == [
        ("network", "rtnet", "e1000"), ("network", "rtnet", "virtio")]
    assert nics[0].find("mac").get("address") == "52:54:00:aa:bb:01"
    assert "br0" not in xml and "'default'" not in xml and 'network="default"' not in xml
    assert [s.get("type") for s in root.findall("devices/serial")] == ["file"]
    assert root.find("devices/serial/source").get("path") == "/t/web01.console.log"
    assert len([c for c in changes if "moved to network rtnet" in c]) == 2


def test_isolate_drops_qemu_commandline_port_forwards_of_the_lab_guest() -> None:
    import guest  # pylint: disable=import-outside-toplevel,import-error

    original = guest.DOMAIN_XML.format(name="g", image="/img", disk="/d.qcow2", port=2222, console="/c.log")
    xml, changes = rt.isolate_domain_xml(original, "rtnet", "/t/g.console.log")
    assert "hostfwd" not in xml and "netdev" not in xml and "2222" not in xml
    root = ET.fromstring(xml)
    (nic,) = root.findall("devices/interface")  # the command-line NIC is replaced by a libvirt one on the network
    assert nic.find("source").get("network") == "rtnet"
    assert root.find("os/cmdline").text.startswith("root=/dev/vda")  # the rest is kept
    assert any("-netdev user" in c for c in changes) and any("-device virtio-net-pci" in c for c in changes)


def test_isolate_keeps_unrelated_qemu_arguments() -> None:
    xml = ("<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>x</name><devices/>"
           "<qemu:commandline><qemu:arg value='-nic'/><qemu:arg value='user,hostfwd=tcp::80-:80'/>"
           "<qemu:arg value='-smbios'/><qemu:arg value='type=1,serial=abc'/></qemu:commandline></domain>")
    out, _changes = rt.isolate_domain_xml(xml, "n", "/t/x.log")
    assert "hostfwd" not in out and "-smbios" in out and "type=1,serial=abc" in out


@pytest.mark.parametrize("spec, error", [
    ({"type": "icmp"}, "one of ping, tcp, ssh, command"),
    ({"type": "tcp"}, "needs a port"),
    ({"type": "command"}, "needs a command"),
    ({"type": "ssh", "colour": "red"}, "Unknown keys"),
    ({"type": "command", "command": "true", "expect_output": "("}, "no regular expression"),
])
def test_bad_probes_are_refused(spec: dict[str, t.Any], error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        rt.normalize_probe(spec)


def test_probe_defaults() -> None:
    assert rt.normalize_probe({"type": "ssh", "port": None, "timeout": None}) == {
        "type": "ssh", "port": 22, "timeout": 60.0, "name": "ssh"}
    assert rt.normalize_probe({"type": "tcp", "port": "443"})["name"] == "tcp:443"
    assert rt.normalize_probe({"type": "command", "command": "true"})["user"] == "root"


def serve(reply: bytes) -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def loop() -> None:
        while True:
            try:
                conn, _addr = server.accept()
            except OSError:
                return
            with conn:
                if reply:
                    conn.sendall(reply)

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


def test_tcp_and_ssh_probes_against_local_listeners() -> None:
    ssh_server, ssh_port = serve(b"SSH-2.0-OpenSSH_9.2p1 test\r\n")
    web_server, web_port = serve(b"HTTP/1.0 200 OK\r\n")
    try:
        ok = rt.run_probe(rt.normalize_probe({"type": "ssh", "port": ssh_port, "timeout": 5}), "127.0.0.1")
        assert ok["ok"] and ok["detail"] == "SSH-2.0-OpenSSH_9.2p1 test" and ok["attempts"] == 1
        tcp = rt.run_probe(rt.normalize_probe({"type": "tcp", "port": web_port, "timeout": 5}), "127.0.0.1")
        assert tcp["ok"] and tcp["port"] == web_port
        not_ssh = rt.run_probe(rt.normalize_probe({"type": "ssh", "port": web_port, "timeout": 1.5}), "127.0.0.1")
        assert not not_ssh["ok"] and "no SSH banner" in not_ssh["detail"] and not_ssh["attempts"] >= 1
    finally:
        for server in (ssh_server, web_server):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread; close() alone would not
            server.close()
    closed = rt.run_probe(rt.normalize_probe({"type": "tcp", "port": web_port, "timeout": 1.5}), "127.0.0.1")
    assert not closed["ok"] and "ConnectionRefusedError" in closed["detail"] and 1.4 < closed["seconds"] < 4


def test_ping_probe_on_the_loopback() -> None:
    # (no negative case: this machine's network answers echo requests even for TEST-NET addresses; the integration
    # test's guest without an address covers "no answer")
    ok = rt.run_probe(rt.normalize_probe({"type": "ping", "timeout": 5}), "127.0.0.1")
    assert ok["ok"] and ok["detail"] == "echo reply" and ok["attempts"] == 1, ok


def test_console_tail_strips_control_characters(tmp_path: t.Any) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"line1\r\n\x1b[0;32mOK\x1b[0m started\r\n" + b"x\n" * 40 + b"Kernel panic - not syncing\r\n")
    tail = rt.console_tail(str(log), lines=3)
    assert tail == ["x", "x", "Kernel panic - not syncing"]
    assert rt.console_tail(str(tmp_path / "missing")) == []
    assert "OK started" in rt.console_tail(str(log), lines=50)
