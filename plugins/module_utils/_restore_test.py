# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Restore tests on libvirt: an isolated network, a restored VM moved onto it, booted and probed, then removed.

The pieces (each a plain function over a libvirt connection; the modules restore_test_network and restore_test_vm
are their glue):

- ``create_network`` / ``remove_network``: a *transient* libvirt network with no ``<forward>`` (guests reach the
  host's bridge address and each other, nothing else), a DHCP range so the guest's own network set-up works
  unchanged, on a /24 no other libvirt network or host interface uses;
- ``isolate_domain_xml``: every NIC of the restored VM moved onto that network (same count and models, so the guest
  names its interfaces as before), QEMU command-line network back-ends (``-netdev``/``-nic``/``-net`` and the
  ``-device`` that uses them) dropped, and the serial console written to a file of the test;
- ``boot_and_wait``: start, then wait for a DHCP lease (the guest booted far enough to configure its network);
- ``run_probe``: ping (ICMP echo), tcp (connect), ssh (banner), command (over ssh, exit status and output),
  each retried until its own timeout;
- ``remove_domain``: stop, undefine, and delete the VM's files that lie inside the test's folder (never others).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import struct
import subprocess
import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, ProviderError, VmNotFound

try:
    import libvirt
except ImportError:  # pragma: no cover - the runner reports the missing library
    libvirt = None

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
PROBE_TYPES = ("ping", "tcp", "ssh", "command")
#: QEMU options that give a guest a network path of their own (user mode, tap, sockets)
_NET_OPTIONS = ("-netdev", "-nic", "-net")
_CANDIDATE_NETS = [ipaddress.ip_network(f"10.{a}.{b}.0/24") for a in range(200, 255) for b in range(0, 256, 7)]


# ------------------------------------------------------------------ network
def _used_networks(conn: t.Any) -> list[ipaddress.IPv4Network]:
    used = []
    for net in conn.listAllNetworks():
        try:
            root = ET.fromstring(net.XMLDesc(0))
        except (ET.ParseError, libvirt.libvirtError):
            continue
        for ip in root.findall("ip"):
            addr, mask, prefix = ip.get("address"), ip.get("netmask"), ip.get("prefix")
            if addr and ":" not in addr:
                used.append(ipaddress.ip_network(f"{addr}/{mask or prefix or 24}", strict=False))
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                dest, mask = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16))), \
                    socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
                if dest != "0.0.0.0":
                    used.append(ipaddress.ip_network(f"{dest}/{mask}", strict=False))
    except (OSError, ValueError, IndexError):
        pass
    return used


def network_info(net: t.Any) -> dict[str, t.Any]:
    """What the modules return about a network: name, bridge, host address, prefix, DHCP range, forward mode."""
    root = ET.fromstring(net.XMLDesc(0))
    ip = root.find("ip")
    rng = ip.find("dhcp/range") if ip is not None else None
    prefix = None
    if ip is not None and ip.get("address"):
        prefix = ipaddress.ip_network(f"{ip.get('address')}/{ip.get('netmask') or ip.get('prefix') or 24}",
                                      strict=False).prefixlen
    forward = root.find("forward")
    return {
        "name": net.name(),
        "bridge": root.find("bridge").get("name") if root.find("bridge") is not None else None,
        "address": ip.get("address") if ip is not None else None,
        "prefix": prefix,
        "dhcp_start": rng.get("start") if rng is not None else None,
        "dhcp_end": rng.get("end") if rng is not None else None,
        "forward": forward.get("mode", "nat") if forward is not None else None,
        "active": bool(net.isActive()),
        "persistent": bool(net.isPersistent()),
    }


def find_network(conn: t.Any, name: str) -> t.Any | None:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise ProviderError(f"Failed to look up network '{name}' on libvirt host {conn.getURI()}: {exc}") from exc


def plan_network(conn: t.Any, name: str, subnet: str | None) -> dict[str, t.Any]:
    """Choose bridge and addresses for a new isolated network. Raises InvalidArgument."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise InvalidArgument(f"The network name '{name}' must be 1-64 letters, digits, '.', '_' or '-'.")
    used = _used_networks(conn)
    if subnet:
        try:
            chosen = ipaddress.ip_network(subnet, strict=True)
        except ValueError as exc:
            raise InvalidArgument(f"subnet '{subnet}' is not an IPv4 network such as 10.250.3.0/24: {exc}") from None
        if chosen.version != 4 or chosen.prefixlen > 28:
            raise InvalidArgument(f"subnet '{subnet}' must be an IPv4 network of at least 16 addresses (/28).")
        clash = sorted({str(u) for u in used if u.overlaps(chosen)})
        if clash:
            raise InvalidArgument(f"subnet '{subnet}' overlaps {', '.join(clash)} (a libvirt network or a host route); "
                                  "choose another or leave subnet unset.")
    else:
        free = [n for n in _CANDIDATE_NETS if not any(u.overlaps(n) for u in used)]
        if not free:
            raise InvalidArgument("No free /24 in 10.200.0.0-10.254.255.0 for the test network: give a subnet.")
        chosen = free[secrets.randbelow(len(free))]  # random: two tests starting at once rarely pick the same
    hosts = list(chosen.hosts())
    return {"name": name, "bridge": f"vsrt{secrets.token_hex(4)}", "address": str(hosts[0]),
            "prefix": chosen.prefixlen, "dhcp_start": str(hosts[min(9, len(hosts) - 2)]), "dhcp_end": str(hosts[-1]),
            "forward": None, "active": True, "persistent": False}


def create_network(conn: t.Any, plan: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Start the planned network as a transient network (gone when destroyed). Raises ProviderError."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = plan["name"]
    ET.SubElement(root, "bridge", name=plan["bridge"], stp="off", delay="0")
    ET.SubElement(root, "dns", enable="no")
    ip = ET.SubElement(root, "ip", address=plan["address"], prefix=str(plan["prefix"]))
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=plan["dhcp_start"], end=plan["dhcp_end"])
    try:
        net = conn.networkCreateXML(ET.tostring(root, encoding="unicode"))
    except libvirt.libvirtError as exc:
        raise ProviderError(
            f"Failed to create network '{plan['name']}' on libvirt host {conn.getURI()}: {exc}. An isolated network "
            "with DHCP needs libvirt's network driver with dnsmasq and iptables on the host (Debian: dnsmasq-base, "
            "iptables)."
        ) from exc
    return network_info(net)


def remove_network(conn: t.Any, net: t.Any) -> None:
    try:
        persistent = net.isPersistent()  # a transient network is gone once destroyed: ask first
        if net.isActive():
            net.destroy()
        if persistent:
            net.undefine()
    except libvirt.libvirtError as exc:
        raise ProviderError(f"Failed to remove network '{net.name()}' on libvirt host {conn.getURI()}: {exc}") from exc


# ------------------------------------------------------------------ the VM
def isolate_domain_xml(xml: str, network: str, console_path: str) -> tuple[str, list[str]]:
    """Return the domain XML with every NIC on ``network`` and no other way out, and what was changed."""
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(xml)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    changes: list[str] = []
    interfaces = devices.findall("interface")
    for iface in interfaces:
        model = iface.find("model")
        mac = iface.find("mac")
        devices.remove(iface)
        new = ET.Element("interface", type="network")
        if mac is not None:
            ET.SubElement(new, "mac", address=mac.get("address", ""))
        ET.SubElement(new, "source", network=network)
        ET.SubElement(new, "model", type=model.get("type", "virtio") if model is not None else "virtio")
        devices.append(new)
        changes.append(f"interface ({iface.get('type')}) moved to network {network}")
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is not None:
        args = commandline.findall(f"{{{QEMU_NS}}}arg")
        values = [a.get("value", "") for a in args]
        drop: set[int] = set()
        netdev_ids = set()
        for i, value in enumerate(values):
            if value in _NET_OPTIONS and i + 1 < len(values):
                drop.update((i, i + 1))
                found = re.search(r"(?:^|,)id=([^,]+)", values[i + 1])
                if found:
                    netdev_ids.add(found.group(1))
        for i, value in enumerate(values):
            if value == "-device" and i + 1 < len(values):
                used = re.search(r"(?:^|,)netdev=([^,]+)", values[i + 1])
                if used and used.group(1) in netdev_ids:
                    drop.update((i, i + 1))
        for i in sorted(drop):
            commandline.remove(args[i])
            if values[i].startswith("-"):
                changes.append(f"QEMU command-line option {values[i]} {values[i + 1].split(',')[0]} removed")
        if not commandline.findall(f"{{{QEMU_NS}}}arg") and not list(commandline):
            root.remove(commandline)
    if not interfaces:
        # no libvirt NIC (none at all, or only QEMU command-line ones, dropped above): give it one on the network
        new = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(new, "source", network=network)
        ET.SubElement(new, "model", type="virtio")
        changes.append(f"interface added on network {network}")
    serials = devices.findall("serial") + devices.findall("console")
    for dev in serials:
        if dev.get("type") in ("file", "pty"):
            dev.set("type", "file")
            for child in dev.findall("source"):
                dev.remove(child)
            dev.insert(0, ET.Element("source", path=console_path))
    if not devices.findall("serial"):
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=console_path)
        ET.SubElement(serial, "target", port="0")
    changes.append(f"serial console written to {console_path}")
    return ET.tostring(root, encoding="unicode"), changes


def find_domain(conn: t.Any, name: str) -> t.Any | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise ProviderError(f"Failed to look up VM '{name}' on libvirt host {conn.getURI()}: {exc}") from exc


def require_domain(conn: t.Any, name: str) -> t.Any:
    dom = find_domain(conn, name)
    if dom is None:
        raise VmNotFound(f"Failed to find VM '{name}' on libvirt host {conn.getURI()}: restore it first "
                         "(vmsafe.protect.vm_restore with target: new_vm).")
    return dom


def lease_address(dom: t.Any) -> str | None:
    """The guest's IPv4 address from the network's DHCP leases, or None."""
    try:
        found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    except libvirt.libvirtError:
        return None
    for iface in (found or {}).values():
        for addr in iface.get("addrs") or []:
            if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and addr.get("addr"):
                return str(addr["addr"])
    return None


def boot_and_wait(dom: t.Any, timeout: float) -> tuple[str | None, float, str]:
    """Start the VM and wait up to ``timeout`` s for a DHCP lease. Return (address or None, seconds, why not)."""
    started = time.monotonic()
    try:
        if not dom.isActive():
            dom.create()
    except libvirt.libvirtError as exc:
        return None, time.monotonic() - started, f"the VM did not start: {exc}"
    while True:
        address = lease_address(dom)
        if address:
            return address, time.monotonic() - started, ""
        try:
            state = dom.state()[0]
        except libvirt.libvirtError as exc:
            return None, time.monotonic() - started, f"the VM disappeared: {exc}"
        if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
            return None, time.monotonic() - started, "the VM stopped before it configured its network"
        if time.monotonic() - started >= timeout:
            return None, time.monotonic() - started, (
                f"no DHCP lease within {timeout:g} s: the guest did not boot far enough to configure its network")
        time.sleep(1.0)


def domain_files(dom: t.Any) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(0))
    files = []
    for source in root.findall("devices/disk/source"):
        path = source.get("file")
        if path:
            files.append(path)
    for source in root.findall("devices/serial/source") + root.findall("devices/console/source"):
        if source.get("path"):
            files.append(source.get("path"))
    return files


def remove_domain(conn: t.Any, dom: t.Any, folder: str) -> tuple[list[str], list[str]]:
    """Stop and undefine the VM; delete its files that lie inside ``folder``. Return (deleted, left alone)."""
    files = domain_files(dom)
    name = dom.name()
    try:
        if dom.isActive():
            dom.destroy()
        flags = 0
        for flag in ("VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
                     "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA", "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA"):
            flags |= getattr(libvirt, flag, 0)
        if dom.isPersistent():
            dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        raise ProviderError(f"Failed to remove VM '{name}' on libvirt host {conn.getURI()}: {exc}") from exc
    base = os.path.realpath(folder) + os.sep
    deleted, kept = [], []
    for path in dict.fromkeys(files):
        if not os.path.realpath(path).startswith(base):
            kept.append(path)
            continue
        try:
            os.unlink(path)
            deleted.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ProviderError(f"Failed to delete '{path}' of VM '{name}': {exc.strerror}") from exc
    return deleted, kept


def console_tail(path: str, lines: int = 25) -> list[str]:
    """The last lines of the console file (control characters dropped), for the test record."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    clean = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]", "", line).rstrip() for line in text.splitlines()]
    return [line for line in clean if line][-lines:]


# ------------------------------------------------------------------ probes
def normalize_probe(spec: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A probe as given by the user, checked and completed with defaults. Raises InvalidArgument."""
    kind = spec.get("type")
    if kind not in PROBE_TYPES:
        raise InvalidArgument(f"Each probe needs a type, one of {', '.join(PROBE_TYPES)}; got {kind!r}.")
    unknown = set(spec) - {"type", "name", "port", "timeout", "command", "user", "key_file", "expect_output"}
    if unknown:
        raise InvalidArgument(f"Unknown keys in a {kind} probe: {', '.join(sorted(unknown))}.")
    probe = {k: v for k, v in spec.items() if v is not None}
    if kind == "tcp" and not probe.get("port"):
        raise InvalidArgument("A tcp probe needs a port.")
    if kind == "command" and not probe.get("command"):
        raise InvalidArgument("A command probe needs a command (run over SSH on the restored guest).")
    if kind in ("ssh", "command"):
        probe.setdefault("port", 22)
    if kind == "command":
        probe.setdefault("user", "root")
    try:
        probe["timeout"] = float(probe.get("timeout") or 60)
        if probe.get("port") is not None:
            probe["port"] = int(probe["port"])
    except (TypeError, ValueError):
        raise InvalidArgument(f"A {kind} probe's port and timeout must be numbers.") from None
    if probe.get("expect_output"):
        try:
            re.compile(str(probe["expect_output"]))
        except re.error as exc:
            raise InvalidArgument(f"expect_output of a command probe is no regular expression: {exc}") from None
    probe.setdefault("name", kind if probe.get("port") in (None, 22) else f"{kind}:{probe['port']}")
    return probe


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping_once(address: str, timeout: float, seq: int) -> bool:
    """One ICMP echo request; True when the address answered. Unprivileged ICMP sockets first, raw ones as root."""
    raw = False
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw = True
    with sock:
        ident = os.getpid() & 0xFFFF
        body = b"vmsafe-restore-test"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body
        sock.settimeout(timeout)
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, peer = sock.recvfrom(2048)
            except socket.timeout:
                return False
            if raw:
                data = data[(data[0] & 0x0F) * 4:]
            if peer[0] != address or len(data) < 8:
                continue
            kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", data[:8])
            if kind == 0 and rseq == seq and (rid == ident or not raw):
                return True
    return False


def _ssh_argv(probe: t.Mapping[str, t.Any], address: str) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-p", str(probe["port"])]
    if probe.get("key_file"):
        argv += ["-i", str(probe["key_file"]), "-o", "IdentitiesOnly=yes"]
    return argv + [f"{probe['user']}@{address}", "--", str(probe["command"])]


def run_probe(probe: t.Mapping[str, t.Any], address: str) -> dict[str, t.Any]:
    """Run one probe against ``address``, retrying until its timeout. Returns a result dict (never raises)."""
    kind, timeout = probe["type"], float(probe["timeout"])
    started = time.monotonic()
    deadline = started + timeout
    detail, output = "", ""
    ok = False
    attempt = 0
    while not ok:
        attempt += 1
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            if kind == "ping":
                ok = _ping_once(address, min(2.0, left), attempt)
                detail = "echo reply" if ok else "no echo reply"
            elif kind in ("tcp", "ssh"):
                with socket.create_connection((address, probe["port"]), timeout=min(5.0, left)) as conn:
                    if kind == "tcp":
                        ok, detail = True, f"port {probe['port']} accepted a connection"
                    else:
                        conn.settimeout(min(10.0, max(0.5, deadline - time.monotonic())))
                        banner = conn.recv(256).split(b"\r\n")[0].decode("ascii", "replace")
                        ok = banner.startswith("SSH-")
                        detail = banner if ok else f"no SSH banner (got {banner[:40]!r})"
            else:
                # run_probe has no module: a per-attempt timeout, an argv list, no shell
                proc = subprocess.run(_ssh_argv(probe, address), capture_output=True, text=True, check=False,  # pylint: disable=ansible-bad-function
                                      timeout=max(1.0, left), errors="replace")
                output = (proc.stdout + proc.stderr).strip()
                if proc.returncode == 255:  # ssh itself failed (not up yet): try again
                    detail = f"ssh failed: {proc.stderr.strip()[-200:]}"
                else:
                    expect = probe.get("expect_output")
                    ok = proc.returncode == 0 and (not expect or re.search(str(expect), proc.stdout) is not None)
                    detail = f"exit status {proc.returncode}" + (
                        "" if ok or proc.returncode != 0 else f", output does not match {expect!r}")
                    break  # the command ran: its exit status and output are the answer
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if not ok and deadline - time.monotonic() > 0:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    result = {"name": probe["name"], "type": kind, "ok": ok, "seconds": round(time.monotonic() - started, 2),
              "attempts": attempt, "detail": detail if ok or detail else f"no answer within {timeout:g} s"}
    if probe.get("port") is not None:
        result["port"] = probe["port"]
    if kind == "command":
        result["command"] = str(probe["command"])
        result["output"] = "\n".join(output.splitlines()[-20:])
    return result
