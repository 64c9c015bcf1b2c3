# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The shipped PowerShell scripts: valid syntax, data only in the data block, and the pure mapping helpers."""

from __future__ import annotations

import base64
import json
import re

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError, UnsupportedOperation, VmNotFound
from ansible_collections.vmsafe.protect.plugins.module_utils._models import SnapshotSpec
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts as scripts

NASTY = ["a'b", 'a"b', "$(Remove-VM -Name * -Force)", "x; Stop-Computer", "back`tick`$x", "'); Remove-VM *; #",
         "名前 ünïcödé", "@{a=1}", "\n$payload = 1\n"]


@pytest.fixture(scope="module")
def parser():
    tree_sitter = pytest.importorskip("tree_sitter")
    tsp = pytest.importorskip("tree_sitter_powershell")
    return tree_sitter.Parser(tree_sitter.Language(tsp.language()))


def error_lines(parser, text: str) -> list[int]:
    found = []
    stack = [parser.parse(text.encode("utf-8")).root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            found.append(node.start_point[0] + 1)
        stack.extend(node.children)
    return found


@pytest.mark.parametrize("name", sorted(scripts.SCRIPTS))
def test_every_shipped_script_parses(parser, name):
    text = scripts.render(name, {"vm_id": "x", "name": NASTY[0]})
    assert error_lines(parser, text) == [], f"{name}: syntax errors"


def test_the_parser_does_catch_errors(parser):
    broken = scripts.SCRIPTS["list_vms"].replace("ForEach-Object {", "ForEach-Object (", 1)
    assert error_lines(parser, broken)


@pytest.mark.parametrize("value", NASTY)
def test_arguments_only_travel_in_the_data_block(value):
    text = scripts.render("create_checkpoint", {"vm_id": "1", "name": value, "checkpoint_type": "Standard"})
    blocks = re.findall(r"FromBase64String\('([A-Za-z0-9+/=]*)'\)", text)
    assert len(blocks) == 1
    assert text.replace(blocks[0], scripts.PAYLOAD_MARK) == scripts.SCRIPTS["create_checkpoint"]
    assert json.loads(base64.b64decode(blocks[0]))["name"] == value


def test_command_line_is_utf16_encoded_command():
    command, args = hyperv.command_line("Write-Output 'é'")
    assert command == "powershell.exe" and args[:3] == ["-NoProfile", "-NonInteractive", "-EncodedCommand"]
    assert base64.b64decode(args[3]).decode("utf-16-le") == "Write-Output 'é'"


@pytest.mark.parametrize("spec, running, expected", [
    (SnapshotSpec(name="a"), True, "Standard"),
    (SnapshotSpec(name="a", memory=True), True, "Standard"),
    (SnapshotSpec(name="a", quiesce=True), True, "ProductionOnly"),
    (SnapshotSpec(name="a", quiesce=True, quiesce_fallback="crash_consistent"), True, "Production"),
    (SnapshotSpec(name="a", quiesce=True), False, "Standard"),
])
def test_checkpoint_type_mapping(spec, running, expected):
    assert hyperv.checkpoint_type(spec, running) == expected


def test_disk_only_is_refused_with_the_fix():
    with pytest.raises(UnsupportedOperation, match="quiesce=true"):
        hyperv.checkpoint_type(SnapshotSpec(name="a", disk_only=True), True)


@pytest.mark.parametrize("text, iso", [
    ("2026-11-23T21:41:33.7991850Z", "2026-11-23T21:41:33.799185+00:00"),
    ("2026-11-23T21:41:33Z", "2026-11-23T21:41:33+00:00"),
    ("2026-11-23T22:41:33.1234567+01:00", "2026-11-23T21:41:33.123456+00:00"),
])
def test_dotnet_round_trip_times_parse(text, iso):
    assert hyperv._parse_time(text).isoformat() == iso  # pylint: disable=protected-access


@pytest.mark.parametrize("stdout, stderr, error, match", [
    (b"", b"#< CLIXML\r\n<Objs><S S=\"Error\">Get-VM : not recognized</S></Objs>", ProviderError,
     "no JSON result. stderr: #< CLIXML"),
    (b'{"ok": false, "error": "VM not found: 1", "reason": "ItemNotFoundException"}', b"", VmNotFound,
     "VM not found: 1. The VM was removed"),
    (b'{"ok": false, "error": "Access denied", "reason": "VirtualizationException"}', b"", ProviderError,
     r"^Failed to list VMs on hyperv host hv01:5986: Access denied$"),
])
def test_script_answers_map_to_errors(stdout, stderr, error, match):
    provider = hyperv.HypervProvider({"hostname": "hv01"}, lambda msg: None)
    with pytest.raises(error, match=match):
        provider._answer(stdout, stderr, 1, "list VMs")  # pylint: disable=protected-access


def test_script_answer_with_escaped_unicode():
    provider = hyperv.HypervProvider({"hostname": "hv01"}, lambda msg: None)
    answer = provider._answer(b'{"ok":true,"data":{"name":"\\u540d\\u524d"}}', b"", 0, "x")  # pylint: disable=protected-access
    assert answer == {"name": "名前"}
