# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""A stateful stand-in for VirtualBox's ``VBoxManage`` (no VirtualBox can run on this machine).

It answers the subcommands, options, ``--machinereadable`` formats, messages and exit codes the virtualbox provider
uses, as VirtualBox 7's own sources print them (src/VBox/Frontends/VBoxManage/VBoxManageSnapshot.cpp,
VBoxManageInfo.cpp, VBoxManageDisk.cpp, VBoxManageList.cpp, VBoxManageMisc.cpp, VBoxManageStorageController.cpp),
read with the project's search tool. Written from those, not copied.

State lives in ``$VBOX_USER_HOME`` (the variable VirtualBox itself uses for its configuration folder): ``state.json``
(machines, snapshots, the media registry) under a lock, one ``<name>.vbox`` settings file per machine with the
subset of VirtualBox's settings XML the provider reads (snapshot tree with timeStamp and stateFile), and
``argv.log``, one JSON line per call with the exact argv received.

Disk data is real: base media are whatever image file was attached (raw, VDI, VMDK, qcow2, read with qemu-img);
every differencing medium VirtualBox would create as ``Snapshots/{uuid}.vdi`` is kept as a qcow2 overlay on its
parent under that name (qemu-img cannot write VDI differencing images), and reported with the storage format
VirtualBox would report (VDI). Merges on snapshot deletion are ``qemu-img commit``; clonemedium flattens the chain
with ``qemu-img convert``. A "running" machine has no guest: tests write into its current medium with qemu-io.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import subprocess
import sys
import typing as t
import uuid as uuidlib

QEMU_TO_VBOX = {"vdi": "VDI", "vmdk": "VMDK", "raw": "RAW", "qcow2": "QCOW", "vhdx": "VHDX", "vpc": "VHD"}
VBOX_TO_QEMU = {v: k for k, v in QEMU_TO_VBOX.items()}
CTL_TYPES = {"sata": "IntelAhci", "ide": "PIIX4", "scsi": "LsiLogic", "sas": "LsiLogicSas", "pcie": "NVMe",
             "virtio": "VirtioSCSI", "floppy": "I82078", "usb": "USB"}
VERSION = "7.1.4r165100"  # what this fake answers to --version: the VirtualBox release its formats follow
ONLINE = ("running", "paused", "livesnapshotting", "onlinesnapshotting")


class Fail(Exception):
    """An error VBoxManage prints and exits 1 with (COM error with details and context)."""

    def __init__(self, msg: str, code: str = "VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)", component: str = "VirtualBoxWrap",
                 interface: str = "IVirtualBox", context: str = "", exit_code: int = 1) -> None:
        super().__init__(msg)
        self.msg, self.code, self.component, self.interface, self.context = msg, code, component, interface, context
        self.exit_code = exit_code


class Syntax(Exception):
    """A syntax error: VBoxManage prints the message (and usage) and exits 2 (RTEXITCODE_SYNTAX)."""


def now_iso() -> str:
    """A settings-file timestamp: VirtualBox writes whole seconds, UTC."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sav_name() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S-%f000Z.sav")


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def image_info(path: str) -> dict[str, t.Any]:
    return json.loads(qemu_img("info", "-U", "--output=json", path))


def machine_readable(name: str, value: str, quote_name: bool = False) -> str:
    """One ``name="value"`` line, escaped as VBoxManageInfo.cpp's outputMachineReadableString does."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"')
    quote_name = quote_name or "=" in name
    key = f'"{esc(name)}"' if quote_name else esc(name)
    return f'{key}="{esc(value)}"\n'


class Fake:
    def __init__(self, home: str) -> None:
        self.home = home
        self.path = os.path.join(home, "state.json")
        self.out: list[str] = []
        self.err: list[str] = []
        self.s: dict[str, t.Any] = {"vms": {}, "media": {}, "unregistered": {}}

    # -- state ------------------------------------------------------------------------------------

    def load(self) -> None:
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as fh:
                self.s = json.load(fh)

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.s, fh, indent=1)
        os.replace(tmp, self.path)
        for vm in self.s["vms"].values():
            self.write_settings(vm)

    def print(self, text: str) -> None:
        self.out.append(text)

    def progress(self) -> None:
        self.err.append("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n")

    # -- lookups ----------------------------------------------------------------------------------

    def vm(self, ref: str, context: str = "FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())") -> dict:
        key = ref.strip("{}").lower()
        if key in self.s["vms"]:
            return self.s["vms"][key]
        for vm in self.s["vms"].values():
            if vm["name"] == ref:
                return vm
        raise Fail(f"Could not find a registered machine named '{ref}'", context=context)

    def snapshot(self, vm: dict, ref: str) -> dict:
        key = ref.strip("{}").lower()
        if key in vm["snapshots"]:
            return vm["snapshots"][key]
        for snap in self._snapshots_in_order(vm):
            if snap["name"] == ref:
                return snap
        try:
            uuidlib.UUID(key)
            msg = f"Could not find a snapshot with UUID {{{key}}}"
        except ValueError:
            msg = f"Could not find a snapshot named '{ref}'"
        raise Fail(msg, component="SessionMachine", interface="IMachine",
                   context="FindSnapshot(Bstr(a->argv[2]).raw(), pSnapshot.asOutParam())")

    def _snapshots_in_order(self, vm: dict) -> list[dict]:
        """Depth first from the root, children in creation order (how IMachine.findSnapshot walks)."""
        found: list[dict] = []

        def walk(sid: str) -> None:
            snap = vm["snapshots"][sid]
            found.append(snap)
            for child in snap["children"]:
                walk(child)
        roots = [s["uuid"] for s in vm["snapshots"].values() if s["parent"] is None]
        for root in roots:
            walk(root)
        return found

    def medium(self, ref: str, kind: str = "disk") -> dict:
        key = ref.strip("{}").lower()
        if key in self.s["media"]:
            return self.s["media"][key]
        path = os.path.abspath(ref)
        for med in self.s["media"].values():
            if med["location"] == path:
                return med
        if os.path.exists(path):
            return self.open_medium(path)
        raise Fail(f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
                   code="VBOX_E_FILE_ERROR (0x80bb0004)", component="MediumWrap", interface="IMedium",
                   context="OpenMedium(Bstr(pszFilenameOrUuid).raw(), enmDevType, enmAccessMode, "
                           "fForceNewUuidOnOpen, pMedium.asOutParam())")

    def open_medium(self, path: str) -> dict:
        info = image_info(path)
        uid = str(uuidlib.uuid4())
        med = {"uuid": uid, "location": path, "format": QEMU_TO_VBOX.get(info["format"], info["format"].upper()),
               "qemu_format": info["format"], "parent": None, "size": int(info["virtual-size"]), "type": "normal"}
        self.s["media"][uid] = med
        return med

    def children_of(self, uid: str) -> list[dict]:
        return [m for m in self.s["media"].values() if m["parent"] == uid]

    def users(self, uid: str) -> list[tuple[dict, list[dict]]]:
        """(machine, [snapshots]) that use this medium: the current state (empty list) or snapshots."""
        found = []
        for vm in self.s["vms"].values():
            snaps = [s for s in self._snapshots_in_order(vm) if uid in s["attach"].values()]
            if uid in vm["attach"].values() or snaps:
                found.append((vm, snaps))
        return found

    def new_diff(self, vm: dict, parent: dict) -> dict:
        uid = str(uuidlib.uuid4())
        folder = vm["snapfolder"]
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{{{uid}}}.vdi")
        qemu_img("create", "-q", "-f", "qcow2", "-F", parent["qemu_format"], "-b", parent["location"], path)
        med = {"uuid": uid, "location": path, "format": "VDI", "qemu_format": "qcow2", "parent": parent["uuid"],
               "size": parent["size"], "type": "normal"}
        self.s["media"][uid] = med
        return med

    # -- settings file (the subset of VirtualBox's .vbox XML the provider reads) -----------------

    def write_settings(self, vm: dict) -> None:
        from xml.sax.saxutils import quoteattr, escape  # pylint: disable=import-outside-toplevel

        def snap_xml(sid: str, indent: str) -> str:
            s = vm["snapshots"][sid]
            attrs = f'uuid="{{{s["uuid"]}}}" name={quoteattr(s["name"])} timeStamp="{s["timestamp"]}"'
            if s["state_file"]:
                attrs += f" stateFile={quoteattr(s['state_file'])}"
            body = f"{indent}  <Description>{escape(s['description'])}</Description>\n" if s["description"] else ""
            if s["children"]:
                body += f"{indent}  <Snapshots>\n"
                body += "".join(snap_xml(c, indent + "    ") for c in s["children"])
                body += f"{indent}  </Snapshots>\n"
            return f"{indent}<Snapshot {attrs}>\n{body}{indent}</Snapshot>\n"

        current = f' currentSnapshot="{{{vm["current"]}}}"' if vm["current"] else ""
        roots = [s["uuid"] for s in vm["snapshots"].values() if s["parent"] is None]
        text = ('<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
                f'  <Machine uuid="{{{vm["uuid"]}}}" name={quoteattr(vm["name"])} OSType={quoteattr(vm["ostype"])}'
                f'{current} snapshotFolder="Snapshots" lastStateChange="{vm["state_change"]}">\n'
                + "".join(snap_xml(r, "    ") for r in roots)
                + "  </Machine>\n</VirtualBox>\n")
        os.makedirs(os.path.dirname(vm["cfg"]), exist_ok=True)
        with open(vm["cfg"], "w", encoding="utf-8") as fh:
            fh.write(text)

    # -- commands ---------------------------------------------------------------------------------

    def run(self, argv: list[str]) -> int:
        if not argv:
            raise Syntax("No command specified")
        cmd, rest = argv[0], argv[1:]
        if cmd in ("--version", "-v", "-version", "-V"):
            self.print(f"{VERSION}\n")
            return 0
        handler = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise Syntax(f"Invalid command '{cmd}'")
        return handler(rest)

    @staticmethod
    def options(args: list[str], spec: dict[str, bool]) -> tuple[dict[str, t.Any], list[str]]:
        """Parse ``--opt value`` / ``--opt=value`` / flags like RTGetOpt; return (options, positional)."""
        opts: dict[str, t.Any] = {}
        pos: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            name, _eq, inline = arg.partition("=")
            if name in spec:
                if spec[name]:
                    if inline:
                        opts[name] = inline
                    else:
                        if i + 1 >= len(args):
                            raise Syntax(f"Option '{name}' requires a value")
                        i += 1
                        opts[name] = args[i]
                else:
                    opts[name] = True
            elif arg.startswith("-") and len(arg) > 1:
                raise Syntax(f"Unknown option: {arg}")
            else:
                pos.append(arg)
            i += 1
        return opts, pos

    def cmd_list(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--long": False, "-l": False, "--sorted": False, "-s": False})
        if len(pos) != 1:
            raise Syntax("Missing or too many parameters")
        what = pos[0]
        if what in ("vms", "runningvms"):
            for vm in self.s["vms"].values():
                if what == "vms" or vm["state"] in ONLINE:
                    self.print(f'"{vm["name"]}" {{{vm["uuid"]}}}\n')
        elif what == "hdds":
            long = bool(opts.get("--long") or opts.get("-l"))

            def walk(med: dict, parent: str) -> None:
                self.print_medium(med, parent, long)
                self.print("\n")
                for child in self.children_of(med["uuid"]):
                    walk(child, child["parent"])
            for med in list(self.s["media"].values()):
                if med["parent"] is None or med["parent"] not in self.s["media"]:
                    walk(med, "base")
        else:
            raise Syntax(f"Unknown subcommand: {what}")
        return 0

    def print_medium(self, med: dict, parent: str, long: bool) -> None:
        state = "created" if os.path.exists(med["location"]) else "inaccessible"
        lines = [f"UUID:           {med['uuid']}\n", f"Parent UUID:    {parent}\n", f"State:          {state}\n"]
        if long and state == "inaccessible":
            lines.append(f"Access Error:   Could not open the medium '{med['location']}'.\n"
                         f"VD: error VERR_FILE_NOT_FOUND opening image file '{med['location']}' (VERR_FILE_NOT_FOUND)\n")
        differencing = parent not in ("base", "none")
        lines.append(f"Type:           normal ({'differencing' if differencing else 'base'})\n")
        if long and differencing:
            lines.append("Auto-Reset:     off\n")
        lines.append(f"Location:       {med['location']}\n")
        lines.append(f"Storage format: {med['format']}\n")
        if long:
            lines.append(f"Format variant: {'differencing' if differencing else 'dynamic'} default\n")
        lines.append(f"Capacity:       {med['size'] >> 20} MBytes\n")
        if long:
            on_disk = os.path.getsize(med["location"]) if state == "created" else 0
            lines.append(f"Size on disk:   {on_disk >> 20} MBytes\n")
        lines.append("Encryption:     disabled\n")
        if long:
            first = True
            for vm, snaps in self.users(med["uuid"]):
                label = "In use by VMs:  " if first else "                "
                extra = "".join(f" [{s['name']} (UUID: {s['uuid']})]" for s in snaps)
                lines.append(f"{label}{vm['name']} (UUID: {vm['uuid']}){extra}\n")
                first = False
            first = True
            for child in self.children_of(med["uuid"]):
                lines.append(f"{'Child UUIDs:    ' if first else '                '}{child['uuid']}\n")
                first = False
        self.print("".join(lines))

    def cmd_showmediuminfo(self, args: list[str]) -> int:
        _opts, pos = self.options(args, {})
        if pos and pos[0] in ("disk", "dvd", "floppy"):
            pos = pos[1:]
        if len(pos) != 1:
            raise Syntax("Medium name or UUID required")
        med = self.medium(pos[0])
        self.print_medium(med, med["parent"] or "base", True)
        self.save()
        return 0

    def cmd_showvminfo(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--machinereadable": False, "--details": False, "--log": True,
                                        "--password-id": True, "--password": True})
        if len(pos) != 1:
            raise Syntax("VM name or UUID required")
        vm = self.vm(pos[0], context="FindMachine(Bstr(VMNameOrUuid).raw(), machine.asOutParam())")
        if not opts.get("--machinereadable"):
            self.print(f"Name:                        {vm['name']}\nUUID:                        {vm['uuid']}\n"
                       f"Config file:                 {vm['cfg']}\nState:                       {vm['state']}\n")
            return 0
        out = [machine_readable("name", vm["name"]), 'encryption="disabled"\n', machine_readable("groups", "/"),
               'platformArchitecture="x86"\n', machine_readable("ostype", vm["ostype"]),
               machine_readable("UUID", vm["uuid"]), machine_readable("CfgFile", vm["cfg"]),
               machine_readable("SnapFldr", vm["snapfolder"]),
               machine_readable("LogFldr", os.path.join(os.path.dirname(vm["cfg"]), "Logs")),
               f"memory={vm['memory']}\n", f"cpus={vm['cpus']}\n",
               f'VMState="{vm["state"]}"\n', f'VMStateChangeTime="{vm["state_change"]}"\n']
        if vm.get("state_file"):
            out.append(machine_readable("VMStateFile", vm["state_file"]))
        for i, ctl in enumerate(vm["controllers"]):
            out += [machine_readable(f"storagecontrollername{i}", ctl["name"]),
                    machine_readable(f"storagecontrollertype{i}", ctl["type"]),
                    f'storagecontrollerinstance{i}="0"\n', f'storagecontrollermaxportcount{i}="30"\n',
                    f'storagecontrollerportcount{i}="{ctl["ports"]}"\n', f'storagecontrollerbootable{i}="on"\n']
        for ctl in vm["controllers"]:
            for port in range(ctl["ports"]):
                for device in range(2 if ctl["bus"] == "ide" else 1):
                    key = f"{ctl['name']}|{port}|{device}"
                    uid = vm["attach"].get(key)
                    slot = f"{ctl['name']}-{port}-{device}"
                    if uid is None:
                        out.append(machine_readable(slot, "none", True))
                        continue
                    med = self.s["media"][uid]
                    out.append(machine_readable(slot, med["location"], True))
                    out.append(machine_readable(f"{ctl['name']}-ImageUUID-{port}-{device}", uid, True))
                    if ctl["name"].lower() in ("sata", "usb"):
                        out.append(machine_readable(f"{ctl['name']}-hot-pluggable-{port}-{device}", "off", True))
                    out.append(machine_readable(f"{ctl['name']}-nonrotational-{port}-{device}", "off", True))
                    out.append(machine_readable(f"{ctl['name']}-discard-{port}-{device}", "off", True))
        self.print("".join(out))
        self.print(self.snapshot_lines(vm))
        return 0

    def snapshot_lines(self, vm: dict) -> str:
        """showSnapshots() in machine-readable form: names and descriptions printed without escaping."""
        lines: list[str] = []

        def walk(sid: str, prefix: str) -> None:
            snap = vm["snapshots"][sid]
            lines.append(f'SnapshotName{prefix}="{snap["name"]}"\n')
            lines.append(f'SnapshotUUID{prefix}="{snap["uuid"]}"\n')
            if snap["description"]:
                lines.append(f'SnapshotDescription{prefix}="{snap["description"]}"\n')
            if vm["current"] == sid:
                lines.append(f'CurrentSnapshotName="{snap["name"]}"\n')
                lines.append(f'CurrentSnapshotUUID="{snap["uuid"]}"\n')
                lines.append(f'CurrentSnapshotNode="SnapshotName{prefix}"\n')
            for index, child in enumerate(snap["children"]):
                walk(child, f"{prefix}-{index + 1}")
        roots = [s["uuid"] for s in vm["snapshots"].values() if s["parent"] is None]
        if roots:
            walk(roots[0], "")
        return "".join(lines)

    # -- snapshot ---------------------------------------------------------------------------------

    def cmd_snapshot(self, args: list[str]) -> int:
        if len(args) < 2:
            raise Syntax("Not enough parameters")
        vm = self.vm(args[0], context="FindMachine(bstrMachine.raw(), pMachine.asOutParam())")
        sub, rest = args[1], args[2:]
        if sub == "take":
            return self.snapshot_take(vm, rest)
        if sub in ("delete", "restore", "restorecurrent"):
            if sub == "restorecurrent":
                if rest:
                    raise Syntax("Too many arguments")
                if not vm["current"]:
                    self.print("This machine does not have any snapshots\n")
                    return 1
                snap = vm["snapshots"][vm["current"]]
            else:
                if len(rest) != 1:
                    raise Syntax("Expecting snapshot name only")
                snap = self.snapshot(vm, rest[0])
            verb = "Deleting" if sub == "delete" else "Restoring"
            self.print(f"{verb} snapshot '{snap['name']}' ({snap['uuid']})\n")
            if sub == "delete":
                self.snapshot_delete(vm, snap)
            else:
                self.snapshot_restore(vm, snap)
            self.progress()
            self.save()
            return 0
        if sub == "edit":
            return self.snapshot_edit(vm, rest)
        if sub == "list":
            opts, _pos = self.options(rest, {"--details": False, "--machinereadable": False})
            if not vm["snapshots"]:
                self.print("This machine does not have any snapshots\n")
                return 1
            if opts.get("--machinereadable"):
                self.print(self.snapshot_lines(vm))
            else:
                for snap in self._snapshots_in_order(vm):
                    star = " *" if vm["current"] == snap["uuid"] else ""
                    self.print(f"   Name: {snap['name']} (UUID: {snap['uuid']}){star}\n")
            return 0
        if sub == "showvminfo":
            if len(rest) != 1:
                raise Syntax("Expecting snapshot name only")
            snap = self.snapshot(vm, rest[0])
            self.print(f"Name:                        {vm['name']}\nSnapshot:                    {snap['name']}\n")
            return 0
        raise Syntax(f"Invalid parameter '{sub}'")

    def snapshot_take(self, vm: dict, rest: list[str]) -> int:
        if not rest:
            raise Syntax("Missing snapshot name")
        name = rest[0]
        opts, pos = self.options(rest[1:], {"--description": True, "-description": True, "-desc": True,
                                            "--pause": False, "--live": False, "--uniquename": True})
        if pos:
            raise Syntax(f"Invalid parameter '{pos[0]}'")
        if "--uniquename" in opts:
            flags = [f.strip().lower() for f in opts["--uniquename"].split(",") if f.strip()]
            if any(f not in ("number", "timestamp", "space", "force") for f in flags):
                raise Fail(f"Invalid unique name description '{opts['--uniquename']}'", exit_code=1)
            names = {s["name"] for s in vm["snapshots"].values()}
            if name in names or "force" in flags:
                count = 1 if "force" in flags else 2
                while True:
                    candidate = f"{name}{' ' if 'space' in flags else ''}{count}"
                    if candidate not in names:
                        name = candidate
                        break
                    count += 1
        desc = opts.get("--description") or opts.get("-description") or opts.get("-desc") or ""
        if vm["state"] not in ("poweroff", "saved", "aborted", "running", "paused"):
            raise Fail(f"Cannot take a snapshot of the machine while it is changing the state (machine state: "
                       f"{vm['state']})", code="VBOX_E_INVALID_VM_STATE (0x80bb0002)", component="SessionMachine",
                       interface="IMachine")
        sid = str(uuidlib.uuid4())
        stamp = now_iso()
        state_file = ""
        if vm["state"] in ONLINE or vm["state"] == "saved":
            state_file = os.path.join(vm["snapfolder"], sav_name())
            os.makedirs(vm["snapfolder"], exist_ok=True)
            with open(state_file, "wb") as fh:
                fh.write(b"fake saved state of " + vm["name"].encode())
        frozen = dict(vm["attach"])
        for key, uid in frozen.items():
            vm["attach"][key] = self.new_diff(vm, self.s["media"][uid])["uuid"]
        snap = {"uuid": sid, "name": name, "description": desc, "timestamp": stamp, "parent": vm["current"],
                "children": [], "state_file": state_file, "attach": frozen, "online": vm["state"] in ONLINE,
                "live": bool(opts.get("--live"))}
        vm["snapshots"][sid] = snap
        if vm["current"]:
            vm["snapshots"][vm["current"]]["children"].append(sid)
        vm["current"] = sid
        self.progress()
        self.print(f"Snapshot taken. UUID: {sid}\n")
        self.save()
        return 0

    def snapshot_delete(self, vm: dict, snap: dict) -> None:
        if len(snap["children"]) > 1:
            raise Fail(f"Snapshot '{snap['name']}' of the machine '{vm['name']}' cannot be deleted, because it has "
                       f"{len(snap['children'])} child snapshots, which is more than the one snapshot allowed for "
                       f"deletion", code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="SessionMachine",
                       interface="IMachine", context="DeleteSnapshot(bstrSnapGuid.raw(), pProgress.asOutParam())")
        for uid in snap["attach"].values():
            kids = self.children_of(uid)
            if len(kids) > 1:
                med = self.s["media"][uid]
                raise Fail(f"Hard disk '{med['location']}' has more than one child hard disk ({len(kids)})",
                           code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="SessionMachine",
                           interface="IMachine", context="DeleteSnapshot(bstrSnapGuid.raw(), pProgress.asOutParam())")
        for uid in set(snap["attach"].values()):
            kids = self.children_of(uid)
            if not kids:
                # i_prepareDeleteSnapshotMedium: a differencing image without children is deleted, a base kept.
                med = self.s["media"][uid]
                others = [v for v, snaps in self.users(uid) if uid in v["attach"].values()
                          or any(s["uuid"] != snap["uuid"] for s in snaps)]
                if med["parent"] is not None and not others:
                    if os.path.exists(med["location"]):
                        os.unlink(med["location"])
                    del self.s["media"][uid]
                continue
            child = kids[0]
            parent = self.s["media"][uid]
            # Forward merge: the child's changes go into the frozen medium, which takes the child's place.
            qemu_img("commit", "-q", child["location"])
            for grandchild in self.children_of(child["uuid"]):
                qemu_img("rebase", "-q", "-u", "-F", parent["qemu_format"], "-b", parent["location"],
                         grandchild["location"])
                grandchild["parent"] = uid
            for other in self.s["vms"].values():
                for table in [other["attach"]] + [s["attach"] for s in other["snapshots"].values()]:
                    for key, value in table.items():
                        if value == child["uuid"]:
                            table[key] = uid
            os.unlink(child["location"])
            del self.s["media"][child["uuid"]]
        if snap["state_file"] and os.path.exists(snap["state_file"]):
            os.unlink(snap["state_file"])
        parent_id = snap["parent"]
        for child_id in snap["children"]:
            vm["snapshots"][child_id]["parent"] = parent_id
        if parent_id:
            siblings = vm["snapshots"][parent_id]["children"]
            index = siblings.index(snap["uuid"])
            siblings[index:index + 1] = snap["children"]
        if vm["current"] == snap["uuid"]:
            vm["current"] = parent_id
        del vm["snapshots"][snap["uuid"]]

    def discard_current_state(self, vm: dict) -> None:
        """Drop the current state's differencing images (what restoring a snapshot throws away)."""
        used = {u for s in vm["snapshots"].values() for u in s["attach"].values()}
        for key, uid in list(vm["attach"].items()):
            med = self.s["media"][uid]
            if uid not in used and med["parent"] is not None and not self.children_of(uid):
                if os.path.exists(med["location"]):
                    os.unlink(med["location"])
                del self.s["media"][uid]

    def snapshot_restore(self, vm: dict, snap: dict) -> None:
        if vm["state"] in ONLINE:
            raise Fail(f"Cannot delete the current state of the running machine (machine state: "
                       f"{vm['state'].capitalize()})", code="VBOX_E_INVALID_VM_STATE (0x80bb0002)",
                       component="SessionMachine", interface="IMachine",
                       context="RestoreSnapshot(pSnapshot, pProgress.asOutParam())")
        self.discard_current_state(vm)
        vm["attach"] = {key: self.new_diff(vm, self.s["media"][uid])["uuid"] for key, uid in snap["attach"].items()}
        if vm.get("state_file") and os.path.exists(vm["state_file"]):
            os.unlink(vm["state_file"])
        vm["state_file"] = ""
        if snap["state_file"]:
            vm["state_file"] = os.path.join(os.path.dirname(vm["cfg"]), sav_name())
            shutil.copyfile(snap["state_file"], vm["state_file"])
            self.set_state(vm, "saved")
        else:
            self.set_state(vm, "poweroff")
        vm["current"] = snap["uuid"]

    def snapshot_edit(self, vm: dict, rest: list[str]) -> int:
        if not rest:
            raise Syntax("Missing snapshot name")
        snap = None
        i = 0
        while i < len(rest):
            arg = rest[i]
            if arg in ("--current", "-current"):
                if not vm["current"]:
                    self.print("This machine does not have any snapshots\n")
                    return 1
                snap = vm["snapshots"][vm["current"]]
            elif arg in ("--name", "-name", "-newname", "--description", "-description", "-desc"):
                if i + 1 >= len(rest):
                    raise Syntax(f"Option '{arg}' requires a value")
                if snap is None:
                    raise Fail("The object is not ready", code="E_POINTER", component="", interface="")
                i += 1
                snap["name" if "name" in arg else "description"] = rest[i]
            elif arg.startswith("-"):
                raise Syntax(f"Unknown option: {arg}")
            else:
                snap = self.snapshot(vm, arg)
            i += 1
        self.save()
        return 0

    # -- power ------------------------------------------------------------------------------------

    def set_state(self, vm: dict, state: str) -> None:
        vm["state"] = state
        vm["state_change"] = now_iso()

    def cmd_startvm(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--type": True, "--putenv": True, "-E": True})
        for ref in pos:
            vm = self.vm(ref)
            if vm["state"] in ONLINE:
                raise Fail(f"The machine '{vm['name']}' is already locked by a session (or being locked or unlocked)",
                           code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="MachineWrap",
                           interface="IMachine")
            for uid in vm["attach"].values():
                if not os.path.exists(self.s["media"][uid]["location"]):
                    raise Fail(f"Could not open the medium '{self.s['media'][uid]['location']}'",
                               code="VBOX_E_FILE_ERROR (0x80bb0004)", component="MediumWrap", interface="IMedium")
            self.print(f'Waiting for VM "{vm["name"]}" to power on...\n')
            if vm.get("state_file") and os.path.exists(vm["state_file"]):
                os.unlink(vm["state_file"])
            vm["state_file"] = ""
            self.set_state(vm, "running")
            self.print(f'VM "{vm["name"]}" has been successfully started.\n')
        self.save()
        return 0

    def cmd_controlvm(self, args: list[str]) -> int:
        if len(args) < 2:
            raise Syntax("Not enough parameters")
        vm = self.vm(args[0])
        action = args[1]
        if vm["state"] not in ONLINE:
            raise Fail(f"Machine '{vm['name']}' is not currently running", code="VBOX_E_INVALID_VM_STATE (0x80bb0002)",
                       component="", interface="", exit_code=1)
        if action == "poweroff":
            self.progress()
            self.set_state(vm, "poweroff")
        elif action == "savestate":
            self.progress()
            vm["state_file"] = os.path.join(os.path.dirname(vm["cfg"]), sav_name())
            with open(vm["state_file"], "wb") as fh:
                fh.write(b"fake saved state")
            self.set_state(vm, "saved")
        elif action in ("pause", "resume"):
            self.set_state(vm, "paused" if action == "pause" else "running")
        else:
            raise Syntax(f"Invalid parameter '{action}'")
        self.save()
        return 0

    # -- machines ---------------------------------------------------------------------------------

    def cmd_createvm(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--name": True, "--register": False, "--basefolder": True, "--ostype": True,
                                        "--uuid": True, "--default": False, "--groups": True, "--platform-architecture": True})
        if pos or "--name" not in opts:
            raise Syntax("Parameter --name is required")
        name = opts["--name"]
        base = opts.get("--basefolder") or os.path.join(self.home, "VirtualBox VMs")
        folder = os.path.join(base, name)
        cfg = os.path.join(folder, f"{name}.vbox")
        if os.path.exists(cfg):
            raise Fail(f"Machine settings file '{cfg}' already exists", code="VBOX_E_FILE_ERROR (0x80bb0004)",
                       context="CreateMachine(...)")
        uid = (opts.get("--uuid") or str(uuidlib.uuid4())).strip("{}").lower()
        vm = {"uuid": uid, "name": name, "cfg": cfg, "snapfolder": os.path.join(folder, "Snapshots"),
              "ostype": opts.get("--ostype", "Other"), "memory": 128, "cpus": 1, "state": "poweroff",
              "state_change": now_iso(), "state_file": "", "controllers": [], "attach": {}, "snapshots": {},
              "current": None}
        if opts.get("--register"):
            if any(v["name"] == name for v in self.s["vms"].values()):
                raise Fail(f"Cannot register the machine '{name}' because a machine with the same name already "
                           f"exists", code="VBOX_E_OBJECT_IN_USE (0x80bb000c)", context="RegisterMachine(machine)")
            self.s["vms"][uid] = vm
            self.print(f"Virtual machine '{name}' is created and registered.\n")
        else:
            self.s["unregistered"][cfg] = vm
            self.write_settings(vm)
            self.print(f"Virtual machine '{name}' is created.\n")
        self.print(f"UUID: {uid}\nSettings file: '{cfg}'\n")
        self.save()
        return 0

    def cmd_registervm(self, args: list[str]) -> int:
        _opts, pos = self.options(args, {"--password": True})
        if len(pos) != 1:
            raise Syntax("Incorrect number of parameters")
        cfg = os.path.abspath(pos[0])
        vm = self.s["unregistered"].pop(cfg, None)
        if vm is None:
            raise Fail(f"Could not find file for the settings file '{cfg}' (VERR_FILE_NOT_FOUND)",
                       code="VBOX_E_FILE_ERROR (0x80bb0004)", context="OpenMachine(Bstr(VMName).raw(), ...)")
        self.s["vms"][vm["uuid"]] = vm
        self.save()
        return 0

    def cmd_unregistervm(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--delete": False, "--delete-all": False})
        if len(pos) != 1:
            raise Syntax("VM name required")
        vm = self.vm(pos[0])
        if vm["state"] in ONLINE:
            raise Fail(f"Cannot unregister the machine '{vm['name']}' while it is locked",
                       code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="MachineWrap", interface="IMachine")
        del self.s["vms"][vm["uuid"]]
        if opts.get("--delete") or opts.get("--delete-all"):
            used = set(vm["attach"].values()) | {u for s in vm["snapshots"].values() for u in s["attach"].values()}
            for uid in sorted(used, key=lambda u: -self.depth(u)):
                med = self.s["media"].pop(uid, None)
                if med and os.path.exists(med["location"]):
                    os.unlink(med["location"])
            shutil.rmtree(os.path.dirname(vm["cfg"]), ignore_errors=True)
        self.save()
        return 0

    def depth(self, uid: str) -> int:
        n = 0
        while uid in self.s["media"] and self.s["media"][uid]["parent"]:
            uid = self.s["media"][uid]["parent"]
            n += 1
        return n

    def cmd_modifyvm(self, args: list[str]) -> int:
        if not args:
            raise Syntax("Not enough parameters")
        vm = self.vm(args[0])
        opts, pos = self.options(args[1:], {"--memory": True, "--cpus": True, "--ostype": True, "--name": True})
        if pos:
            raise Syntax(f"Invalid parameter '{pos[0]}'")
        if vm["state"] in ONLINE:
            raise Fail(f"The machine '{vm['name']}' is already locked for a session (or being unlocked)",
                       code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="MachineWrap", interface="IMachine")
        for key, field in (("--memory", "memory"), ("--cpus", "cpus")):
            if key in opts:
                vm[field] = int(opts[key])
        if "--ostype" in opts:
            vm["ostype"] = opts["--ostype"]
        if "--name" in opts:
            vm["name"] = opts["--name"]
        self.save()
        return 0

    def cmd_storagectl(self, args: list[str]) -> int:
        if not args:
            raise Syntax("Not enough parameters")
        vm = self.vm(args[0])
        opts, pos = self.options(args[1:], {"--name": True, "--add": True, "--controller": True, "--portcount": True,
                                            "--bootable": True, "--hostiocache": True, "--remove": False})
        if pos or "--name" not in opts:
            raise Syntax("Storage controller name not specified")
        if opts.get("--remove"):
            vm["controllers"] = [c for c in vm["controllers"] if c["name"] != opts["--name"]]
        else:
            bus = opts.get("--add", "").lower()
            if bus not in CTL_TYPES:
                raise Syntax(f"Invalid --add argument '{opts.get('--add')}'")
            if any(c["name"] == opts["--name"] for c in vm["controllers"]):
                raise Fail(f"Storage controller named '{opts['--name']}' already exists",
                           code="VBOX_E_OBJECT_IN_USE (0x80bb000c)", component="SessionMachine", interface="IMachine")
            ports = int(opts.get("--portcount", 30 if bus == "sata" else 2 if bus == "ide" else 16))
            vm["controllers"].append({"name": opts["--name"], "bus": bus, "ports": ports,
                                      "type": opts.get("--controller", CTL_TYPES[bus])})
        self.save()
        return 0

    def cmd_storageattach(self, args: list[str]) -> int:
        if not args:
            raise Syntax("Not enough parameters")
        vm = self.vm(args[0])
        opts, pos = self.options(args[1:], {"--storagectl": True, "--port": True, "--device": True, "--type": True,
                                            "--medium": True, "--mtype": True, "--nonrotational": True,
                                            "--discard": True})
        if pos or "--storagectl" not in opts:
            raise Syntax("Storage controller name not specified")
        ctl = next((c for c in vm["controllers"] if c["name"] == opts["--storagectl"]), None)
        if ctl is None:
            raise Fail(f"Could not find a storage controller named '{opts['--storagectl']}'",
                       component="SessionMachine", interface="IMachine",
                       context="GetStorageControllerByName(Bstr(pszCtl).raw(), storageCtl.asOutParam())")
        if vm["state"] in ONLINE:
            raise Fail(f"The machine '{vm['name']}' is already locked for a session (or being unlocked)",
                       code="VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)", component="MachineWrap", interface="IMachine")
        key = f"{ctl['name']}|{int(opts.get('--port', 0))}|{int(opts.get('--device', 0))}"
        medium = opts.get("--medium")
        if medium is None:
            raise Syntax("Missing --medium argument")
        if medium in ("none", "emptydrive"):
            vm["attach"].pop(key, None)
        else:
            med = self.medium(medium)
            used = [v for v, _snaps in self.users(med["uuid"]) if v["uuid"] != vm["uuid"]]
            if used and med["type"] == "normal":
                raise Fail(f"Medium '{med['location']}' is already attached to another virtual machine",
                           code="VBOX_E_OBJECT_IN_USE (0x80bb000c)", component="SessionMachine", interface="IMachine")
            vm["attach"][key] = med["uuid"]
        self.save()
        return 0

    # -- media ------------------------------------------------------------------------------------

    def cmd_createmedium(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--filename": True, "--size": True, "--sizebyte": True, "--format": True,
                                        "--variant": True, "--diffparent": True})
        if pos and pos[0] in ("disk", "hdd"):
            pos = pos[1:]
        if pos or "--filename" not in opts:
            raise Syntax("Parameters --filename is required")
        path = os.path.abspath(opts["--filename"])
        fmt = opts.get("--format", "VDI").upper()
        size = int(opts["--sizebyte"]) if "--sizebyte" in opts else int(opts.get("--size", 0)) << 20
        if os.path.exists(path):
            raise Fail(f"Failed to create medium: Medium '{path}' already exists", code="VBOX_E_FILE_ERROR (0x80bb0004)",
                       component="MediumWrap", interface="IMedium")
        qemu_img("create", "-q", "-f", VBOX_TO_QEMU[fmt], path, str(size))
        med = self.open_medium(path)
        self.progress()
        self.print(f"Medium created. UUID: {med['uuid']}\n")
        self.save()
        return 0

    def cmd_clonemedium(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--format": True, "-format": True, "--variant": True, "--existing": False,
                                        "--uuid": True})
        if pos and pos[0] in ("disk", "dvd", "floppy"):
            pos = pos[1:]
        if len(pos) != 2:
            raise Syntax("Mandatory UUID or input file parameter missing" if not pos else
                         "Mandatory output file parameter missing")
        src = self.medium(pos[0])
        if not os.path.exists(src["location"]):
            raise Fail(f"Could not open the medium '{src['location']}'", code="VBOX_E_FILE_ERROR (0x80bb0004)",
                       component="MediumWrap", interface="IMedium")
        dst = os.path.abspath(pos[1])
        fmt = (opts.get("--format") or opts.get("-format") or src["format"]).upper()
        if os.path.exists(dst) and not opts.get("--existing"):
            raise Fail(f"Failed to create the clone medium '{dst}': file already exists (VERR_ALREADY_EXISTS)",
                       code="VBOX_E_FILE_ERROR (0x80bb0004)", component="MediumWrap", interface="IMedium",
                       context="CloneTo(pDstMedium, ComSafeArrayAsInParam(l_variants), NULL, pProgress.asOutParam())")
        qemu_img("convert", "-q", "-O", VBOX_TO_QEMU[fmt], src["location"], dst)
        med = self.open_medium(dst)
        self.progress()
        self.print(f"Clone medium created in format '{fmt}'. UUID: {med['uuid']}\n")
        self.save()
        return 0

    def cmd_closemedium(self, args: list[str]) -> int:
        opts, pos = self.options(args, {"--delete": False})
        if pos and pos[0] in ("disk", "dvd", "floppy"):
            pos = pos[1:]
        if len(pos) != 1:
            raise Syntax("No medium specified")
        key = pos[0].strip("{}").lower()
        med = self.s["media"].get(key) or next((m for m in self.s["media"].values()
                                                if m["location"] == os.path.abspath(pos[0])), None)
        if med is None:
            med = self.medium(pos[0])
        kids = self.children_of(med["uuid"])
        if kids:
            raise Fail(f"Cannot close medium '{med['location']}' because it has {len(kids)} child media",
                       code="VBOX_E_OBJECT_IN_USE (0x80bb000c)", component="MediumWrap", interface="IMedium",
                       context="Close()")
        users = self.users(med["uuid"])
        if users:
            raise Fail(f"Medium '{med['location']}' cannot be closed because it is still attached to {len(users)} "
                       f"virtual machines", code="VBOX_E_OBJECT_IN_USE (0x80bb000c)", component="MediumWrap",
                       interface="IMedium", context="Close()")
        if opts.get("--delete"):
            if os.path.exists(med["location"]):
                os.unlink(med["location"])
            self.progress()
        del self.s["media"][med["uuid"]]
        self.save()
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home = os.environ.get("VBOX_USER_HOME") or os.path.expanduser("~/.config/VirtualBox")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "argv.log"), "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "pid": os.getpid()}, ensure_ascii=False) + "\n")
    fake = Fake(home)
    with open(os.path.join(home, "state.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fake.load()
        try:
            code = fake.run(argv)
        except Syntax as exc:
            fake.err.append(f"VBoxManage: error: {exc}\n")
            code = 2
        except Fail as exc:
            lines = [f"VBoxManage: error: {exc.msg}\n"]
            if exc.component:
                lines.append(f"VBoxManage: error: Details: code {exc.code}, component {exc.component}, "
                             f"interface {exc.interface}, callee nsISupports\n")
            if exc.context:
                lines.append(f'VBoxManage: error: Context: "{exc.context}" at line 1 of file VBoxManage.cpp\n')
            fake.err.extend(lines)
            code = exc.exit_code
        except subprocess.CalledProcessError as exc:
            fake.err.append(f"VBoxManage: error: VD: {exc.stderr.strip()}\n")
            code = 1
    sys.stdout.write("".join(fake.out))
    sys.stderr.write("".join(fake.err))
    return code


def install(bin_dir: str, home: str, python: str = sys.executable) -> str:
    """Write an executable ``VBoxManage`` into ``bin_dir`` bound to ``home`` (SSH passes no environment); return it."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "VBoxManage")
    here = os.path.dirname(os.path.abspath(__file__))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!{python}\nimport os, sys\nos.environ['VBOX_USER_HOME'] = {home!r}\n"
                 f"sys.path.insert(0, {here!r})\nimport fake_vboxmanage\nsys.exit(fake_vboxmanage.main())\n")
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
