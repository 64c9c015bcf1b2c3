# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The KVM host of a libvirt URI (local, or through the URI's SSH login), disk discovery, and image digests."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import disk_digest
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import OperationTimeout, ProviderError
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt_backup, libvirt_image
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_host import KvmHost, is_local, ssh_uri


class RecordingRun:
    """A run_command that records argv and answers from a table; "-M" (the SSH master) makes its control socket."""

    def __init__(self, answers: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], **kwargs: t.Any) -> tuple[int, str, str]:
        assert kwargs.get("expand_user_and_vars") is False  # never let run_command expand $VARS or ~ in paths
        self.calls.append(list(argv))
        if "-M" in argv:
            control = argv[argv.index("-S") + 1]
            open(control, "w", encoding="utf-8").close()  # pylint: disable=consider-using-with
        for key, answer in self.answers.items():
            if key in " ".join(argv).split():
                return answer
        return 0, "", ""


@pytest.mark.parametrize("uri, local, over_ssh", [
    ("qemu:///system", True, False),
    ("qemu:///session", True, False),
    ("qemu+ssh://root@127.0.0.1/system", False, True),
    ("qemu+ssh://kvm01.example.com:2222/system?keyfile=/k", False, True),
    ("qemu+libssh2://kvm01/system", False, True),
    ("qemu+tcp://kvm01/system", False, False),
    ("qemu+tls://localhost/system", True, False),
])
def test_which_uris_are_local_and_which_go_through_ssh(uri, local, over_ssh):
    assert is_local(uri) is local
    assert ssh_uri(uri) is over_ssh
    host = KvmHost(uri, RecordingRun())
    assert host.remote is (not local)
    assert host.reachable is (local or over_ssh)


def test_remote_commands_use_the_uris_own_ssh_login_quoted_for_the_remote_shell():
    run = RecordingRun({"info": (0, "{}", "")})
    host = KvmHost("qemu+ssh://backup@kvm01.example.com:2222/system?keyfile=/etc/k%20ey&known_hosts=/etc/kh"
                   "&no_verify=1&no_tty=1", run)
    try:
        out = host.run(["qemu-img", "info", "/var/lib/libvirt/images/a b.qcow2"], 60, "inspect")
        assert out == "{}"
        master, command = run.calls
        assert master[:4] == ["timeout", "-k", "10", "60"] and master[4] == "ssh"
        for pair in (["-p", "2222"], ["-i", "/etc/k ey"], ["-o", "UserKnownHostsFile=/etc/kh"],
                     ["-o", "StrictHostKeyChecking=no"], ["-o", "BatchMode=yes"]):
            assert any(master[i:i + 2] == pair for i in range(len(master))), pair
        assert master[-5:] == ["-o", "ControlPersist=30", "-f", "-N", "backup@kvm01.example.com"]
        # one command line for the remote shell: the space in the path survives as one argument
        assert command[-2:] == ["--", "qemu-img info '/var/lib/libvirt/images/a b.qcow2'"]
        assert command[command.index("-S") + 1] == master[master.index("-S") + 1]
        local = host.local_socket("/run/vmsafe/backup-1/nbd.sock")
        forward = run.calls[-1]
        assert forward[-5:] == ["-O", "forward", "-L", f"{local}:/run/vmsafe/backup-1/nbd.sock",
                                "backup@kvm01.example.com"]
    finally:
        control_dir = os.path.dirname(host._control())  # pylint: disable=protected-access
        host.close()
    assert run.calls[-1][-3:] == ["-O", "exit", "backup@kvm01.example.com"]
    assert not os.path.exists(control_dir)


def test_local_commands_run_under_timeout_and_name_what_failed():
    host = KvmHost("qemu:///system", RecordingRun({"slow": (124, "", ""), "missing": (127, "", "No such file"),
                                                   "bad": (1, "", "qemu-img: Could not open 'x'\n")}))
    with pytest.raises(OperationTimeout, match="Timed out after 5 s waiting to read it"):
        host.run(["slow"], 5, "read it")
    with pytest.raises(ProviderError, match="missing is not installed here.*install qemu-utils"):
        host.run(["missing"], 5, "read it")
    with pytest.raises(ProviderError, match="Failed to read it on libvirt host qemu:///system: qemu-img: Could not"):
        host.run(["bad"], 5, "read it")


def test_a_transport_without_ssh_cannot_reach_the_host_and_says_what_to_do():
    host = KvmHost("qemu+tcp://kvm01/system", RecordingRun())
    with pytest.raises(Exception, match="qemu\\+ssh://user@host/system.*delegate_to"):
        host.require("back up VM 'web01'")


class XmlDomain:
    def __init__(self, devices: str, reason: int = 0) -> None:
        self.xml = f"<domain><devices>{devices}</devices></domain>"
        self.reason = reason

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802  pylint: disable=unused-argument
        return self.xml

    def state(self) -> list[int]:
        return [5, self.reason]


def test_backup_disks_are_files_and_block_devices_of_any_format_and_network_disks_are_named():
    dom = XmlDomain(
        "<disk type='file' device='disk'><driver type='qcow2'/><source file='/i/a.qcow2'/><target dev='vda'/></disk>"
        "<disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg/lv'/><target dev='vdb'/></disk>"
        "<disk type='file' device='disk'><source file='/i/c.img'/><target dev='vdc'/></disk>"
        "<disk type='network' device='disk'><driver type='raw'/><source protocol='rbd' name='p/i'/>"
        "<target dev='vdd'/></disk>"
        "<disk type='file' device='cdrom'><source file='/i/d.iso'/><target dev='sda'/></disk>"
        "<disk type='file' device='disk'><source file='/i/e.img'/><target dev='vde'/><readonly/></disk>")
    warnings: list[str] = []
    disks = libvirt_backup.backup_disks(dom, warnings.append)
    assert [(d.target, d.path, d.fmt, d.kind, d.tracks_changes) for d in disks] == [
        ("vda", "/i/a.qcow2", "qcow2", "file", True),
        ("vdb", "/dev/vg/lv", "raw", "block", False),
        ("vdc", "/i/c.img", "raw", "file", False),
    ]
    assert len(warnings) == 1 and "vdd (network) is not backed up" in warnings[0]


@pytest.mark.parametrize("reason, consistency, why", [
    (1, "shutdown", "shut down normally"),
    (2, "crash_consistent", "forced power-off"),
    (3, "crash_consistent", "crash"),
    (0, "crash_consistent", "unknown reason"),
    (7, "crash_consistent", "libvirtd was down"),
])
def test_shut_off_consistency_follows_libvirts_reason(reason, consistency, why):
    got, text = libvirt_backup.shutoff_consistency(XmlDomain("", reason))
    assert got == consistency and why in text


def test_whole_disk_extents_fill_every_hole_with_zeros():
    got = list(libvirt_backup._zeros(3, 3 + 2 * libvirt_backup.READ_CHUNK + 5))  # pylint: disable=protected-access
    assert [(o, n) for o, n, _d in got] == [(3, libvirt_backup.READ_CHUNK),
                                            (3 + libvirt_backup.READ_CHUNK, libvirt_backup.READ_CHUNK),
                                            (3 + 2 * libvirt_backup.READ_CHUNK, 5)]
    assert all(bytes(d) == bytes(len(d)) for _o, _n, d in got)


def local_run(argv: list[str], **kwargs: t.Any) -> tuple[int, str, str]:
    """run_command's contract, for tests that need real commands."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          input=kwargs.get("data"))
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not shutil.which("qemu-nbd"), reason="qemu-nbd is missing: run scripts/lab.sh install")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_image_digest_is_the_repositorys_content_digest(tmp_path, fmt):
    rng = random.Random(7)
    size = 3 * 1024 * 1024 + 7 * 512  # a short last chunk (qcow2 sizes are whole sectors)
    data = bytearray(size)
    for offset in (0, 70000, 1024 * 1024, size - 100):
        data[offset:offset + 5000] = rng.randbytes(min(5000, size - offset))
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(data))
    path = raw
    if fmt == "qcow2":
        path = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    host = KvmHost("qemu:///system", local_run)
    folder = str(tmp_path / "nbd")
    os.mkdir(folder)
    got_size, digest = libvirt_image.image_digest(host, str(path), fmt, 65536, 8, folder)
    assert got_size == size
    assert digest == disk_digest(str(raw), 65536, 8)
    assert os.listdir(folder) == []  # qemu-nbd gone, its socket and pid file removed
