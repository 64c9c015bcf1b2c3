# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vmsafe-recover (plugins/module_utils/_recovery_cli.py) in-process against real repositories on disk.

The run without Ansible installed, and the comparison with vm_restore, are in tests/integration/test_recovery_cli.py.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import typing as t
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _recovery_cli as cli
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)

DOMAIN = """<domain type='kvm'><name>web01</name><uuid>6c7f1e0a-0d55-4b8e-9d2f-3a4c5b6d7e8f</uuid>
<devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web01.qcow2'/>
    <backingStore type='file'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='network' device='disk'><driver name='qemu' type='raw'/>
    <source protocol='rbd' name='pool/web01-data'><host name='ceph1'/></source><target dev='vdb' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>
  <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface>
</devices></domain>"""


@pytest.fixture
def repo_path(tmp_path: t.Any) -> t.Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """A repository with web01 (full + incremental, disks vda and vdb) and db01; the images each backup holds."""
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    rng = random.Random(18)
    vda, vdb = make_image(rng, 300_000), make_image(rng, 70_000)
    full = repo.backup("web01", [DiskSource("vda", len(vda), [(0, len(vda), vda)]),
                                 DiskSource("vdb", len(vdb), [(0, len(vdb), vdb)])], vm_definition=DOMAIN)
    patch = b"\xee" * 5000
    vda2 = vda[:8192] + patch + vda[8192 + len(patch):]
    inc = repo.backup("web01", [DiskSource("vda", len(vda2), [(8192, len(patch), patch)]),
                                DiskSource("vdb", len(vdb), [])], vm_definition=DOMAIN, parent=full.id)
    other = make_image(rng, 20_000)
    repo.backup("db01", [DiskSource("sda", len(other), [(0, len(other), other)])], vm_definition="<VirtualMachine/>")
    repo.close()
    yield path, {f"{full.id}/vda": vda, f"{full.id}/vdb": vdb, f"{inc.id}/vda": vda2, f"{inc.id}/vdb": vdb}, \
        [full.id, inc.id]


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSAFE_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("VMSAFE_REPOSITORY", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_json_names_every_backup_oldest_first(repo_path: t.Any, capsys: t.Any) -> None:
    path, _images, ids = repo_path
    rc, out, _err = run(capsys, "-r", path, "list", "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["vm_name"] for r in rows] == ["web01", "web01", "db01"]
    assert [r["id"] for r in rows[:2]] == ids and [r["mode"] for r in rows[:2]] == ["full", "incremental"]
    assert rows[1]["parent"] == ids[0] and [d["name"] for d in rows[0]["disks"]] == ["vda", "vdb"]
    rc, out, _err = run(capsys, "-r", path, "list", "--vm", "db01")
    assert rc == 0 and len(out.splitlines()) == 2 and "db01" in out.splitlines()[1] and "web01" not in out


def test_restore_writes_each_point_in_time_byte_for_byte(repo_path: t.Any, capsys: t.Any, tmp_path: t.Any) -> None:
    path, images, ids = repo_path
    for backup_id in ids:
        dest = tmp_path / backup_id
        dest.mkdir()
        rc, out, err = run(capsys, "-r", path, "restore", "--backup", backup_id, "--dest", str(dest), "--format", "raw",
                           "--json")
        assert rc == 0, err
        files = json.loads(out)["files"]
        assert [f["disk"] for f in files] == ["vda", "vdb"]
        for entry in files:
            assert os.path.basename(entry["path"]) == f"web01-{entry['disk']}-{backup_id}.img"  # vm_restore's names
            with open(entry["path"], "rb") as handle:
                assert handle.read() == images[f"{backup_id}/{entry['disk']}"]
        assert sorted(os.listdir(dest)) == sorted(os.path.basename(f["path"]) for f in files)  # nothing else left


def test_restore_newest_of_vm_one_disk_and_libvirt_definition(repo_path: t.Any, capsys: t.Any, tmp_path: t.Any) -> None:
    path, images, ids = repo_path
    xml_path = tmp_path / "web01.xml"
    rc, out, err = run(capsys, "-r", path, "restore", "--vm", "web01", "--disk", "vda", "--dest", str(tmp_path),
                       "--format", "raw", "--libvirt-xml", str(xml_path))
    assert rc == 0, err
    image = tmp_path / f"web01-vda-{ids[1]}.img"
    assert image.read_bytes() == images[f"{ids[1]}/vda"] and f"to {image}" in out
    assert not (tmp_path / f"web01-vdb-{ids[1]}.img").exists()
    root = ET.fromstring(xml_path.read_text())
    vda = root.find("./devices/disk/target[@dev='vda']/..")
    assert vda.find("source").attrib == {"file": str(image)} and vda.find("driver").get("type") == "raw"
    assert vda.find("backingStore") is None
    # the disk not restored keeps its source; name, UUID and MAC stay: it is the same VM coming back
    assert root.find("./devices/disk/target[@dev='vdb']/../source").get("protocol") == "rbd"
    assert root.find("uuid").text == "6c7f1e0a-0d55-4b8e-9d2f-3a4c5b6d7e8f"
    assert root.find("./devices/interface/mac").get("address") == "52:54:00:12:34:56"

    rc, _out, err = run(capsys, "-r", path, "restore", "--vm", "web01", "--disk", "vda", "--dest", str(tmp_path),
                        "--format", "raw")
    assert rc == 1 and f"Refusing to overwrite {image}" in err
    rc, _out, err = run(capsys, "-r", path, "restore", "--vm", "db01", "--dest", str(tmp_path), "--libvirt-xml",
                        str(tmp_path / "db01.xml"))
    assert rc == 1 and "not a libvirt <domain>" in err and not list(tmp_path.glob("db01*"))


def test_libvirt_definition_rewrites_network_disk_to_file() -> None:
    xml = cli.libvirt_definition(DOMAIN, {"vdb": ("/restore/vdb.qcow2", "qcow2"), "vda": ("/restore/vda.img", "raw")})
    root = ET.fromstring(xml)
    vdb = root.find("./devices/disk/target[@dev='vdb']/..")
    assert vdb.get("type") == "file" and vdb.find("source").attrib == {"file": "/restore/vdb.qcow2"}
    assert list(vdb.find("source")) == [] and vdb.find("driver").get("type") == "qcow2"
    assert root.find("./devices/disk/target[@dev='sda']/../source").get("file") == "/iso/debian.iso"
    with pytest.raises(cli.RecoverError, match="not XML"):
        cli.libvirt_definition("Name: web01", {})


def test_verify_passes_then_finds_a_damaged_pack(repo_path: t.Any, capsys: t.Any) -> None:
    path = repo_path[0]
    rc, out, _err = run(capsys, "-r", path, "verify", "--read-data")
    assert rc == 0 and out.startswith("OK: 3 backup(s)")
    # the full backup's pack (the largest) starts with data; a small pack may have a map at byte 100 (the incremental's
    # two changed chunks compress to 53 bytes in one frame), which verify lists as an error, not as a damaged chunk
    packs = sorted((os.path.join(d, f) for d, _out, fs in os.walk(os.path.join(path, "packs")) for f in fs),
                   key=os.path.getsize, reverse=True)
    with open(packs[0], "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    rc, out, _err = run(capsys, "-r", path, "verify", "--read-data", "--json")
    report = json.loads(out)
    assert rc == 1 and not report["ok"] and report["damaged"]
    assert all(d["backup_id"] and d["disk_name"] and d["reason"] for d in report["damaged"])  # it names what is hit
    rc, out, _err = run(capsys, "-r", path, "verify", "--read-data")
    assert rc == 1 and out.startswith("DAMAGED: ") and "damaged: backup " in out


@pytest.mark.parametrize("argv, env, message", [
    (["list"], {}, "No repository given"),
    (["-r", "{path}", "list"], {"VMSAFE_PASSPHRASE": "wrong"}, "Wrong passphrase"),
    (["-r", "{path}-nothing", "list"], {}, "No repository at"),
    (["-r", "{path}", "definition", "--backup", "20200101T000000Z-00000000"], {}, "no backup '20200101T000000Z"),
    (["-r", "{path}", "restore", "--vm", "web01", "--disk", "sdz", "--dest", "{tmp}"], {}, "has no disk sdz"),
    (["-r", "{path}", "restore", "--vm", "gone01", "--dest", "{tmp}"], {}, "has no backup of VM 'gone01'"),
    (["-r", "{path}", "restore", "--vm", "web01", "--dest", "{tmp}/missing"], {}, "--dest must be an existing"),
])
def test_errors_are_one_line_and_exit_1(repo_path: t.Any, capsys: t.Any, tmp_path: t.Any,
                                        monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str],
                                        message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rc, out, err = run(capsys, *(a.format(path=repo_path[0], tmp=tmp_path) for a in argv))
    assert rc == 1 and out == "" and message in err and len(err.splitlines()) == 1
    assert err.startswith("vmsafe-recover: error: ")


def test_passphrase_file_and_definition(repo_path: t.Any, capsys: t.Any, tmp_path: t.Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMSAFE_PASSPHRASE")
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("VMSAFE_REPOSITORY", repo_path[0])
    rc, out, err = run(capsys, "--passphrase-file", str(secret), "definition", "--vm", "web01")
    assert rc == 0, err
    assert out == DOMAIN + "\n"
    rc, _out, err = run(capsys, "definition", "--vm", "web01")
    assert rc == 1 and "passphrase" in err.lower()


def test_break_lock_frees_the_repository_from_the_lost_hosts_prune(repo_path: t.Any, capsys: t.Any,
                                                                   tmp_path: t.Any) -> None:
    path = repo_path[0]
    lock = {"host": "lost-host.example.com", "pid": 4242, "start": None, "operation": "prune", "exclusive": True,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    with open(os.path.join(path, "locks", "0" * 32), "w", encoding="utf-8") as handle:
        json.dump(lock, handle)
    rc, _out, err = run(capsys, "-r", path, "restore", "--vm", "db01", "--dest", str(tmp_path), "--format", "raw")
    assert rc == 1 and "lost-host.example.com" in err and err.rstrip().endswith("Here: vmsafe-recover break-lock.")
    rc, out, _err = run(capsys, "-r", path, "break-lock")
    assert rc == 0 and "exclusive lock of prune by host lost-host.example.com pid 4242" in out
    rc, _out, err = run(capsys, "-r", path, "restore", "--vm", "db01", "--dest", str(tmp_path), "--format", "raw")
    assert rc == 0, err
    rc, out, _err = run(capsys, "-r", path, "break-lock")
    assert rc == 0 and out == "The repository had no lock.\n"
