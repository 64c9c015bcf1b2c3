# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Regenerate ``reference.json`` from local git mirrors of Microsoft's documentation repositories.

Not run by the tests (they read the committed ``reference.json``). Run it when the scripts start using a new
cmdlet or CIM class, or to move the reference to a newer documentation commit::

    python tests/hyperv_ref/build_reference.py \\
        --psdocs-windows /path/to/MicrosoftDocs/windows-powershell-docs.git \\
        --psdocs-core /path/to/MicrosoftDocs/PowerShell-Docs.git \\
        --win32 /path/to/MicrosoftDocs/win32.git \\
        --driver-docs /path/to/MicrosoftDocs/windows-driver-docs.git

Each mirror is read with ``git show HEAD:<path>`` (a bare mirror is enough). Only facts are extracted: names,
types, parameter sets, mandatory flags, positions, pipeline input, accepted values, output type names, CIM
class properties and method signatures. No prose is copied. Every entry records the repository, path, commit
and the page's own ``ms.date``. Output-object properties of the Hyper-V cmdlets are not in Microsoft's cmdlet
reference; they live in ``output_types.json`` (kept by hand, each property with its evidence).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))

# cmdlet -> (mirror key, path in that repository). The Windows PowerShell 5.1 pages are used for the core and CIM
# cmdlets because powershell.exe on a Hyper-V host is Windows PowerShell 5.1.
CMDLETS: dict[str, tuple[str, str]] = {
    "Checkpoint-VM": ("windows", "docset/winserver2025-ps/Hyper-V/Checkpoint-VM.md"),
    "Dismount-VHD": ("windows", "docset/winserver2025-ps/Hyper-V/Dismount-VHD.md"),
    "Get-VHD": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VHD.md"),
    "Get-VM": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VM.md"),
    "Get-VMHardDiskDrive": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMHardDiskDrive.md"),
    "Get-VMSnapshot": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMSnapshot.md"),
    "Mount-VHD": ("windows", "docset/winserver2025-ps/Hyper-V/Mount-VHD.md"),
    "Remove-VMSnapshot": ("windows", "docset/winserver2025-ps/Hyper-V/Remove-VMSnapshot.md"),
    "Rename-VMSnapshot": ("windows", "docset/winserver2025-ps/Hyper-V/Rename-VMSnapshot.md"),
    "Restore-VMSnapshot": ("windows", "docset/winserver2025-ps/Hyper-V/Restore-VMSnapshot.md"),
    "Set-VM": ("windows", "docset/winserver2025-ps/Hyper-V/Set-VM.md"),
    # restores to a new VM or over the original
    "Add-VMHardDiskDrive": ("windows", "docset/winserver2025-ps/Hyper-V/Add-VMHardDiskDrive.md"),
    "Add-VMNetworkAdapter": ("windows", "docset/winserver2025-ps/Hyper-V/Add-VMNetworkAdapter.md"),
    "Add-VMScsiController": ("windows", "docset/winserver2025-ps/Hyper-V/Add-VMScsiController.md"),
    "Get-VMFirmware": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMFirmware.md"),
    "Get-VMHost": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMHost.md"),
    "Get-VMNetworkAdapter": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMNetworkAdapter.md"),
    "Get-VMScsiController": ("windows", "docset/winserver2025-ps/Hyper-V/Get-VMScsiController.md"),
    "New-VHD": ("windows", "docset/winserver2025-ps/Hyper-V/New-VHD.md"),
    "New-VM": ("windows", "docset/winserver2025-ps/Hyper-V/New-VM.md"),
    "Remove-VM": ("windows", "docset/winserver2025-ps/Hyper-V/Remove-VM.md"),
    "Remove-VMNetworkAdapter": ("windows", "docset/winserver2025-ps/Hyper-V/Remove-VMNetworkAdapter.md"),
    "Set-VMFirmware": ("windows", "docset/winserver2025-ps/Hyper-V/Set-VMFirmware.md"),
    "Set-VMHardDiskDrive": ("windows", "docset/winserver2025-ps/Hyper-V/Set-VMHardDiskDrive.md"),
    "Start-VM": ("windows", "docset/winserver2025-ps/Hyper-V/Start-VM.md"),
    "Get-Disk": ("windows", "docset/winserver2025-ps/Storage/Get-Disk.md"),
    "Get-CimAssociatedInstance": ("core", "reference/5.1/CimCmdlets/Get-CimAssociatedInstance.md"),
    "Get-CimClass": ("core", "reference/5.1/CimCmdlets/Get-CimClass.md"),
    "Get-CimInstance": ("core", "reference/5.1/CimCmdlets/Get-CimInstance.md"),
    "Invoke-CimMethod": ("core", "reference/5.1/CimCmdlets/Invoke-CimMethod.md"),
    "New-CimInstance": ("core", "reference/5.1/CimCmdlets/New-CimInstance.md"),
    "ForEach-Object": ("core", "reference/5.1/Microsoft.PowerShell.Core/ForEach-Object.md"),
    "Where-Object": ("core", "reference/5.1/Microsoft.PowerShell.Core/Where-Object.md"),
    "ConvertFrom-Json": ("core", "reference/5.1/Microsoft.PowerShell.Utility/ConvertFrom-Json.md"),
    "ConvertTo-Json": ("core", "reference/5.1/Microsoft.PowerShell.Utility/ConvertTo-Json.md"),
    "New-Object": ("core", "reference/5.1/Microsoft.PowerShell.Utility/New-Object.md"),
    "Select-Object": ("core", "reference/5.1/Microsoft.PowerShell.Utility/Select-Object.md"),
    "Sort-Object": ("core", "reference/5.1/Microsoft.PowerShell.Utility/Sort-Object.md"),
    "Start-Sleep": ("core", "reference/5.1/Microsoft.PowerShell.Utility/Start-Sleep.md"),
}

# CIM classes: (mirror key, page); methods are read from the pages the class page links to.
CIM_CLASSES: dict[str, tuple[str, str]] = {
    "Msvm_ComputerSystem": ("win32", "desktop-src/HyperV_v2/msvm-computersystem.md"),
    "Msvm_ConcreteJob": ("win32", "desktop-src/HyperV_v2/msvm-concretejob.md"),
    "Msvm_ImageManagementService": ("win32", "desktop-src/HyperV_v2/msvm-imagemanagementservice.md"),
    "Msvm_ResourceAllocationSettingData": ("win32", "desktop-src/HyperV_v2/msvm-resourceallocationsettingdata.md"),
    "Msvm_StorageAllocationSettingData": ("win32", "desktop-src/HyperV_v2/msvm-storageallocationsettingdata.md"),
    "Msvm_VirtualSystemReferencePoint": ("win32", "desktop-src/HyperV_v2/msvm-virtualsystemreferencepoint.md"),
    "Msvm_VirtualSystemReferencePointService": ("win32", "desktop-src/HyperV_v2/msvm-virtualsystemreferencepointservice.md"),
    "Msvm_VirtualSystemSettingData": ("win32", "desktop-src/HyperV_v2/msvm-virtualsystemsettingdata.md"),
    "Msvm_VirtualSystemSnapshotService": ("win32", "desktop-src/HyperV_v2/msvm-virtualsystemsnapshotservice.md"),
    "Msvm_VirtualSystemSnapshotSettingData": ("win32", "desktop-src/HyperV_v2/msvm-virtualsystemsnapshotsettingdata.md"),
    "CIM_ConcreteJob": ("win32", "desktop-src/HyperV_v2/cim-concretejob.md"),
    "CIM_Job": ("win32", "desktop-src/HyperV_v2/cim-job.md"),
    "MSFT_Disk": ("driver", "windows-driver-docs-pr/storage/msft-disk.md"),
}
# Only the methods the scripts may call are recorded (a class page links dozens).
CIM_METHODS = {"CreateSnapshot", "ConvertToReferencePoint", "DestroySnapshot", "DestroyReferencePoint",
               "GetVirtualDiskChanges"}

REPOS = {"windows": "MicrosoftDocs/windows-powershell-docs", "core": "MicrosoftDocs/PowerShell-Docs",
         "win32": "MicrosoftDocs/win32", "driver": "MicrosoftDocs/windows-driver-docs"}


class Mirror:
    """One git mirror, read at HEAD."""

    def __init__(self, key: str, gitdir: str) -> None:
        self.key, self.gitdir, self.repo = key, gitdir, REPOS[key]
        self.commit = self._git("rev-parse", "HEAD").strip()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", self.gitdir, *args], check=True, capture_output=True,
                              text=True).stdout

    def read(self, path: str) -> str:
        return self._git("show", f"HEAD:{path}")

    def source(self, path: str, text: str) -> dict[str, str]:
        found = re.search(r"^ms\.date:\s*(\S+)", text, re.M)
        return {"repo": self.repo, "path": path, "commit": self.commit, "ms_date": found.group(1) if found else ""}


# -- platyPS cmdlet pages -----------------------------------------------------------------------------------

def _sections(text: str, level: str) -> list[tuple[str, str]]:
    """Split ``text`` at headings of ``level`` ('##' or '###'); return (heading, body) pairs."""
    parts = re.split(rf"^{level} (.*)$", text, flags=re.M)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _yaml_blocks(body: str) -> list[dict[str, str]]:
    blocks = []
    for block in re.findall(r"```yaml\n(.*?)```", body, re.S):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        blocks.append(fields)
    return blocks


def _type_name(raw: str) -> str:
    return raw.split(".")[-1] if raw.startswith("System.") else raw


def parse_cmdlet(name: str, text: str) -> dict[str, t.Any]:
    """The facts of one platyPS page: parameter sets, parameters, common parameters, output types."""
    top = dict(_sections(text, "##"))
    sets, default = [], None
    for heading, _body in _sections(top["SYNTAX"], "###"):
        set_name = heading.replace("(Default)", "").strip()
        sets.append(set_name)
        if "(Default)" in heading or default is None:
            default = set_name
    if not sets:  # one syntax block without a heading: PowerShell's name for the only set
        sets, default = ["__AllParameterSets"], "__AllParameterSets"
    parameters: dict[str, t.Any] = {}
    for heading, body in _sections(top["PARAMETERS"], "###"):
        if not heading.startswith("-"):
            continue
        pname = heading[1:].strip()
        entry: dict[str, t.Any] = {"sets": {}}
        for block in _yaml_blocks(body):
            entry["type"] = _type_name(block.get("Type", ""))
            aliases = [a.strip() for a in block.get("Aliases", "").split(",") if a.strip()]
            entry["aliases"] = aliases
            accepted = [a.strip() for a in block.get("Accepted values", "").split(",") if a.strip()]
            if accepted:
                entry["accepted_values"] = accepted
            pipeline = block.get("Accept pipeline input", "False")
            entry["pipeline"] = sorted(re.findall(r"ByValue|ByPropertyName", pipeline))
            position = block.get("Position", "Named")
            in_sets = [s.strip() for s in block.get("Parameter Sets", "(All)").split(",")]
            for set_name in sets if in_sets == ["(All)"] else in_sets:
                entry["sets"][set_name] = {"required": block.get("Required", "False").lower() == "true",
                                           "position": None if position.lower() == "named" else int(position)}
        entry["switch"] = entry.get("type", "").endswith("SwitchParameter")
        parameters[pname] = entry
    common = re.findall(r"-(\w+)", re.search(r"common parameters:(.*?)\.\s", top.get("PARAMETERS", ""), re.S)
                        .group(1)) if "common parameters:" in top.get("PARAMETERS", "") else []
    outputs = []
    for heading, body in _sections(top.get("OUTPUTS", ""), "###"):
        names = [heading] if heading and heading != "None" else []
        names += re.findall(r"\*\*([\w.]+)\*\*", body) if not heading else []
        outputs.append({"type": names[0] if names else "None",
                        "when": "PassThru" if re.search(r"pass ?thru", body, re.I) else "always"})
    return {"default_set": default, "sets": sets, "parameters": parameters, "common_parameters": common,
            "outputs": outputs}


# -- win32 CIM class and method pages --------------------------------------------------------------------------

_MOF_TYPE = r"(?:[A-Za-z_][\w]*)"


def parse_class(text: str) -> dict[str, t.Any]:
    block = re.search(r"```\s*(?:syntax|mof)\s*\n(.*?)```", text, re.S).group(1)
    head = re.search(r"class\s+(\w+)\s*(?::\s*(\w+))?", block)
    properties = {}
    declaration = rf"^\s*({_MOF_TYPE})\s+(REF\s+)?(\w+)(\[\])?\s*(?:=[^;]*)?;"
    for ptype, pref, pname, parray in re.findall(declaration, block, re.M):
        properties[pname] = {"type": ptype + (" REF" if pref else "") + ("[]" if parray else "")}
        values = documented_values(text, pname)
        if values:
            properties[pname]["values"] = values
    listing = re.search(r"^### Methods$(.*?)^###? ", text, re.S | re.M)
    listing_text = listing.group(1) if listing else ""
    links = re.findall(r"\[\*\*(\w+)\*\*\]\(([\w-]+\.md)\)", listing_text)
    links += [(n, p) for p, n in re.findall(r"<a href=\"([\w-]+\.md)\"><strong>(\w+)</strong></a>", listing_text)]
    namespace = re.search(r"^\|\s*Namespace(?:<br/>)?\s*\|\s*([^|<]+?)\s*(?:<br/>)?\s*\|", text, re.M)
    return {"name": head.group(1), "base": head.group(2), "properties": properties, "method_pages": dict(links),
            "namespace": namespace.group(1).replace("\\\\", "\\") if namespace else None}


def documented_values(text: str, name: str) -> list[str | int] | None:
    """The values a property's section lists (quoted strings, or 'Name (N)' numbers), when the list is closed.

    None when the section lists none, or allows a range (``(32768..65535)``, ``(..)``): then any value may occur.
    """
    section = re.search(rf"^\*\*{name}\*\*\s*$(.*?)(?=^\*\*\w+\*\*\s*$|^## )", text, re.S | re.M)
    if not section:
        return None
    body = "\n".join(line for line in section.group(1).splitlines() if "Qualifiers" not in line)
    if re.search(r"\(\s*\d*\s*\.\.\s*\d*\s*\)", body):
        return None
    strings = re.findall(r"<dt>\s*\"([^\"]+)\"\s*</dt>", body)
    numbers = [int(n) for n in re.findall(r"\*\*[^*\n]+\*\*\s*\((\d+)\)", body)]
    return strings or numbers or None


def parse_method(text: str) -> list[dict[str, t.Any]]:
    block = re.search(r"```mof\s*\n(.*?)```", text, re.S).group(1)
    params = []
    for qualifiers, ptype, pref, pname, parray in re.findall(
            rf"\[([^\]]*)\]\s+({_MOF_TYPE})\s+(REF\s+)?(\w+)(\[\])?", block):
        flags = {q.strip().lower() for q in qualifiers.split(",")}
        params.append({"name": pname, "type": ptype, "ref": bool(pref), "array": bool(parray),
                       "in": "in" in flags, "out": "out" in flags})
    return params


def build(mirrors: dict[str, Mirror]) -> dict[str, t.Any]:
    cmdlets = {}
    for name, (key, path) in sorted(CMDLETS.items()):
        text = mirrors[key].read(path)
        cmdlets[name] = {"source": mirrors[key].source(path, text), **parse_cmdlet(name, text)}
    classes = {}
    for name, (key, path) in sorted(CIM_CLASSES.items()):
        win32 = mirrors[key]
        text = win32.read(path)
        parsed = parse_class(text)
        assert parsed["name"] == name, (name, parsed["name"])
        methods = {}
        for method, page in sorted(parsed.pop("method_pages").items()):
            if method in CIM_METHODS:
                mpath = os.path.join(os.path.dirname(path), page)
                mtext = win32.read(mpath)
                methods[method] = {"source": win32.source(mpath, mtext), "parameters": parse_method(mtext)}
        classes[name] = {"source": win32.source(path, text), "base": parsed["base"], "namespace": parsed["namespace"],
                         "properties": parsed["properties"], "methods": methods}
    return {"generated_by": "tests/hyperv_ref/build_reference.py",
            "mirrors": {m.repo: m.commit for m in mirrors.values()},
            "cmdlets": cmdlets, "cim_classes": classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--psdocs-windows", required=True)
    parser.add_argument("--psdocs-core", required=True)
    parser.add_argument("--win32", required=True)
    parser.add_argument("--driver-docs", required=True)
    parser.add_argument("--out", default=os.path.join(HERE, "reference.json"))
    args = parser.parse_args()
    mirrors = {"windows": Mirror("windows", args.psdocs_windows), "core": Mirror("core", args.psdocs_core),
               "win32": Mirror("win32", args.win32), "driver": Mirror("driver", args.driver_docs)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(build(mirrors), handle, indent=1, sort_keys=True)
        handle.write("\n")


if __name__ == "__main__":
    main()
