# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""The PowerShell scripts the Hyper-V provider runs, as fixed text.

Every script is PREAMBLE + body. The only part of the command line that changes from call to call is the
base64 block in the preamble, and it holds JSON data only: arguments (VM names, checkpoint names) reach
PowerShell as values of ``$payload``, never as code, so quotes, ``$``, ``;`` or backticks in a name cannot
inject anything. Each script writes one JSON document to stdout: ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": "...", "reason": "..."}`` (with exit code 1). Non-ASCII characters are written as
``\\uXXXX`` escapes, so the console code page WinRM gives PowerShell cannot garble names.

This module is Python (not .ps1 files) so that AnsiballZ ships the scripts with the modules.
"""

from __future__ import annotations

import base64
import json
import typing as t

PAYLOAD_MARK = "__VMSAFE_PAYLOAD__"

PREAMBLE = r"""$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$payload = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('__VMSAFE_PAYLOAD__')))
function Write-VmsafeJson($value) {
    $json = ConvertTo-Json -InputObject $value -Depth 6 -Compress
    [Console]::Out.Write([regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value }))
}
function Write-VmsafeResult($data) {
    Write-VmsafeJson @{ ok = $true; data = $data }
}
function ConvertTo-VmsafeCheckpoint($snap) {
    @{
        id = [string]$snap.Id
        name = [string]$snap.Name
        created = $snap.CreationTime.ToUniversalTime().ToString('o')
        parent = [string]$snap.ParentCheckpointId
        snapshot_type = [string]$snap.SnapshotType
        state = [string]$snap.State
        notes = [string]$snap.Notes
    }
}
function Get-VmsafeVm {
    $vm = Get-VM | Where-Object { [string]$_.Id -eq $payload.vm_id }
    if (-not $vm) { throw [Management.Automation.ItemNotFoundException]::new('VM not found: ' + $payload.vm_id) }
    $vm
}
function Get-VmsafeCheckpoint($vm) {
    $snap = Get-VMSnapshot -VM $vm | Where-Object { [string]$_.Id -eq $payload.snapshot_id }
    if (-not $snap) { throw [Management.Automation.ItemNotFoundException]::new('checkpoint not found: ' + $payload.snapshot_id) }
    $snap
}
try {
"""

EPILOGUE = """
} catch {
    Write-VmsafeJson @{ ok = $false; error = $_.Exception.Message; reason = $_.Exception.GetType().Name }
    exit 1
}
"""

# Every VM: the provider filters by name or id in Python (Get-VM -Name would treat [ and * as wildcards).
LIST_VMS = """    $vms = @(Get-VM | ForEach-Object {
        @{
            id = [string]$_.Id
            name = [string]$_.Name
            state = [string]$_.State
            checkpoint_type = [string]$_.CheckpointType
            current = [string]$_.ParentCheckpointId
        }
    })
    Write-VmsafeResult $vms
"""

LIST_CHECKPOINTS = """    $vm = Get-VmsafeVm
    $snaps = @(Get-VMSnapshot -VM $vm | ForEach-Object { ConvertTo-VmsafeCheckpoint $_ })
    Write-VmsafeResult @{ current = [string]$vm.ParentCheckpointId; state = [string]$vm.State; checkpoints = $snaps }
"""

# The VM's checkpoint type is set for this one checkpoint and put back afterwards, whatever happens.
CREATE_CHECKPOINT = """    $vm = Get-VmsafeVm
    $previous = [string]$vm.CheckpointType
    Set-VM -VM $vm -CheckpointType $payload.checkpoint_type
    try {
        $snap = Checkpoint-VM -VM $vm -SnapshotName $payload.name -Passthru
    } finally {
        Set-VM -VM $vm -CheckpointType $previous
    }
    Write-VmsafeResult (ConvertTo-VmsafeCheckpoint $snap)
"""

RESTORE_CHECKPOINT = """    $vm = Get-VmsafeVm
    $snap = Get-VmsafeCheckpoint $vm
    Restore-VMSnapshot -VMSnapshot $snap -Confirm:$false
    Write-VmsafeResult @{ state = [string](Get-VmsafeVm).State }
"""

# Remove-VMSnapshot returns before the host has merged the AVHDX files; the provider polls DISK_STATUS.
REMOVE_CHECKPOINT = """    $vm = Get-VmsafeVm
    $snap = Get-VmsafeCheckpoint $vm
    if ($payload.children) {
        Remove-VMSnapshot -VMSnapshot $snap -IncludeAllChildSnapshots -Confirm:$false
    } else {
        Remove-VMSnapshot -VMSnapshot $snap -Confirm:$false
    }
    Write-VmsafeResult @{ removed = [string]$snap.Id }
"""

RENAME_CHECKPOINT = """    $vm = Get-VmsafeVm
    $snap = Get-VmsafeCheckpoint $vm
    Rename-VMSnapshot -VMSnapshot $snap -NewName $payload.new_name
    Write-VmsafeResult (ConvertTo-VmsafeCheckpoint (Get-VmsafeCheckpoint $vm))
"""

DISK_STATUS = """    $vm = Get-VmsafeVm
    $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
        $chain = @()
        $path = $_.Path
        while ($path) {
            $vhd = Get-VHD -Path $path
            $chain += @{ path = [string]$vhd.Path; format = [string]$vhd.VhdFormat; size = [int64]$vhd.Size; file_size = [int64]$vhd.FileSize }
            $path = $vhd.ParentPath
        }
        @{ target = [string]$_.ControllerType + [string]$_.ControllerNumber + ':' + [string]$_.ControllerLocation; chain = $chain }
    })
    $operational = @($vm.OperationalStatus | ForEach-Object { [string]$_ })
    Write-VmsafeResult @{ state = [string]$vm.State; status = [string]$vm.Status; operational = $operational; disks = $disks }
"""

BODIES: dict[str, str] = {
    "create_checkpoint": CREATE_CHECKPOINT,
    "disk_status": DISK_STATUS,
    "list_checkpoints": LIST_CHECKPOINTS,
    "list_vms": LIST_VMS,
    "remove_checkpoint": REMOVE_CHECKPOINT,
    "rename_checkpoint": RENAME_CHECKPOINT,
    "restore_checkpoint": RESTORE_CHECKPOINT,
}

# The full text of each script, with PAYLOAD_MARK where the data block goes.
SCRIPTS: dict[str, str] = {name: PREAMBLE + body + EPILOGUE for name, body in BODIES.items()}


def render(name: str, payload: dict[str, t.Any]) -> str:
    """Return the script ``name`` with ``payload`` as its base64 JSON data block (base64 has no quote in it)."""
    block = base64.b64encode(json.dumps(payload, sort_keys=True).encode("utf-8")).decode("ascii")
    return SCRIPTS[name].replace(PAYLOAD_MARK, block, 1)
