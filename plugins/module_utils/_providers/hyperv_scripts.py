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

# Every VM with its checkpoints in one command (the inventory plugin): Get-VMSnapshot -VM takes the VM objects
# Get-VM returns, as LIST_CHECKPOINTS does for one.
LIST_VMS_CHECKPOINTS = """    $vms = @(Get-VM | ForEach-Object {
        $vm = $_
        @{
            id = [string]$vm.Id
            name = [string]$vm.Name
            state = [string]$vm.State
            checkpoint_type = [string]$vm.CheckpointType
            current = [string]$vm.ParentCheckpointId
            checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object { ConvertTo-VmsafeCheckpoint $_ })
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

# -- backups: a Recovery checkpoint freezes the disks, Resilient Change Tracking (RCT) says what changed since the
# reference point the last backup left, and the frozen disks are read through a read-only mount. Verified against
# the simulator only (docs/hyperv.md says what a real host needs).

# The CIM objects of the VM and of its reference points; the VM is matched by its id in PowerShell, not in a WQL
# filter, so no payload value is ever part of a query string.
BACKUP_HELPERS = """    $ns = 'root\\virtualization\\v2'
    $vm = Get-VmsafeVm
    $vmCim = Get-CimInstance -Namespace $ns -ClassName Msvm_ComputerSystem |
        Where-Object { $_.Name -eq [string]$vm.Id }
    $snapSvc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
    $refSvc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemReferencePointService
    function Wait-VmsafeJob($result, $what) {
        if ($result.ReturnValue -eq 4096) {
            $job = Get-CimInstance -InputObject $result.Job
            while ($job.JobState -lt 7) { Start-Sleep -Milliseconds 200; $job = Get-CimInstance -InputObject $job }
            if ($job.JobState -ne 7) { throw ($what + ' failed: ' + $job.ErrorDescription) }
        } elseif ($result.ReturnValue -ne 0) {
            throw ($what + ' failed with code ' + $result.ReturnValue)
        }
    }
    function Get-VmsafeReferencePoints {
        @(Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemReferencePoint |
            ForEach-Object {
                @{ id = [string]$_.InstanceID; rct = @($_.ResilientChangeTrackingIdentifiers | ForEach-Object { [string]$_ }) }
            })
    }
"""

LIST_REFERENCE_POINTS = BACKUP_HELPERS + """    $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
        @{
            target = [string]$_.ControllerType + [string]$_.ControllerNumber + ':' + [string]$_.ControllerLocation
            size = [int64](Get-VHD -Path $_.Path).Size
        }
    })
    Write-VmsafeResult @{ reference_points = (Get-VmsafeReferencePoints); disks = $disks }
"""

# ConsistencyLevel 1 = application consistent (VSS / fsfreeze through the integration services), 2 = crash consistent.
# REF parameters of a CIM method get the CimInstance itself: with -InputObject, Invoke-CimMethod converts each argument
# to the type the method declares, and a PowerShell [ref] is not a CimInstance. The snapshot's settings
# (Msvm_VirtualSystemSettingData) have no ConsistencyLevel, so the level reported is the one CreateSnapshot was asked
# for and completed with. Whether a host can complete level 1 at level 2 without failing is not documented; the
# reference point made from the checkpoint (Msvm_VirtualSystemReferencePoint.ConsistencyLevel) would show it.
BACKUP_BEGIN = BACKUP_HELPERS + """    $settings = Get-CimClass -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotSettingData |
        New-CimInstance -ClientOnly -Property @{
            ConsistencyLevel = [byte]$payload.consistency_level
            IgnoreNonSnapshottableDisks = $true
        }
    $serializer = [Microsoft.Management.Infrastructure.Serialization.CimSerializer]::Create()
    $options = [Microsoft.Management.Infrastructure.Serialization.InstanceSerializationOptions]::None
    $text = [Text.Encoding]::Unicode.GetString($serializer.Serialize($settings, $options))
    $result = Invoke-CimMethod -InputObject $snapSvc -MethodName CreateSnapshot -Arguments @{
        AffectedSystem = $vmCim
        SnapshotSettings = $text
        SnapshotType = [uint16]32768
    }
    Wait-VmsafeJob $result 'CreateSnapshot (Recovery)'
    $snap = Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemSettingData |
        Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:Snapshot:Recovery' } |
        Sort-Object CreationTime | Select-Object -Last 1
    $allocations = Get-CimAssociatedInstance -InputObject $snap -ResultClassName Msvm_StorageAllocationSettingData
    $disks = @($allocations | Where-Object { $_.ResourceType -eq 31 } | ForEach-Object {
        $path = [string]$_.HostResource[0]
        $parent = Get-CimAssociatedInstance -InputObject $_ -ResultClassName Msvm_ResourceAllocationSettingData
        @{ target = [string]$parent.Parent + ':' + [string]$parent.AddressOnParent; path = $path; size = [int64](Get-VHD -Path $path).Size }
    })
    $secureBoot = ''
    $template = ''
    if ([int]$vm.Generation -eq 2) {
        $firmware = Get-VMFirmware -VM $vm
        $secureBoot = [string]$firmware.SecureBoot
        $template = [string]$firmware.SecureBootTemplate
    }
    $definition = @{
        definition_version = 2
        name = [string]$vm.Name
        generation = [int]$vm.Generation
        memory_bytes = [int64]$vm.MemoryStartup
        processors = [int]$vm.ProcessorCount
        secure_boot = $secureBoot
        secure_boot_template = $template
        disks = $disks
        drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
            @{
                target = [string]$_.ControllerType + [string]$_.ControllerNumber + ':' + [string]$_.ControllerLocation
                controller_type = [string]$_.ControllerType
                controller_number = [int]$_.ControllerNumber
                controller_location = [int]$_.ControllerLocation
            }
        })
        nics = @(Get-VMNetworkAdapter -VM $vm | ForEach-Object {
            @{ name = [string]$_.Name; switch = [string]$_.SwitchName; mac = [string]$_.MacAddress; dynamic_mac = [bool]$_.DynamicMacAddressEnabled }
        })
    }
    Write-VmsafeResult @{
        checkpoint = [string]$snap.InstanceID
        consistency_level = [int]$payload.consistency_level
        disks = $disks
        definition = $definition
    }
"""

# One call covers at most byte_length bytes; the provider calls again from processed until the disk is covered.
BACKUP_CHANGES = BACKUP_HELPERS + """    $ims = Get-CimInstance -Namespace $ns -ClassName Msvm_ImageManagementService
    $result = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualDiskChanges -Arguments @{
        Path = [string]$payload.path
        LimitId = [string]$payload.limit_id
        ByteOffset = [uint64]$payload.byte_offset
        ByteLength = [uint64]$payload.byte_length
    }
    Wait-VmsafeJob $result 'GetVirtualDiskChanges'
    Write-VmsafeResult @{
        processed = [int64]$result.ProcessedByteLength
        offsets = @($result.ChangedByteOffsets | ForEach-Object { [int64]$_ })
        lengths = @($result.ChangedByteLengths | ForEach-Object { [int64]$_ })
    }
"""

# Reads byte ranges of a frozen (checkpoint) disk through a read-only mount, as base64; dismounts whatever happens.
BACKUP_READ = """    $disk = Mount-VHD -Path ([string]$payload.path) -ReadOnly -NoDriveLetter -Passthru | Get-Disk
    try {
        $stream = [IO.File]::Open('\\\\.\\PhysicalDrive' + $disk.Number, 'Open', 'Read', 'ReadWrite')
        try {
            $chunks = @(foreach ($range in $payload.ranges) {
                $buffer = New-Object byte[] ([int]$range[1])
                [void]$stream.Seek([int64]$range[0], 'Begin')
                $done = 0
                while ($done -lt $buffer.Length) {
                    $n = $stream.Read($buffer, $done, $buffer.Length - $done)
                    if ($n -le 0) { throw 'short read at ' + ([int64]$range[0] + $done) }
                    $done += $n
                }
                [Convert]::ToBase64String($buffer)
            })
        } finally {
            $stream.Dispose()
        }
    } finally {
        Dismount-VHD -Path ([string]$payload.path)
    }
    Write-VmsafeResult @{ chunks = $chunks }
"""

# After the data is read, before the backup is committed: the Recovery checkpoint becomes the reference point
# the next incremental starts from (its RCT ids say "changes since now").
BACKUP_CONVERT = BACKUP_HELPERS + """    $before = @(Get-VmsafeReferencePoints | ForEach-Object { $_.id })
    $snap = Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemSettingData |
        Where-Object { [string]$_.InstanceID -eq [string]$payload.checkpoint }
    if (-not $snap) { throw [Management.Automation.ItemNotFoundException]::new('checkpoint not found: ' + $payload.checkpoint) }
    $result = Invoke-CimMethod -InputObject $snapSvc -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $snap }
    Wait-VmsafeJob $result 'ConvertToReferencePoint'
    $new = @(Get-VmsafeReferencePoints | Where-Object { $before -notcontains $_.id })
    if ($new.Count -ne 1) { throw ('ConvertToReferencePoint left ' + $new.Count + ' new reference points') }
    Write-VmsafeResult $new[0]
"""

# Drops what a backup leaves when it is not needed any more: its Recovery checkpoint (a failed run), its new
# reference point (a run that failed after converting), or the previous run's reference point (after a success).
BACKUP_DROP = BACKUP_HELPERS + """    if ($payload.kind -eq 'checkpoint') {
        $item = Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemSettingData |
            Where-Object { [string]$_.InstanceID -eq [string]$payload.id }
        if ($item) {
            $result = Invoke-CimMethod -InputObject $snapSvc -MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $item }
            Wait-VmsafeJob $result 'DestroySnapshot'
        }
    } else {
        $item = Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemReferencePoint |
            Where-Object { [string]$_.InstanceID -eq [string]$payload.id }
        if ($item) {
            $arguments = @{ AffectedReferencePoint = $item }
            Wait-VmsafeJob (Invoke-CimMethod -InputObject $refSvc -MethodName DestroyReferencePoint -Arguments $arguments) 'DestroyReferencePoint'
        }
    }
    Write-VmsafeResult @{ dropped = [bool]$item }
"""

# -- restores to a new VM or over the shut-off original. Verified against the simulator only (docs/hyperv.md).

# What a restore needs to know of a VM: its drives (with their images), state, checkpoints, notes (a VM made by
# vm_restore names its backup there) and where the host keeps new virtual hard disks.
RESTORE_INFO = """    $vm = Get-VmsafeVm
    $drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
        @{
            target = [string]$_.ControllerType + [string]$_.ControllerNumber + ':' + [string]$_.ControllerLocation
            path = [string]$_.Path
        }
    })
    $checkpoints = 0
    Get-VMSnapshot -VM $vm | ForEach-Object { $checkpoints++ }
    Write-VmsafeResult @{
        state = [string]$vm.State
        notes = [string]$vm.Notes
        checkpoints = $checkpoints
        drives = $drives
        vhd_root = [string](Get-VMHost).VirtualHardDiskPath
    }
"""

HOST_INFO = """    Write-VmsafeResult @{
        vhd_root = [string](Get-VMHost).VirtualHardDiskPath
        vms = @(Get-VM | Where-Object { [string]$_.Name -eq [string]$payload.name } | ForEach-Object { [string]$_.Id })
    }
"""

# A new dynamic VHDX (New-VHD fails when the file exists, so nothing is overwritten), filled from stdin: one line
# per range, "<offset> <base64>", sent by the provider through WS-Man Send (the command line is too short for data;
# Ansible's winrm connection plugin sends files the same way). Ranges are sector multiples; zero ranges are not sent.
RESTORE_WRITE = """    $path = [string]$payload.path
    $null = New-VHD -Path $path -SizeBytes ([uint64]$payload.size) -Dynamic
    $written = [int64]0
    $disk = Mount-VHD -Path $path -NoDriveLetter -Passthru | Get-Disk
    try {
        $stream = [IO.File]::Open('\\\\.\\PhysicalDrive' + $disk.Number, 'Open', 'ReadWrite', 'ReadWrite')
        try {
            foreach ($line in $input) {
                $parts = ([string]$line).Split(' ')
                $bytes = [Convert]::FromBase64String($parts[1])
                [void]$stream.Seek([int64]$parts[0], 'Begin')
                $stream.Write($bytes, 0, $bytes.Length)
                $written += $bytes.Length
            }
            $stream.Flush()
        } finally {
            $stream.Dispose()
        }
    } finally {
        Dismount-VHD -Path $path
    }
    Write-VmsafeResult @{ path = $path; written = $written }
"""

# Files a failed restore wrote; a file that is not there is fine. .NET's File, not Remove-Item, so that no path is
# read as a wildcard pattern.
RESTORE_REMOVE = """    foreach ($path in $payload.paths) {
        if ([IO.File]::Exists([string]$path)) { [IO.File]::Delete([string]$path) }
    }
    Write-VmsafeResult @{ removed = @($payload.paths).Count }
"""

# A new VM from the recorded hardware: New-VM adds one network adapter of its own, which is removed so the VM has
# exactly the recorded ones. A failure removes the half-made VM (not its disk files: the provider does that).
RESTORE_NEW_VM = """    if (Get-VM | Where-Object { [string]$_.Name -eq [string]$payload.name }) {
        throw [InvalidOperationException]::new('A VM with this name exists already: ' + $payload.name)
    }
    $vm = New-VM -Name ([string]$payload.name) -Generation ([int16]$payload.generation) -MemoryStartupBytes ([int64]$payload.memory_bytes) -NoVHD
    try {
        Set-VM -VM $vm -ProcessorCount ([int64]$payload.processors) -Notes ([string]$payload.notes)
        Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter
        foreach ($nic in $payload.nics) {
            if ($nic.mac -and $nic.switch) {
                Add-VMNetworkAdapter -VM $vm -Name ([string]$nic.name) -SwitchName ([string]$nic.switch) -StaticMacAddress ([string]$nic.mac)
            } elseif ($nic.mac) {
                Add-VMNetworkAdapter -VM $vm -Name ([string]$nic.name) -StaticMacAddress ([string]$nic.mac)
            } elseif ($nic.switch) {
                Add-VMNetworkAdapter -VM $vm -Name ([string]$nic.name) -SwitchName ([string]$nic.switch)
            } else {
                Add-VMNetworkAdapter -VM $vm -Name ([string]$nic.name)
            }
        }
        if ($payload.firmware -and $payload.secure_boot_template) {
            Set-VMFirmware -VM $vm -EnableSecureBoot $payload.secure_boot -SecureBootTemplate ([string]$payload.secure_boot_template)
        } elseif ($payload.firmware) {
            Set-VMFirmware -VM $vm -EnableSecureBoot $payload.secure_boot
        }
        foreach ($drive in $payload.drives) {
            if ([string]$drive.controller_type -eq 'SCSI') {
                $controllers = 0
                Get-VMScsiController -VM $vm | ForEach-Object { $controllers++ }
                while ($controllers -le [int]$drive.controller_number) { Add-VMScsiController -VM $vm; $controllers++ }
            }
            $kind = [string]$drive.controller_type
            $number = [int]$drive.controller_number
            $location = [int]$drive.controller_location
            Add-VMHardDiskDrive -VM $vm -ControllerType $kind -ControllerNumber $number -ControllerLocation $location -Path ([string]$drive.path)
        }
        if ($payload.start) { Start-VM -VM $vm }
    } catch {
        Remove-VM -VM $vm -Force
        throw
    }
    $made = Get-VM | Where-Object { [string]$_.Id -eq [string]$vm.Id }
    Write-VmsafeResult @{ id = [string]$made.Id; name = [string]$made.Name; state = [string]$made.State }
"""

# Over the original: every drive is switched to its new, complete VHDX; when one switch fails, the drives already
# switched are put back and the error is raised (the VM is as it was; the provider removes the new files). After
# all switched: the VM's reference points are destroyed (their RCT ids belong to the old files, so the next backup
# is a full one) and the old files are deleted.
RESTORE_SWITCH = BACKUP_HELPERS + """    if ([string]$vm.State -ne 'Off') {
        throw [InvalidOperationException]::new('the VM is ' + [string]$vm.State + ', not Off')
    }
    $checkpoints = 0
    Get-VMSnapshot -VM $vm | ForEach-Object { $checkpoints++ }
    if ($checkpoints -gt 0) {
        throw [InvalidOperationException]::new('the VM has checkpoints')
    }
    $done = @()
    try {
        foreach ($drive in $payload.drives) {
            $kind = [string]$drive.controller_type
            $number = [int]$drive.controller_number
            $location = [int]$drive.controller_location
            $hdd = Get-VMHardDiskDrive -VM $vm -ControllerType $kind -ControllerNumber $number -ControllerLocation $location
            $old = [string]$hdd.Path
            Set-VMHardDiskDrive -VMHardDiskDrive $hdd -Path ([string]$drive.path)
            $done += @{ kind = $kind; number = $number; location = $location; path = [string]$drive.path; old = $old }
        }
    } catch {
        foreach ($item in $done) {
            $back = Get-VMHardDiskDrive -VM $vm -ControllerType $item.kind -ControllerNumber $item.number -ControllerLocation $item.location
            Set-VMHardDiskDrive -VMHardDiskDrive $back -Path ([string]$item.old)
        }
        throw
    }
    foreach ($point in @(Get-CimAssociatedInstance -InputObject $vmCim -ResultClassName Msvm_VirtualSystemReferencePoint)) {
        $arguments = @{ AffectedReferencePoint = $point }
        Wait-VmsafeJob (Invoke-CimMethod -InputObject $refSvc -MethodName DestroyReferencePoint -Arguments $arguments) 'DestroyReferencePoint'
    }
    foreach ($item in $done) {
        [IO.File]::Delete([string]$item.old)
    }
    Write-VmsafeResult @{ switched = @($done | ForEach-Object { [string]$_.path }); state = [string](Get-VmsafeVm).State }
"""

# Scripts that read stdin (the provider sends it through WS-Man Send).
STDIN_SCRIPTS = frozenset({"restore_write"})

BODIES: dict[str, str] = {
    "restore_info": RESTORE_INFO,
    "restore_host_info": HOST_INFO,
    "restore_new_vm": RESTORE_NEW_VM,
    "restore_remove": RESTORE_REMOVE,
    "restore_switch": RESTORE_SWITCH,
    "restore_write": RESTORE_WRITE,
    "backup_begin": BACKUP_BEGIN,
    "backup_changes": BACKUP_CHANGES,
    "backup_convert": BACKUP_CONVERT,
    "backup_drop": BACKUP_DROP,
    "backup_read": BACKUP_READ,
    "list_reference_points": LIST_REFERENCE_POINTS,
    "create_checkpoint": CREATE_CHECKPOINT,
    "disk_status": DISK_STATUS,
    "list_checkpoints": LIST_CHECKPOINTS,
    "list_vms": LIST_VMS,
    "list_vms_checkpoints": LIST_VMS_CHECKPOINTS,
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
