# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Throwaway QEMU/libvirt VMs for the tests and the demo: no OS, a qcow2 disk, known bytes in and out.

    python tests/lab/labvm.py create NAME [--size-mib 64] [--memory-mib 128] [--shutoff]
    python tests/lab/labvm.py write NAME PATTERN OFFSET LENGTH     # e.g. write vm1 0xab 0 1M
    python tests/lab/labvm.py check NAME PATTERN OFFSET LENGTH     # exit 0 when the guest sees that pattern
    python tests/lab/labvm.py age NAME SNAPSHOT SECONDS                # make a snapshot look older
    python tests/lab/labvm.py destroy NAME | destroy-prefix PREFIX

Writes and reads go through QEMU's own block layer when the VM runs (HMP qemu-io, so they see exactly
what the guest sees), and through qemu-io on the image when it is shut off.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import typing as t
import xml.etree.ElementTree as ET

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VM_DIR = os.environ.get("VMSAFE_LAB_DIR", os.path.join(ROOT, ".lab", "vms"))
URI = os.environ.get("VMSAFE_LIBVIRT_URI", "qemu:///system")
QEMU_LOG = "/var/log/libvirt/qemu/{name}.log"

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-disk0'/>
    </disk>
  </devices>
</domain>
"""


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", str(text))
    if not match:
        raise ValueError(f"bad size {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def connect() -> t.Any:
    return libvirt.open(URI)


def create(name: str, size_mib: int = 64, memory_mib: int = 128, start: bool = True) -> str:
    """Define (and start) a VM with one empty qcow2 disk; return the disk path."""
    os.makedirs(VM_DIR, exist_ok=True)
    disk = os.path.join(VM_DIR, f"{name}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, f"{size_mib}M"], check=True)
    conn = connect()
    try:
        dom = conn.defineXML(DOMAIN_XML.format(name=name, memory=memory_mib, disk=disk))
        if start:
            dom.create()
    finally:
        conn.close()
    return disk


def _domain(conn: t.Any, name: str) -> t.Any:
    return conn.lookupByName(name)


def active_image(name: str) -> str:
    conn = connect()
    try:
        root = ET.fromstring(_domain(conn, name).XMLDesc(0))
        return root.find("./devices/disk/source").get("file")
    finally:
        conn.close()


def _hmp_qemu_io(dom: t.Any, name: str, command: str) -> str:
    """Run a qemu-io command inside QEMU; its output lands in the domain log, which we read back."""
    log = QEMU_LOG.format(name=name)
    start = os.path.getsize(log) if os.path.exists(log) else 0
    import libvirt_qemu  # pylint: disable=import-outside-toplevel

    libvirt_qemu.qemuMonitorCommand(
        dom, f'qemu-io -d /machine/peripheral/ua-disk0/virtio-backend "{command}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log, encoding="utf-8", errors="replace") as handle:
            handle.seek(start)
            out = handle.read()
        if re.search(r"(wrote|read) \d+/\d+ bytes|Pattern verification failed|error", out, re.I):
            return out
        time.sleep(0.05)
    raise RuntimeError(f"no qemu-io answer in {log}")


def _qemu_io_offline(path: str, command: str, readonly: bool) -> str:
    cmd = ["qemu-io", "-f", "qcow2"] + (["-r", "-U"] if readonly else []) + ["-c", command, path]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def _io(name: str, command: str, readonly: bool) -> str:
    conn = connect()
    try:
        dom = _domain(conn, name)
        if dom.isActive():
            return _hmp_qemu_io(dom, name, command)
    finally:
        conn.close()
    return _qemu_io_offline(active_image(name), command, readonly)


def write(name: str, pattern: int, offset: int, length: int) -> None:
    """Write through QEMU and flush, so that readers of the image file (qemu-img -U) see it too."""
    out = _io(name, f"write -P {pattern:#x} {offset} {length}", readonly=False)
    if f"wrote {length}/{length} bytes" not in out:
        raise RuntimeError(f"write to {name} failed: {out.strip()}")
    conn = connect()
    try:
        dom = _domain(conn, name)
        if dom.isActive():
            import libvirt_qemu  # pylint: disable=import-outside-toplevel

            # qemu-io's flush writes QEMU's cached qcow2 metadata to the file; it prints nothing.
            libvirt_qemu.qemuMonitorCommand(dom, 'qemu-io -d /machine/peripheral/ua-disk0/virtio-backend "flush"',
                                            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    finally:
        conn.close()


def check(name: str, pattern: int, offset: int, length: int) -> bool:
    """True when the guest reads ``pattern`` in every byte of the range."""
    out = _io(name, f"read -P {pattern:#x} {offset} {length}", readonly=True)
    return "Pattern verification failed" not in out and f"read {length}/{length} bytes" in out


def destroy(name: str) -> None:
    """Stop and undefine the VM with all its snapshot and checkpoint records, and delete its images."""
    conn = connect()
    try:
        try:
            dom = _domain(conn, name)
        except libvirt.libvirtError:
            dom = None
        files: set[str] = set()
        if dom is not None:
            root = ET.fromstring(dom.XMLDesc(0))
            files.update(s.get("file") for s in root.iter("source") if s.get("file"))
            if dom.isActive():
                dom.destroy()
            for snap in dom.listAllSnapshots(0):
                files.update(s.get("file") for s in ET.fromstring(snap.getXMLDesc(0)).iter("source") if s.get("file"))
            flags = (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                     | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            dom.undefineFlags(flags)
    finally:
        conn.close()
    for path in files:
        if path and path.startswith(VM_DIR) and os.path.exists(path):
            os.unlink(path)
    for entry in os.listdir(VM_DIR) if os.path.isdir(VM_DIR) else []:
        if entry.startswith(f"{name}."):
            os.unlink(os.path.join(VM_DIR, entry))


def age(name: str, snapshot: str, seconds: int) -> None:
    """Make a snapshot look ``seconds`` older: redefine its record with an older creationTime (libvirt keeps the rest)."""
    conn = connect()
    try:
        dom = _domain(conn, name)
        snap = dom.snapshotLookupByName(snapshot, 0)
        xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        created = int(re.search(r"<creationTime>(\d+)</creationTime>", xml).group(1))
        xml = xml.replace(f"<creationTime>{created}</creationTime>", f"<creationTime>{created - seconds}</creationTime>")
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if snap.isCurrent(0):
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        dom.snapshotCreateXML(xml, flags)
    finally:
        conn.close()


def destroy_prefix(prefix: str) -> list[str]:
    conn = connect()
    try:
        names = [d.name() for d in conn.listAllDomains() if d.name().startswith(prefix)]
    finally:
        conn.close()
    for name in names:
        destroy(name)
    return names


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("name")
    c.add_argument("--size-mib", type=int, default=64)
    c.add_argument("--memory-mib", type=int, default=128)
    c.add_argument("--shutoff", action="store_true")
    for verb in ("write", "check"):
        w = sub.add_parser(verb)
        w.add_argument("name")
        w.add_argument("pattern", type=lambda x: int(x, 0))
        w.add_argument("offset", type=_size)
        w.add_argument("length", type=_size)
    sub.add_parser("destroy").add_argument("name")
    a = sub.add_parser("age")
    a.add_argument("name")
    a.add_argument("snapshot")
    a.add_argument("seconds", type=int)
    sub.add_parser("destroy-prefix").add_argument("prefix")
    args = parser.parse_args(argv)
    if not shutil.which("qemu-img"):
        print("qemu-img is missing: run scripts/lab.sh install", file=sys.stderr)
        return 2
    if args.cmd == "create":
        print(create(args.name, args.size_mib, args.memory_mib, start=not args.shutoff))
    elif args.cmd == "age":
        age(args.name, args.snapshot, args.seconds)
    elif args.cmd == "write":
        write(args.name, args.pattern, args.offset, args.length)
    elif args.cmd == "check":
        ok = check(args.name, args.pattern, args.offset, args.length)
        print("match" if ok else "MISMATCH")
        return 0 if ok else 1
    elif args.cmd == "destroy":
        destroy(args.name)
    else:
        print("\n".join(destroy_prefix(args.prefix)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
