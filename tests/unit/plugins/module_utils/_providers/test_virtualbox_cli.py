# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Parsing VBoxManage output, and the per-argument quoting that carries an argv over SSH."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_cli as cli
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.virtualbox import VirtualboxProvider

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "..", "..", "..", "..", "vbox_fake")
sys.path.insert(0, FAKE)

import fake_vboxmanage  # noqa: E402  pylint: disable=wrong-import-position,import-error

ODD = ["a b", "it's", 'say "hi"', "$(touch x)", "`id`", "ü ß", "back\\slash", "", "-x", "a\nb", "*", ";", "&&"]


def test_showvminfo_values_are_unescaped_and_quoted_keys_read():
    text = ('name="we \\"odd\\" \\\\ vm"\n"SATA-0-0"="/v/a \\"b\\".vdi"\n"SATA-ImageUUID-0-0"="1234"\nmemory=128\n'
            'VMState="running"\n')
    data = dict(cli.parse_machinereadable(text))
    assert data == {"name": 'we "odd" \\ vm', "SATA-0-0": '/v/a "b".vdi', "SATA-ImageUUID-0-0": "1234",
                    "memory": "128", "VMState": "running"}


def test_snapshot_lines_are_raw_and_a_multiline_description_continues():
    text = ('SnapshotName="say "hi" \\ now"\nSnapshotUUID="u1"\nSnapshotDescription="line one\nline two"\n'
            'SnapshotName-1="child"\nSnapshotUUID-1="u2"\nCurrentSnapshotName="child"\nCurrentSnapshotUUID="u2"\n'
            'CurrentSnapshotNode="SnapshotName-1"\n')
    data = dict(cli.parse_machinereadable(text))
    assert data["SnapshotName"] == 'say "hi" \\ now'
    assert data["SnapshotDescription"] == "line one\nline two"
    assert data["SnapshotName-1"] == "child" and data["CurrentSnapshotUUID"] == "u2"


def test_fake_and_parser_agree_on_every_odd_value():
    for value in ODD:
        if "\n" in value:
            continue  # VirtualBox prints newlines raw; a line-based format cannot carry them
        line = fake_vboxmanage.machine_readable("name", value) + fake_vboxmanage.machine_readable("a=b", value)
        assert cli.parse_machinereadable(line) == [("name", value), ("a=b", value)]


def test_media_records_and_continuation_lines():
    text = ("UUID:           b1\nParent UUID:    base\nState:          created\nIn use by VMs:  vm one (UUID: v1)\n"
            "                vm two (UUID: v2) [s (UUID: s1)]\nChild UUIDs:    c1\n                c2\n\n"
            "UUID:           c1\nParent UUID:    b1\nState:          inaccessible\n\n")
    records = cli.parse_records(text)
    assert [r["UUID"] for r in records] == ["b1", "c1"]
    assert records[0]["In use by VMs"].splitlines()[1].startswith("vm two") and records[0]["Child UUIDs"] == "c1\nc2"
    assert records[1]["State"] == "inaccessible"


def test_vm_list_keeps_quotes_in_names_and_skips_inaccessible():
    text = '"plain" {11111111-1111-1111-1111-111111111111}\n"say "hi" {x}" {22222222-2222-2222-2222-222222222222}\n' \
           '"<inaccessible>" {33333333-3333-3333-3333-333333333333}\n'
    assert cli.parse_vm_list(text) == [("plain", "11111111-1111-1111-1111-111111111111"),
                                       ('say "hi" {x}', "22222222-2222-2222-2222-222222222222")]


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_ssh_command_string_gives_the_remote_shell_the_same_argv(shell, tmp_path, monkeypatch):
    """What SshHost.run sends is parsed back by a POSIX shell into exactly the argv it was built from."""
    argv = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *ODD]
    calls: list[str] = []

    class Client:  # records the command string SshHost builds; the shell below stands in for sshd's
        def exec_command(self, command, timeout):
            calls.append(command)
            raise OSError("stop")

    monkeypatch.setattr(cli, "paramiko", pytest.importorskip("paramiko"))
    host = cli.SshHost("h", 22, "u", None, None, None, True, 5)
    host.client = Client()
    with pytest.raises(OSError):
        host.run(argv, 5)
    out = subprocess.run([shell, "-c", calls[0]], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert __import__("json").loads(out) == ODD
    assert not os.path.exists(tmp_path / "x")


def test_errors_name_the_verb_host_and_cause():
    provider = VirtualboxProvider({"vboxmanage": "VBoxManage"}, lambda _m: None)
    err = provider._error("restore snapshot 's' of VM 'v'", cli.Result(  # pylint: disable=protected-access
        1, "", "VBoxManage: error: Could not find a snapshot named 's'\nVBoxManage: error: Details: code "
               "VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component SessionMachine\nVBoxManage: error: Context: \"x\"\n"))
    assert type(err).__name__ == "SnapshotNotFound"
    assert str(err).startswith("Failed to restore snapshot 's' of VM 'v' on virtualbox host localhost: Could not find")
