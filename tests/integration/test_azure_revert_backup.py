# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Azure revert (disk swap) and backups against the Azure fake.

The round trips go through the modules (the real ``ansible`` command); the refusals and failures call the provider
in-process, the same code the modules run, which keeps the default run short. Bytes are written into the fake's
page blobs as a guest would write them; every check reads them back through the fake or a restore.
"""

from __future__ import annotations

import hashlib
import random
import typing as t

import pytest

from it_helpers import LONG  # pylint: disable=import-error
from test_azure_vm_snapshot import GROUP, disk_id, fake, provider, server  # noqa: F401  pylint: disable=unused-import,import-error

from azure_fake.model import Fault  # pylint: disable=wrong-import-order,import-error

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    ProviderError,
    UnsupportedOperation,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import SnapshotSpec, VmSelector
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure

MiB = 1024 * 1024
PASS = "azure-backup-test-passphrase"  # test data, not a secret


def page(text: bytes) -> bytes:
    return text.ljust(4096, b"\0")


def state(cloud: t.Any, vm: str) -> tuple[dict[str, str], str, int]:
    """The VM's disk ids by slot, its power state, and how many disks the resource group has."""
    model = cloud.vm(GROUP, vm)
    return dict(cloud.vm_disk_ids(model)), model["_power"], len(cloud.disks)


def take(prov: azure.AzureProvider, name: str) -> t.Any:
    vm = prov.find_vm(VmSelector(name="web01"))
    prov.create_snapshot(vm, SnapshotSpec(name=name), 60)
    return vm, next(s for s in prov.list_snapshots(vm) if s.name == name)


def test_revert_swaps_in_the_old_bytes_and_keeps_the_replaced_disks(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,), zones=["1"])
    os_id, data_id = disk_id(cloud, "web01", "os"), disk_id(cloud, "web01", "lun0")
    cloud.write(os_id, 0, page(b"old OS bytes"))
    cloud.write(data_id, 5 * MiB, page(b"old data bytes"))
    prov = provider(fake)
    vm, snap = take(prov, "pre-patch")
    cloud.write(os_id, 0, page(b"NEW OS BYTES"))
    cloud.write(data_id, 5 * MiB, page(b"NEW DATA BYTES"))

    prov.revert_snapshot(vm, snap, 60)
    disks, power, _count = state(cloud, "web01")
    assert power == "running"
    assert disks["os"] != os_id and disks["lun0"] != data_id
    assert cloud.read(disks["os"], 0, 4096) == page(b"old OS bytes")
    assert cloud.read(disks["lun0"], 5 * MiB, 4096) == page(b"old data bytes")
    assert cloud.disks[cloud.key(disks["os"])]["zones"] == ["1"]
    prov = provider(fake)
    vm = prov.find_vm(VmSelector(name="web01"))
    assert [s.current for s in prov.list_snapshots(vm)] == [True]
    # what the VM had is kept, detached and tagged, until consolidation removes it
    for old, text in ((os_id, b"NEW OS BYTES"), (data_id, b"NEW DATA BYTES")):
        kept = cloud.disks[cloud.key(old)]
        assert "managedBy" not in kept and kept["tags"]["vmsafe-replaced-by-set"] == "pre-patch"
        assert text in cloud.read(old, 0, 6 * MiB)
    status = prov.consolidation_status(vm)
    assert status.needed is False
    assert sorted(x.disk for x in status.leftovers) == sorted([os_id.rsplit("/", 1)[1], data_id.rsplit("/", 1)[1]])
    assert all(x.kind == "replaced_disk" and x.bytes == 64 * MiB for x in status.leftovers)
    for leftover in status.leftovers:
        prov.repair_leftover(vm, leftover, 60)
    assert cloud.key(os_id) not in cloud.disks and cloud.key(data_id) not in cloud.disks
    assert cloud.key(disks["os"]) in cloud.disks  # the VM's disks stay


@pytest.mark.skipif(not LONG, reason="the module path of a revert and of consolidation: set VMSAFE_LONG_TESTS=1")
def test_revert_and_consolidate_through_the_modules(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    os_id = disk_id(cloud, "web01", "os")
    cloud.write(os_id, 0, page(b"old OS bytes"))
    args = fake.connection(vm_name="web01", snapshot_name="pre-patch")
    assert ansible("vm_snapshot", args)["changed"]
    cloud.write(os_id, 0, page(b"NEW OS BYTES"))
    planned = ansible("vm_snapshot", {**args, "state": "reverted"}, check=True)
    assert planned["changed"] is True and disk_id(cloud, "web01", "os") == os_id
    reverted = ansible("vm_snapshot", {**args, "state": "reverted"})
    assert reverted["_status"] == "ok", reverted.get("msg")
    assert reverted["snapshot"]["current"] is True
    assert cloud.read(disk_id(cloud, "web01", "os"), 0, 4096) == page(b"old OS bytes")
    check = ansible("snapshot_consolidate", fake.connection(vm_name="web01"), check=True)
    assert len(check["vms"][0]["merged"]) == 2 and check["vms"][0]["consolidation_needed"] is False, check
    done = ansible("snapshot_consolidate", fake.connection(vm_name="web01"))
    assert done["_status"] == "ok" and done["summary"]["merged"] == 2, done.get("msg")
    assert cloud.key(os_id) not in cloud.disks


def test_os_type_mismatch_is_refused_before_anything_changes(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    prov = provider(fake)
    vm, snap = take(prov, "pre")
    model = cloud.vm(GROUP, "web01")  # the VM was rebuilt on a Windows OS disk since the set was taken
    model["properties"]["storageProfile"]["osDisk"]["osType"] = "Windows"
    before = state(cloud, "web01")
    with pytest.raises(UnsupportedOperation, match=r"OS type of the set's OS disk \(Linux\) is not the VM's \(Windows\)"):
        prov.revert_snapshot(vm, snap, 60)
    assert state(cloud, "web01") == before
    assert not [line for line in cloud.log if line.startswith(("PUT", "POST", "PATCH"))
                and "/subscriptions/" in line and "/snapshots/" not in line], "the refused revert changed something"


def test_swap_refused_by_azure_for_zone_leaves_the_vm_whole_and_running(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,), zones=["1"])
    prov = provider(fake)
    vm, snap = take(prov, "pre")
    before = state(cloud, "web01")
    cloud.faults.append(Fault(pattern=r"^PATCH .*/virtualMachines/web01$", kind="error", status=409, code="BadRequest",
                              message="Disk web01-os-r is in zone 2 but VM web01 is in zone 1."))
    with pytest.raises(ProviderError) as err:
        prov.revert_snapshot(vm, snap, 60)
    message = str(err.value)
    assert "zone 2 but VM web01 is in zone 1" in message and "keeps its own disks" in message, message
    assert "started again" in message
    assert state(cloud, "web01") == before  # same disks, running, and the new disks removed


def test_fake_refuses_a_disk_from_another_zone_or_os_type(fake):
    """The fake's own swap rules, which the refusal tests rely on, answer as Azure does."""
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(), zones=["1"], power="deallocated")
    prov = provider(fake)
    other_zone = cloud.add_disk(GROUP, "zone2", os_type="Linux", zones=["2"], size_bytes=MiB)
    windows = cloud.add_disk(GROUP, "win", os_type="Windows", zones=["1"], size_bytes=MiB)
    for disk, expected in ((other_zone, "must be in the VM's zone"), (windows, "does not match the OS type")):
        body = {"properties": {"storageProfile": {"osDisk": {"name": disk["name"], "managedDisk": {"id": disk["id"]}}}}}
        with pytest.raises(ProviderError, match=expected):
            prov.wait([prov.begin("swap", prov.client.virtual_machines.begin_update, GROUP, "web01", body)], 1e12)


@pytest.mark.parametrize("where", [r"^PUT .*/disks/web01-lun0-", r"^POST .*/deallocate$"])
def test_failed_operation_during_revert_leaves_no_half_swapped_vm(fake, where):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    prov = provider(fake)
    vm, snap = take(prov, "pre")
    before = state(cloud, "web01")
    cloud.faults.append(Fault(pattern=where, kind="fail_op", code="InternalOperationError", message="injected failure"))
    with pytest.raises(ProviderError, match="InternalOperationError"):
        prov.revert_snapshot(vm, snap, 60)
    assert state(cloud, "web01") == before


def test_throttled_revert_still_swaps(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    prov = provider(fake)
    vm, snap = take(prov, "pre")
    cloud.faults.append(Fault(pattern=r"^PATCH .*/virtualMachines/web01$", kind="throttle", count=1, retry_after=1))
    prov.revert_snapshot(vm, snap, 60)
    assert cloud.throttled == 1
    assert cloud.vm(GROUP, "web01")["properties"]["storageProfile"]["osDisk"]["name"].endswith(f"{snap.id}-r")


def whole(cloud: t.Any, resource_id: str) -> str:
    blob = cloud.blobs[cloud.key(resource_id)]
    return hashlib.sha256(blob.read(0, blob.size)).hexdigest()


def restored(ansible: t.Any, repo: str, backup_id: str, dest: str) -> dict[str, str]:
    result = ansible("vm_restore", {"repository": repo, "passphrase": PASS, "backup_id": backup_id, "target": "image",
                                    "format": "raw", "dest": dest})
    assert result["_status"] == "ok", result.get("msg")
    digests = {}
    for entry in result["files"]:
        with open(entry["path"], "rb") as handle:
            digests[entry["disk"]] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def backup_in_process(prov: azure.AzureProvider, repo: t.Any, last: t.Any) -> t.Any:
    """What vm_backup does, without ansible: base, session, the engine's backup, close."""
    vm = prov.find_vm(VmSelector(name="web01"))
    info = None if last is None else {"checkpoint": last.tags["checkpoint"], "disks": {d.name: d.size for d in last.disks}}
    since, _why = prov.backup_base(vm, info)
    session = prov.backup_begin(vm, since, False, "fail")
    ok = False
    try:
        record = repo.backup("web01", [DiskSource(name=d.target, size=d.size, extents=d.extents()) for d in session.disks],
                             vm_definition=session.vm_definition, tags={"checkpoint": session.checkpoint},
                             parent=last.id if since else None)
        ok = True
    finally:
        session.close(ok)
    return record, since


def test_page_diff_incremental_restores_bit_identical_in_process(fake, tmp_path):
    rng = random.Random(21)
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(2,))
    ids = {"os": disk_id(cloud, "web01", "os"), "lun2": disk_id(cloud, "web01", "lun2")}
    cloud.write(ids["os"], 0, rng.randbytes(3 * MiB))
    cloud.write(ids["lun2"], 40 * MiB, rng.randbytes(MiB))
    repo = Repository.init(open_backend(str(tmp_path / "repo")), encryption="none")
    prov = provider(fake)
    try:
        full, since = backup_in_process(prov, repo, None)
        assert since is None and cloud.bytes_served == 4 * MiB
        states = [{slot: whole(cloud, i) for slot, i in ids.items()}]
        cloud.write(ids["os"], 63 * MiB, rng.randbytes(8192))
        cloud.blobs[cloud.key(ids["lun2"])].pages.pop((40 * MiB + 4096) // 512)  # a trimmed page
        served = cloud.bytes_served
        inc, since = backup_in_process(prov, repo, full)
        assert since == full.tags["checkpoint"] and cloud.bytes_served - served == 8192
        states.append({slot: whole(cloud, i) for slot, i in ids.items()})
        for record, expected in zip((full, inc), states):
            for slot, digest in expected.items():
                target = str(tmp_path / f"{record.id}-{slot}.raw")
                repo.restore(record.id, slot, target)
                with open(target, "rb") as handle:
                    assert hashlib.sha256(handle.read()).hexdigest() == digest, (record.id, slot)
    finally:
        repo.close()
    assert {s["tags"]["vmsafe-set-id"] for s in cloud.snapshots.values()} == {inc.tags["checkpoint"]}
    assert cloud.sas == {}


@pytest.mark.skipif(not LONG, reason="backups through the modules: set VMSAFE_LONG_TESTS=1")
def test_full_and_page_diff_incremental_restore_bit_identical(ansible, fake, tmp_path):
    rng = random.Random(20)
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(2,))
    ids = {"os": disk_id(cloud, "web01", "os"), "lun2": disk_id(cloud, "web01", "lun2")}
    cloud.write(ids["os"], 0, rng.randbytes(3 * MiB))
    cloud.write(ids["lun2"], 40 * MiB, rng.randbytes(MiB))
    repo = str(tmp_path / "repo")
    args = fake.connection(vm_name="web01", repository=repo, passphrase=PASS)
    full = ansible("vm_backup", {**args, "init": True})
    assert full["_status"] == "ok", full.get("msg")
    assert full["mode"] == "full" and full["bytes_read"] == 4 * MiB  # the written pages only, not 2 x 64 MiB
    assert cloud.bytes_served == 4 * MiB
    states = [{slot: whole(cloud, i) for slot, i in ids.items()}]

    for offset in (7 * MiB, 30 * MiB + 512, 63 * MiB):
        cloud.write(ids["os"], offset, rng.randbytes(8192))
    cloud.write(ids["lun2"], 0, rng.randbytes(4096))
    # a page the guest trimmed: the diff reports it cleared, and the restore must read zeros there
    cloud.blobs[cloud.key(ids["lun2"])].pages.pop((40 * MiB) // 512)
    served = cloud.bytes_served
    inc = ansible("vm_backup", args)
    assert inc["_status"] == "ok", inc.get("msg")
    assert inc["mode"] == "incremental", inc["reason"]
    # only the changed pages travel (the cleared one is known to be zeros); the engine counts whole chunks
    assert cloud.bytes_served - served == 3 * 8192 + 4096
    assert inc["bytes_read"] <= 5 * 64 * 1024, inc["bytes_read"]
    states.append({slot: whole(cloud, i) for slot, i in ids.items()})
    # one backup set is left in Azure (the next incremental's base), with every SAS revoked
    backup_sets = {s["tags"]["vmsafe-set-id"] for s in cloud.snapshots.values()}
    assert backup_sets == {inc["checkpoint"]} and cloud.sas == {}
    assert ansible("vm_snapshot_info", fake.connection(vm_name="web01"))["snapshots"] == []

    for backup_id, expected in zip((full["backup_id"], inc["backup_id"]), states):
        assert restored(ansible, repo, backup_id, str(tmp_path)) == expected


def test_backup_after_a_revert_is_full_and_a_failed_read_keeps_the_base(ansible, fake, tmp_path):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    os_id = disk_id(cloud, "web01", "os")
    cloud.write(os_id, 0, page(b"first"))
    prov = provider(fake)
    vm = prov.find_vm(VmSelector(name="web01"))
    assert prov.backup_base(vm, None) == (None, "no earlier backup of this VM in the repository")
    session = prov.backup_begin(vm, None, False, "fail")
    data = b"".join(piece for _o, _l, piece in session.disks[0].extents())
    assert data == page(b"first")
    session.close(True)
    last = {"checkpoint": session.checkpoint, "disks": {"os": 64 * MiB}}
    assert prov.backup_base(vm, last)[0] == session.checkpoint
    # a failed incremental removes its own set and keeps the base
    cloud.write(os_id, 8192, page(b"second"))
    failing = prov.backup_begin(vm, session.checkpoint, False, "fail")
    failing.close(False)
    assert {s["tags"]["vmsafe-set-id"] for s in cloud.snapshots.values()} == {session.checkpoint}
    assert prov.backup_base(vm, last)[0] == session.checkpoint
    # after a revert the OS disk is another managed disk: no page diff exists to it
    prov.create_snapshot(vm, SnapshotSpec(name="pre"), 60)
    prov.revert_snapshot(vm, next(s for s in prov.list_snapshots(vm) if s.name == "pre"), 60)
    prov = provider(fake)
    since, why = prov.backup_base(prov.find_vm(VmSelector(name="web01")), last)
    assert since is None and "another managed disk" in why


@pytest.mark.skipif(not LONG, reason="restore to a new VM through the modules: set VMSAFE_LONG_TESTS=1")
def test_restore_to_a_new_vm_uploads_new_managed_disks(ansible, fake, tmp_path):
    rng = random.Random(3)
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(1,), zones=["2"])
    ids = {"os": disk_id(cloud, "web01", "os"), "lun1": disk_id(cloud, "web01", "lun1")}
    cloud.write(ids["os"], MiB, rng.randbytes(2 * MiB))
    cloud.write(ids["lun1"], 0, rng.randbytes(4096))
    expected = {slot: whole(cloud, i) for slot, i in ids.items()}
    repo = str(tmp_path / "repo")
    backup = ansible("vm_backup", fake.connection(vm_name="web01", repository=repo, passphrase=PASS, init=True))
    assert backup["_status"] == "ok", backup.get("msg")
    args = fake.connection(repository=repo, passphrase=PASS, backup_id=backup["backup_id"], target="new_vm",
                           new_vm_name="web01-restored", dest=str(tmp_path))
    in_use = ansible("vm_restore", args)  # the original VM still holds its network interface
    assert in_use["_status"] == "failed" and "NicInUse" in in_use["msg"], in_use.get("msg")
    assert "network interfaces, which must be free" in in_use["msg"]
    for path in tmp_path.glob("web01-restored-*"):
        path.unlink()
    for name in [d["name"] for d in cloud.disks.values() if d["name"].startswith("web01-restored")]:
        cloud.disks.pop(cloud.key(cloud.rid(GROUP, "disks", name)))
    cloud.vms.pop(cloud.key(cloud.rid(GROUP, "virtualMachines", "web01")))  # the disaster: the VM is gone
    result = ansible("vm_restore", args)
    assert result["_status"] == "ok", result.get("msg")
    new = cloud.vm(GROUP, "web01-restored")
    assert new["zones"] == ["2"] and new["_power"] == "deallocated"
    for slot, disk in cloud.vm_disk_ids(new).items():
        assert whole(cloud, disk) == expected[slot], slot
        assert cloud.disks[cloud.key(disk)]["properties"]["creationData"]["createOption"] == "Upload"


def test_a_stopped_vm_is_deallocated_for_the_swap_and_left_off(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(), power="stopped")
    prov = provider(fake)
    vm, snap = take(prov, "pre")
    assert vm.state == "shutoff"
    prov.revert_snapshot(vm, snap, 60)
    assert cloud.vm(GROUP, "web01")["_power"] == "deallocated"
    assert disk_id(cloud, "web01", "os").endswith(f"{snap.id}-r")
