# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_backup of shut-off VMs, of raw disks and block devices, and of VMs behind qemu+ssh://, restored bit-identical.

Each case failed before (issue #15): "it is shut off, and libvirt backs up running VMs only", "disk vdb is raw:
incremental backups need qcow2 disks", and a qemu+ssh:// backup reading an NBD socket that is on the KVM host only.
"""

from __future__ import annotations

import os
import subprocess
import typing as t

import pytest

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
PASS = "correct horse battery staple"


@pytest.fixture
def repo(tmp_path):
    return {"repository": str(tmp_path / "repo"), "passphrase": PASS}


def image_of(vm: str, target: str = "vda") -> tuple[str, str]:
    """(path, format) of a disk of the VM, from its definition."""
    import xml.etree.ElementTree as ET  # pylint: disable=import-outside-toplevel

    import labvm  # pylint: disable=import-outside-toplevel,import-error

    conn = labvm.connect()
    try:
        root = ET.fromstring(conn.lookupByName(vm).XMLDesc(0))
    finally:
        conn.close()
    for node in root.findall("./devices/disk"):
        if node.find("target").get("dev") == target:
            source = node.find("source")
            return source.get("file") or source.get("dev"), node.find("driver").get("type")
    raise AssertionError(f"{vm} has no disk {target}")


def assert_restores_identical(ansible: t.Callable[..., dict], repo: dict, backup_id: str, vm: str, dest: str,
                              disks: t.Sequence[str] = ("vda",)) -> None:
    """Restore the backup to qcow2 images and compare each with the VM's disk (qemu-img compare, exit 0)."""
    os.makedirs(dest, exist_ok=True)
    restored = ansible("vm_restore", dict(repo, backup_id=backup_id, dest=dest, format="qcow2"))
    assert restored["_status"] == "ok", restored.get("msg")
    by_disk = {f["disk"]: f["path"] for f in restored["files"]}
    assert sorted(by_disk) == sorted(disks)
    for target in disks:
        path, fmt = image_of(vm, target)
        cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", "qcow2", path, by_disk[target]],
                             capture_output=True, text=True, check=False)
        assert cmp.returncode == 0, f"{target}: {cmp.stdout}{cmp.stderr}"


def add_raw_disk(vm: str, size_mib: int = 16, target: str = "vdb") -> str:
    """Attach a raw image file to the (shut-off or running) VM's persistent definition; return its path."""
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    path = os.path.join(labvm.VM_DIR, f"{vm}.{target}.img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, f"{size_mib}M"], check=True)
    conn = labvm.connect()
    try:
        dom = conn.lookupByName(vm)
        xml = dom.XMLDesc(0).replace(
            "</devices>", f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{path}'/>"
                          f"<target dev='{target}' bus='virtio'/><alias name='ua-{target}'/></disk></devices>")
        conn.defineXML(xml)
    finally:
        conn.close()
    return path


def qemu_io(path: str, fmt: str, command: str) -> None:
    out = subprocess.run(["qemu-io", "-f", fmt, "-c", command, path], capture_output=True, text=True, check=True)
    assert "wrote" in out.stdout, out


def test_shut_off_vm_backs_up_from_its_images_full_and_incremental(lab, ansible, repo, tmp_path):
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    vm = lab.vm()
    lab.write(vm, 0xA1, 0, 4 * MiB)
    lab.virsh("destroy", vm)  # a forced power-off: crash-consistent disks, nothing to quiesce
    refused = ansible("vm_backup", dict(repo, vm_name=vm, init=True, quiesce=True))
    assert refused["_status"] == "failed" and "Failed to quiesce" in refused["msg"], refused.get("msg")
    assert "forced power-off" in refused["msg"]
    assert lab.virsh("checkpoint-list", vm, "--name").split() == []  # nothing left behind
    full = ansible("vm_backup", dict(repo, vm_name=vm, init=True, quiesce=True, quiesce_fallback="crash_consistent"))
    assert full["_status"] == "ok", full.get("msg")
    assert full["mode"] == "full" and full["consistency"] == "crash_consistent"
    assert any("crash-consistent" in w for w in full.get("warnings", []))
    assert 4 * MiB <= full["bytes_read"] < 8 * MiB  # the data only, not the 64 MiB disk
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [full["checkpoint"]]
    assert lab.virsh("domstate", vm).strip() == "shut off"

    # written while shut off (qemu-io on the image keeps the persistent bitmap up to date, as QEMU does)
    lab.write(vm, 0xB2, 20 * MiB, 512 * 1024)
    planned = ansible("vm_backup", dict(repo, vm_name=vm), check=True)
    assert planned["mode"] == "incremental" and "shut off" in planned["reason"], planned
    inc = ansible("vm_backup", dict(repo, vm_name=vm))
    assert inc["_status"] == "ok", inc.get("msg")
    assert inc["mode"] == "incremental" and inc["parent"] == full["backup_id"]
    assert inc["bytes_read"] == 512 * 1024  # the dirty extents only
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [inc["checkpoint"]]
    assert_restores_identical(ansible, repo, inc["backup_id"], vm, str(tmp_path / "inc"))

    # the checkpoint made offline is an ordinary one: the running VM's next backup builds on it
    lab.virsh("start", vm)
    lab.write(vm, 0xC3, 30 * MiB, 256 * 1024)
    online = ansible("vm_backup", dict(repo, vm_name=vm))
    assert online["_status"] == "ok", online.get("msg")
    assert online["mode"] == "incremental" and online["bytes_read"] == 256 * 1024
    assert online["consistency"] == "crash_consistent"

    # a normal shutdown (QEMU asked to quit) is reported as such; the forced stop above was crash-consistent
    conn = labvm.connect()
    try:
        import libvirt_qemu  # pylint: disable=import-outside-toplevel

        try:
            libvirt_qemu.qemuMonitorCommand(conn.lookupByName(vm), '{"execute": "quit"}', 0)
        except Exception:  # pylint: disable=broad-except  # the monitor closes as QEMU quits
            pass
    finally:
        conn.close()
    for _unused in range(100):
        if lab.virsh("domstate", vm).strip() == "shut off":
            break
        import time  # pylint: disable=import-outside-toplevel

        time.sleep(0.1)
    assert lab.virsh("domstate", vm, "--reason").strip() == "shut off (shutdown)"
    clean = ansible("vm_backup", dict(repo, vm_name=vm, quiesce=True))
    assert clean["_status"] == "ok", clean.get("msg")
    assert clean["consistency"] == "shutdown" and clean["mode"] == "incremental" and clean["bytes_read"] == 0
    assert_restores_identical(ansible, repo, clean["backup_id"], vm, str(tmp_path / "clean"))


def test_raw_disk_is_backed_up_whole_beside_an_incremental_qcow2_disk(lab, ansible, repo, tmp_path):
    vm = lab.vm(start=False)
    raw = add_raw_disk(vm)
    qemu_io(raw, "raw", f"write -P 0x5a {1 * MiB} {2 * MiB}")
    lab.virsh("start", vm)
    lab.write(vm, 0x21, 0, MiB)
    full = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert full["_status"] == "ok", full.get("msg")
    assert [d["name"] for d in full["disks"]] == ["vda", "vdb"]

    # the raw disk's old data is zeroed (discarded): an incremental must not keep the parent's copy of it
    lab.virsh("destroy", vm)
    qemu_io(raw, "raw", f"write -z {1 * MiB} {2 * MiB}")
    qemu_io(raw, "raw", f"write -P 0x6b {8 * MiB} {MiB}")
    lab.virsh("start", vm)
    lab.write(vm, 0x22, 10 * MiB, 256 * 1024)
    inc = ansible("vm_backup", dict(repo, vm_name=vm))
    assert inc["_status"] == "ok", inc.get("msg")
    assert inc["mode"] == "incremental"
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [inc["checkpoint"]]
    assert_restores_identical(ansible, repo, inc["backup_id"], vm, str(tmp_path / "inc"), ("vda", "vdb"))

    # and the same VM shut off: vda from its bitmap, vdb whole again
    lab.virsh("destroy", vm)
    qemu_io(raw, "raw", f"write -P 0x7c {12 * MiB} {MiB}")
    off = ansible("vm_backup", dict(repo, vm_name=vm))
    assert off["_status"] == "ok" and off["mode"] == "incremental", off.get("msg")
    assert_restores_identical(ansible, repo, off["backup_id"], vm, str(tmp_path / "off"), ("vda", "vdb"))


def test_vm_with_only_a_raw_disk_takes_full_backups_and_says_why(lab, ansible, repo):
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    vm = lab.vm(start=False)
    path = labvm.active_image(vm)
    raw = path[:-len(".qcow2")] + ".img"
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, raw], check=True)
    qemu_io(raw, "raw", f"write -P 0x3c {5 * MiB} {3 * MiB}")
    conn = labvm.connect()
    try:
        xml = conn.lookupByName(vm).XMLDesc(0).replace("type='qcow2'", "type='raw'").replace(path, raw)
        conn.defineXML(xml)
    finally:
        conn.close()
    lab.virsh("start", vm)
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert first["_status"] == "ok", first.get("msg")
    assert first["mode"] == "full" and first["checkpoint"] is None
    second = ansible("vm_backup", dict(repo, vm_name=vm))
    assert second["mode"] == "full" and "vda is raw" in second["reason"], second.get("reason")
    assert lab.virsh("checkpoint-list", vm, "--name").split() == []
    strict = ansible("vm_backup", dict(repo, vm_name=vm, mode="incremental"))
    assert strict["_status"] == "failed" and "only qcow2" in strict["msg"]


@pytest.fixture
def loop_device(tmp_path) -> t.Iterator[str]:
    """A 32 MiB block device (a loop device on a file), as an LVM volume would be."""
    backing = tmp_path / "lv.img"
    backing.write_bytes(b"")
    os.truncate(backing, 32 * MiB)
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_block_device_disk_is_backed_up_running_and_shut_off(lab, ansible, repo, tmp_path, loop_device):
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    qemu_io(loop_device, "raw", f"write -P 0x4d {2 * MiB} {MiB}")
    vm = lab.vm(start=False)
    conn = labvm.connect()
    try:
        xml = conn.lookupByName(vm).XMLDesc(0).replace(
            "</devices>", f"<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                          f"<source dev='{loop_device}'/><target dev='vdb' bus='virtio'/></disk></devices>")
        conn.defineXML(xml)
    finally:
        conn.close()
    off = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert off["_status"] == "ok", off.get("msg")
    assert off["disks"][1]["name"] == "vdb" and off["disks"][1]["size"] == 32 * MiB
    lab.virsh("start", vm)
    on = ansible("vm_backup", dict(repo, vm_name=vm))
    assert on["_status"] == "ok" and on["mode"] == "incremental", on.get("msg")
    lab.virsh("destroy", vm)  # compare the running VM's disks as the backup saw them
    assert_restores_identical(ansible, repo, on["backup_id"], vm, str(tmp_path / "on"), ("vda", "vdb"))


def ssh_masters() -> set[str]:
    return {e for e in os.listdir("/tmp") if e.startswith("vmsafe-ssh-") and os.path.exists(os.path.join("/tmp", e, "c"))}


def from_another_machine(module: str, args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Run a module as on a machine that is not the KVM host: in a private mount namespace where the KVM host's
    /run/vmsafe (NBD sockets) and image folder are empty tmpfs mounts. Only SSH (to 127.0.0.1, the host's
    namespace) reaches them, so a backup that used a local socket or file path fails here.
    """
    import json  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    import labvm  # pylint: disable=import-outside-toplevel,import-error
    from it_helpers import ansible_env  # pylint: disable=import-error,import-outside-toplevel

    os.makedirs("/run/vmsafe", mode=0o700, exist_ok=True)
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t tmpfs elsewhere "$1" && mount -t tmpfs elsewhere "$2" && shift 2 && exec "$@"', "sh",
           "/run/vmsafe", labvm.VM_DIR,
           os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", f"vmsafe.protect.{module}",
           "-a", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False, timeout=600)
    try:
        result = json.loads(proc.stdout)[0]
    except (ValueError, IndexError) as exc:
        raise AssertionError(f"no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
    if result.get("_status") != "ok":
        print(f"{module} {result.get('_status')}: {result.get('msg')}\n{result.get('exception', '')}")
    return result


def test_backup_over_qemu_ssh_running_and_shut_off(lab, ansible, repo, tmp_path, ssh_uri):
    masters = ssh_masters()
    vm = lab.vm()
    lab.write(vm, 0x31, 0, 2 * MiB)
    full = from_another_machine("vm_backup", dict(repo, uri=ssh_uri, vm_name=vm, init=True))
    assert full["_status"] == "ok", full.get("msg")
    assert full["mode"] == "full" and full["vm"]["host"].startswith("qemu+ssh://root@127.0.0.1:")
    lab.write(vm, 0x32, 16 * MiB, 256 * 1024)
    inc = from_another_machine("vm_backup", dict(repo, uri=ssh_uri, vm_name=vm))
    assert inc["_status"] == "ok", inc.get("msg")
    assert inc["mode"] == "incremental" and inc["bytes_read"] == 256 * 1024
    lab.virsh("destroy", vm)
    assert_restores_identical(ansible, repo, inc["backup_id"], vm, str(tmp_path / "inc"))
    lab.write(vm, 0x33, 40 * MiB, 128 * 1024)
    off = from_another_machine("vm_backup", dict(repo, uri=ssh_uri, vm_name=vm))
    assert off["_status"] == "ok", off.get("msg")
    assert off["mode"] == "incremental" and off["bytes_read"] == 128 * 1024
    assert_restores_identical(ansible, repo, off["backup_id"], vm, str(tmp_path / "off"))
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [off["checkpoint"]]
    leftovers = [e for e in os.listdir("/run/vmsafe") if e.startswith(f"backup-{lab.virsh('domuuid', vm).strip()[:8]}")]
    assert leftovers == []
    assert ssh_masters() <= masters, "an SSH master connection was left running"
