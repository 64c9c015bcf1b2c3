# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The shipped PowerShell scripts against Microsoft's cmdlet and CIM reference (tests/hyperv_ref).

Every shipped script must agree with the reference; deliberately broken copies of shipped scripts prove that each
kind of disagreement is caught, by the checker and by the simulator that runs the scripts in the other tests.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, TESTS)

pytest.importorskip("tree_sitter")
pytest.importorskip("tree_sitter_powershell")

from hyperv_ref import build_reference  # noqa: E402  pylint: disable=wrong-import-position,import-error
from hyperv_ref.check import KINDS, Checker, check_script, load_reference  # noqa: E402  pylint: disable=wrong-import-position,import-error
from hyperv_sim.model import HyperVHost, ScriptRejected  # noqa: E402  pylint: disable=wrong-import-position,import-error

from ansible_collections.vmsafe.protect.plugins.module_utils._models import SnapshotSpec  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts as scripts  # noqa: E402

# What the scripts read beyond Microsoft's reference: properties of Hyper-V cmdlet objects that no reference page
# shows (docs/hyperv.md lists them as simulator-only). A new undocumented read fails here until it is added to
# output_types.json with its evidence, this list and the docs.
UNDOCUMENTED_READS = {
    ("Microsoft.HyperV.PowerShell.VMSnapshot", "Notes"),
    ("Microsoft.HyperV.PowerShell.VMSnapshot", "ParentCheckpointId"),
    ("Microsoft.HyperV.PowerShell.VMSnapshot", "State"),
    ("Microsoft.HyperV.PowerShell.VirtualMachine", "MemoryStartup"),
    ("Microsoft.HyperV.PowerShell.VirtualMachine", "OperationalStatus"),
    ("Microsoft.HyperV.PowerShell.VirtualMachine", "ParentCheckpointId"),
    ("Microsoft.HyperV.PowerShell.VirtualMachine", "Status"),
    ("Microsoft.Vhd.PowerShell.VirtualHardDisk", "FileSize"),
    ("Microsoft.Vhd.PowerShell.VirtualHardDisk", "Size"),
    ("Microsoft.Vhd.PowerShell.VirtualHardDisk", "VhdFormat"),
    # recorded by backup_begin for restores to a new VM
    ("Microsoft.HyperV.PowerShell.VMFirmware", "SecureBoot"),
    ("Microsoft.HyperV.PowerShell.VMNetworkAdapter", "DynamicMacAddressEnabled"),
    ("Microsoft.HyperV.PowerShell.VMNetworkAdapter", "MacAddress"),
}


def kinds_added(name: str, old: str, new: str) -> list[str]:
    """The finding kinds a one-place edit of shipped script ``name`` adds (the edit must apply)."""
    text = scripts.SCRIPTS[name]
    assert text.count(old) >= 1, f"{name} no longer contains {old!r}: update the test"
    before = {str(f) for f in check_script(text)}
    return sorted({f.kind for f in check_script(text.replace(old, new, 1)) if str(f) not in before})


@pytest.mark.parametrize("name", sorted(scripts.SCRIPTS))
def test_every_shipped_script_agrees_with_the_reference(name):
    findings = check_script(scripts.SCRIPTS[name])
    assert not findings, "\n".join(str(f) for f in findings)


# One broken copy per kind of disagreement (the first three are the issue's: misspelt parameter, renamed property,
# parameters from two sets).
@pytest.mark.parametrize("name, old, new, kind", [
    pytest.param("create_checkpoint", "-SnapshotName", "-SnapshtName", "unknown-parameter", id="misspelt-parameter"),
    pytest.param("list_checkpoints", "$snap.ParentCheckpointId", "$snap.ParentSnapshotId", "unknown-property",
                 id="renamed-property"),
    pytest.param("list_checkpoints", "Get-VMSnapshot -VM $vm |", "Get-VMSnapshot -VM $vm -VMName 'web01' |",
                 "parameter-set", id="mixed-parameter-sets"),
    pytest.param("create_checkpoint", "-Passthru", "-P", "ambiguous-parameter",
                 id="ambiguous-abbreviation"),  # -Passthru or the common -PipelineVariable
    pytest.param("restore_checkpoint", "Restore-VMSnapshot -VMSnapshot $snap", "Restore-VMSnapshot",
                 "missing-mandatory", id="missing-mandatory"),
    pytest.param("create_checkpoint", "-CheckpointType $payload.checkpoint_type", "-CheckpointType Productive",
                 "accepted-value", id="value-not-accepted"),
    pytest.param("disk_status", "$vhd.VhdFormat", "$vhd.Format", "unknown-property", id="renamed-vhd-property"),
    pytest.param("list_vms", "Get-VM |", "Get-VMs |", "unknown-command", id="unknown-cmdlet"),
    pytest.param("backup_begin", "-ClassName Msvm_VirtualSystemSnapshotService",
                 "-ClassName Msvm_VirtualSystemSnapshotSvc", "unknown-cim-class", id="unknown-cim-class"),
    pytest.param("backup_changes", "GetVirtualDiskChanges -Arguments", "GetVirtualDiskChange -Arguments",
                 "unknown-cim-method", id="unknown-cim-method"),
    pytest.param("backup_changes", "ByteLength = [uint64]", "Length = [uint64]", "cim-argument",
                 id="unknown-cim-argument"),
    pytest.param("backup_begin", "SnapshotType = [uint16]32768", "SnapshotType = [uint32]32768", "cim-argument",
                 id="cim-argument-of-wrong-width"),
    pytest.param("backup_begin", "ConsistencyLevel = [byte]", "ConsistencyLevel = [string]", "cim-argument",
                 id="cim-property-of-wrong-type"),
    pytest.param("backup_convert", "AffectedSnapshot = $snap", "AffectedSnapshot = [ref]$snap", "cim-ref-argument",
                 id="ref-argument-as-psreference"),
    pytest.param("backup_drop", "AffectedReferencePoint = $item", "AffectedReferencePoint = $vmCim",
                 "cim-ref-argument", id="ref-argument-of-wrong-class"),
    pytest.param("backup_begin", "$ns = 'root\\virtualization\\v2'", "$ns = 'root\\virtualization'", "cim-namespace",
                 id="wrong-cim-namespace"),
    pytest.param("backup_begin", "'Microsoft:Hyper-V:Snapshot:Recovery'", "'Microsoft:Hyper-V:Snapshot:Recover'",
                 "property-value", id="undocumented-property-value"),
    pytest.param("backup_begin", "$_.ResourceType -eq 31", "$_.ResourceType -eq 131", "property-value",
                 id="undocumented-resource-type"),
    pytest.param("backup_changes", "$result.ProcessedByteLength", "$result.ProcessedBytes", "unknown-property",
                 id="unknown-cim-out-parameter"),
    pytest.param("backup_begin", "$job.JobState", "$job.State", "unknown-property", id="unknown-cim-property"),
    pytest.param("backup_read", "$disk.Number", "$disk.DiskNumber", "unknown-property", id="storage-cim-property"),
])
def test_each_kind_of_drift_is_caught(name, old, new, kind):
    assert kinds_added(name, old, new) == [kind]


def test_every_finding_kind_has_a_broken_copy():
    covered = {"unknown-parameter", "unknown-property", "parameter-set", "ambiguous-parameter", "missing-mandatory",
               "accepted-value", "unknown-command", "unknown-cim-class", "unknown-cim-method", "cim-argument",
               "cim-ref-argument", "cim-namespace", "property-value"}
    assert set(KINDS) - covered == {"positional"}


def test_too_many_positional_arguments_and_pipeline_input():
    # Start-Sleep has one positional parameter per set, already given by name here ...
    assert kinds_added("backup_begin", "Start-Sleep -Milliseconds 200", "Start-Sleep -Milliseconds 200 300") \
        == ["positional"]
    # ... while positional values that fit a set are fine (Restore-VMSnapshot's Name, VMName)
    assert kinds_added("restore_checkpoint", "-VMSnapshot $snap", "$snap 'web01'") == []
    # ... and a mandatory parameter that takes pipeline input may come from the pipeline (the documented
    # Mount-VHD -PassThru | Get-Disk), but not when the command starts the pipeline.
    assert check_script("$vm = Get-VM | Where-Object { $_.Name -eq 'a' }\n$vm | Get-VMSnapshot\n") == []
    assert [f.kind for f in check_script("Get-VMHardDiskDrive\n")] == ["missing-mandatory"]


def test_checkpoint_types_the_provider_sends_are_documented_values():
    accepted = set(load_reference()["cmdlets"]["Set-VM"]["parameters"]["CheckpointType"]["accepted_values"])
    sent = {hyperv.checkpoint_type(spec, running)
            for spec in (SnapshotSpec(name="a"), SnapshotSpec(name="a", memory=True),
                         SnapshotSpec(name="a", quiesce=True),
                         SnapshotSpec(name="a", quiesce=True, quiesce_fallback="crash_consistent"))
            for running in (True, False)}
    assert sent <= accepted and sent == {"Standard", "Production", "ProductionOnly"}


def test_reads_beyond_the_reference_are_the_pinned_ones():
    reads, untraced = set(), set()
    for text in scripts.SCRIPTS.values():
        checker = Checker(text).run()
        reads |= checker.reads
        untraced |= checker.untraced
    assert {(obj, prop) for obj, prop, evidence in reads if evidence == "none"} == UNDOCUMENTED_READS
    # what cannot be traced is data the script makes itself or .NET objects, never a cmdlet's output
    made_here = {"$_.id", "$buffer.Length", "$m.Value", "$new.Count", "$bytes.Length", "$_.path"}
    # elements of the payload's lists (restore_new_vm, restore_switch) and the restore_switch's own hashtables
    payload_items = ("$nic.", "$drive.", "$item.", "@($payload.")
    assert all(u.startswith(("$payload.", "$_.Exception", "[") + payload_items) or u in made_here
               for u in untraced), untraced


def test_reference_entries_name_their_source():
    reference = load_reference()
    entries = list(reference["cmdlets"].values()) + list(reference["cim_classes"].values())
    entries += [m for c in reference["cim_classes"].values() for m in c["methods"].values()]
    for entry in entries:
        source = entry["source"]
        assert source["repo"].startswith("MicrosoftDocs/") and source["path"].endswith(".md")
        assert len(source["commit"]) == 40 and source["ms_date"]
    with open(os.path.join(TESTS, "hyperv_ref", "output_types.json"), encoding="utf-8") as handle:
        kept = json.load(handle)
    rules = kept["cim_cmdlet_rules"]
    assert kept["pages_read_at"]["commit"] == reference["mirrors"][kept["pages_read_at"]["repo"]]
    for key in ("ref_arguments", "method_result"):
        assert rules[key]["repo"] == "PowerShell/PowerShell" and len(rules[key]["commit"]) == 40
    for name, entry in reference["output_types"].items():
        for prop, fact in entry["properties"].items():
            assert fact["evidence"] in ("example", "parameter", "none"), (name, prop)
            assert fact["evidence"] == "none" or fact["page"].startswith("docset/winserver2025-ps/"), (name, prop)


def test_the_page_parsers_read_sets_and_signatures():
    page = ("---\nms.date: 01/02/2025\n---\n# Do-Thing\n## SYNTAX\n\n### ByName (Default)\n```\n```\n\n### ByObj\n```\n```\n"
            "## PARAMETERS\n\n### -Name\nx\n\n```yaml\nType: System.String\nParameter Sets: ByName\nAliases: N\n"
            "Accepted values: A, B\n\nRequired: True\nPosition: 0\nAccept pipeline input: True (ByPropertyName)\n```\n\n"
            "### -Force\n\n```yaml\nType: SwitchParameter\nParameter Sets: (All)\nAliases:\n\nRequired: False\n"
            "Position: Named\nAccept pipeline input: False\n```\n\n### CommonParameters\nThis cmdlet supports the "
            "common parameters: -Debug, -Verbose. For more information\n\n## INPUTS\n\n## OUTPUTS\n\n### None\n\n"
            "### Some.Type\nIf **-PassThru** is specified.\n\n## NOTES\n")
    parsed = build_reference.parse_cmdlet("Do-Thing", page)
    assert parsed["sets"] == ["ByName", "ByObj"] and parsed["default_set"] == "ByName"
    assert parsed["parameters"]["Name"] == {"type": "String", "aliases": ["N"], "accepted_values": ["A", "B"],
                                            "pipeline": ["ByPropertyName"], "switch": False,
                                            "sets": {"ByName": {"required": True, "position": 0}}}
    assert set(parsed["parameters"]["Force"]["sets"]) == {"ByName", "ByObj"} and parsed["parameters"]["Force"]["switch"]
    assert parsed["common_parameters"] == ["Debug", "Verbose"]
    assert parsed["outputs"] == [{"type": "None", "when": "always"}, {"type": "Some.Type", "when": "PassThru"}]
    method = build_reference.parse_method("```mof\nuint32 M(\n  [in] CIM_X REF A,\n  [out] uint64 B[],\n"
                                          "  [in, out] string C\n);\n```")
    assert method == [{"name": "A", "type": "CIM_X", "ref": True, "array": False, "in": True, "out": False},
                      {"name": "B", "type": "uint64", "ref": False, "array": True, "in": False, "out": True},
                      {"name": "C", "type": "string", "ref": False, "array": False, "in": True, "out": True}]


# -- the simulator checks the same reference ------------------------------------------------------------------

def _command(text: str) -> tuple[str, str]:
    return "powershell.exe", "-NoProfile -NonInteractive -EncodedCommand " + base64.b64encode(
        text.encode("utf-16-le")).decode("ascii")


def test_simulator_rejects_a_shipped_script_that_drifted(monkeypatch):
    host = HyperVHost()
    vm = host.add_vm("web01")
    payload = {"vm_id": vm.id, "name": "pre", "checkpoint_type": "Standard"}
    stdout, _stderr, code = host.execute(*_command(scripts.render("create_checkpoint", payload)))
    assert code == 0 and json.loads(stdout)["ok"]
    # The provider and the simulator both see the drifted text (as after an edit of hyperv_scripts.py): the
    # simulator recognises it as shipped, and refuses it because Checkpoint-VM has no -SnapshtName.
    drifted = scripts.SCRIPTS["create_checkpoint"].replace("-SnapshotName", "-SnapshtName")
    monkeypatch.setitem(scripts.SCRIPTS, "create_checkpoint", drifted)
    with pytest.raises(ScriptRejected, match=r"Microsoft's reference.*SnapshtName"):
        host.execute(*_command(scripts.render("create_checkpoint", payload)))
    assert len(vm.checkpoints) == 1


def test_simulator_binds_enum_payload_values_as_the_reference_documents():
    host = HyperVHost()
    vm = host.add_vm("web01")
    text = scripts.render("create_checkpoint", {"vm_id": vm.id, "name": "x", "checkpoint_type": "Crash"})
    stdout, _stderr, code = host.execute(*_command(text))
    answer = json.loads(stdout)
    assert code == 1 and answer["reason"] == "ParameterBindingException"
    assert "Disabled, Production, ProductionOnly, Standard" in answer["error"] and not vm.checkpoints
    # PowerShell binds enum names case-insensitively
    text = scripts.render("create_checkpoint", {"vm_id": vm.id, "name": "x", "checkpoint_type": "productiononly"})
    assert host.execute(*_command(text))[2] == 0 and len(vm.checkpoints) == 1
