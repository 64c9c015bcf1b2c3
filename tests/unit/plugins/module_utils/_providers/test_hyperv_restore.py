# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Pure parts of the Hyper-V restores: the stdin lines a restored image is sent as, and drive locations."""

from __future__ import annotations

import base64

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_restore


def decode(pieces: list[bytes]) -> dict[int, bytes]:
    found = {}
    for line in b"".join(pieces).splitlines():
        offset, data = line.split(b" ")
        found[int(offset)] = base64.b64decode(data)
    return found


def test_only_non_zero_pieces_are_sent_and_a_short_tail_is_padded_to_a_sector(tmp_path):
    piece = hyperv_restore.PIECE
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(piece) + b"\x01" * piece + bytes(piece) + b"\x02" * 100)
    sent = decode(list(hyperv_restore._lines(str(image))))  # pylint: disable=protected-access
    assert sorted(sent) == [piece, 3 * piece]
    assert sent[piece] == b"\x01" * piece
    assert sent[3 * piece] == b"\x02" * 100 + bytes(412)  # whole sectors only: raw disk writes need them


def test_an_all_zero_image_sends_nothing(tmp_path):
    image = tmp_path / "zero.raw"
    image.write_bytes(bytes(3 * hyperv_restore.PIECE))
    assert list(hyperv_restore._lines(str(image))) == []  # pylint: disable=protected-access


@pytest.mark.parametrize("target, expected", [
    ("SCSI0:0", ("SCSI", 0, 0)),
    ("SCSI1:12", ("SCSI", 1, 12)),
    ("IDE0:1", ("IDE", 0, 1)),
])
def test_drive_locations(target, expected):
    found = hyperv_restore.drive(target)
    assert (found["controller_type"], found["controller_number"], found["controller_location"]) == expected


@pytest.mark.parametrize("target", ["Microsoft:ABC\\1:0", "vda", "NVMe0:1"])
def test_a_disk_name_that_is_no_drive_location_is_refused(target):
    with pytest.raises(InvalidArgument, match="no IDE or SCSI controller location"):
        hyperv_restore.drive(target)
