# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Editing a libvirt domain definition (XML) without libvirt: shared by the libvirt provider's instant recovery
and vmsafe-recover, which runs without Ansible and without libvirt-python.

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET


def set_disk_sources(root: ET.Element, disk_files: t.Mapping[str, tuple[str, str]]) -> None:
    """Point each disk of a domain definition whose target is in ``disk_files`` at (path, format).

    The disk becomes a plain file of that format: other source attributes and children (e.g. ``<dataStore>`` of a
    network disk) and backing chains are dropped (the file stands alone or carries its own backing file).
    """
    for node in root.findall("./devices/disk"):
        target = node.find("target")
        if target is None or target.get("dev") not in disk_files:
            continue
        path, fmt = disk_files[t.cast(str, target.get("dev"))]
        source = node.find("source")
        if source is None:
            source = ET.SubElement(node, "source")
        source.attrib.clear()
        for child in list(source):
            source.remove(child)
        source.set("file", path)
        node.set("type", "file")
        driver = node.find("driver")
        if driver is None:
            driver = ET.SubElement(node, "driver", {"name": "qemu"})
        driver.set("type", fmt)
        for store in node.findall("backingStore"):
            node.remove(store)
