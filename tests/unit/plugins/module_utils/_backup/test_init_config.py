# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""init never replaces a key or config; config and key file are authenticated, bounded and bound together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    CorruptMetadataError,
    RepositoryExistsError,
    RepositoryFormatError,
    WrongPassphraseError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    FAST_KDF,
    PASSPHRASE,
    make_repo,
)

INIT_SCRIPT = """
import sys, time
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import RepositoryExistsError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import FAST_KDF, PASSPHRASE
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
try:
    repo = Repository.init(LocalBackend(sys.argv[1]), PASSPHRASE, kdf=FAST_KDF, chunk_size=4096)
    print("created")
except RepositoryExistsError:
    repo = Repository.open(LocalBackend(sys.argv[1]), PASSPHRASE)
    print("opened")
repo.lock_wait = 60  # as the modules do (lock_timeout): another process may still hold its init lock
data = bytes([int(sys.argv[3])]) * 50000
print(repo.backup("vm" + sys.argv[3], [DiskSource("vda", len(data), [(0, len(data), data)])]).id)
"""


def test_concurrent_inits_create_one_key_and_every_backup_stays_readable(tmp_path: t.Any) -> None:
    """Reproduced: two first-night runs with init: true at the same moment wrote two keys; one run's backups
    were sealed with a key that the other overwrote."""
    script = tmp_path / "init.py"
    script.write_text(INIT_SCRIPT)
    location = str(tmp_path / "repo")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, str(script), location, str(start), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in range(1, 5)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-800:] for o in outs]
    lines = [o[0].decode().split() for o in outs]
    assert sorted(line[0] for line in lines) == ["created", "opened", "opened", "opened"]
    repo = Repository.open(LocalBackend(location), PASSPHRASE)
    assert sorted(r.id for r in repo.list()) == sorted(line[1] for line in lines)
    for record in repo.list():
        out = tmp_path / f"{record.id}.raw"
        repo.restore(record.id, "vda", str(out))
        assert out.read_bytes() == bytes([int(record.vm_name[2:])]) * 50000
    assert repo.verify(read_data=True).ok


def test_init_with_config_missing_never_replaces_the_key(tmp_path: t.Any) -> None:
    """Reproduced: with config missing, init wrote a second key and the old backups became unreadable."""
    repo = make_repo(str(tmp_path / "repo"))
    data = os.urandom(30000)
    record = repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    key_before = repo.backend.read("keys/repokey")
    config = repo.backend.read("config")
    os.unlink(tmp_path / "repo" / "config")
    with pytest.raises(RepositoryExistsError, match="init never replaces a key"):
        Repository.init(LocalBackend(str(tmp_path / "repo")), "another passphrase", kdf=FAST_KDF)
    assert repo.backend.read("keys/repokey") == key_before
    (tmp_path / "repo" / "config").write_bytes(config)  # the fix the message names: config from a copy
    again = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSPHRASE)
    again.restore(record.id, "vda", str(tmp_path / "out.raw"))
    assert (tmp_path / "out.raw").read_bytes() == data


def test_init_that_died_after_its_key_is_completed_with_the_same_passphrase_only(tmp_path: t.Any) -> None:
    make_repo(str(tmp_path / "repo"))
    os.unlink(tmp_path / "repo" / "config")  # as if the process died between key and config
    key = (tmp_path / "repo" / "keys" / "repokey").read_bytes()
    with pytest.raises(WrongPassphraseError):
        Repository.init(LocalBackend(str(tmp_path / "repo")), "not the same", kdf=FAST_KDF)
    assert (tmp_path / "repo" / "keys" / "repokey").read_bytes() == key
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSPHRASE, kdf=FAST_KDF, chunk_size=4096)
    assert repo.config["id"] == json.loads(key)["config_id"]
    assert (tmp_path / "repo" / "keys" / "repokey").read_bytes() == key


def edit_config(path: t.Any, **changes: t.Any) -> None:
    doc = json.loads(path.read_text())
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("changes, error, match", [
    ({"chunk_size": 8192}, CorruptMetadataError, "MAC does not match"),   # reproduced: an edited chunk_size
    ({"mac": None}, CorruptMetadataError, "MAC was removed"),
    ({"chunk_size": 12288}, RepositoryFormatError, "power of two"),
    ({"pack_size": 10 ** 15}, RepositoryFormatError, "pack_size must be"),
    ({"segment_chunks": -1}, RepositoryFormatError, "segment_chunks must be"),
    ({"encryption": "rot13"}, RepositoryFormatError, "encryption must be"),
    ({"version": 99}, RepositoryFormatError, "format version 99"),
])
def test_edited_config_is_refused(tmp_path: t.Any, changes: dict[str, t.Any], error: type[Exception],
                                  match: str) -> None:
    make_repo(str(tmp_path / "repo"))
    edit_config(tmp_path / "repo" / "config", **changes)
    with pytest.raises(error, match=match) as info:
        Repository.open(LocalBackend(str(tmp_path / "repo")), PASSPHRASE)
    assert "config" in str(info.value)


def test_key_file_swapped_from_another_repository_is_refused(tmp_path: t.Any) -> None:
    make_repo(str(tmp_path / "a"))
    make_repo(str(tmp_path / "b"))  # same passphrase
    (tmp_path / "a" / "keys" / "repokey").write_bytes((tmp_path / "b" / "keys" / "repokey").read_bytes())
    with pytest.raises(WrongPassphraseError, match="swapped"):
        Repository.open(LocalBackend(str(tmp_path / "a")), PASSPHRASE)


@pytest.mark.parametrize("kdf_change, match", [
    ({"memory_kib": 1 << 40}, "memory_kib"),
    ({"iterations": 10 ** 9}, "iterations"),
    ({"name": "md5"}, "unknown key derivation"),
])
def test_absurd_kdf_parameters_are_refused_at_once(tmp_path: t.Any, kdf_change: dict[str, t.Any],
                                                   match: str) -> None:
    make_repo(str(tmp_path / "repo"))
    path = tmp_path / "repo" / "keys" / "repokey"
    doc = json.loads(path.read_text())
    doc["kdf"].update(kdf_change)
    path.write_text(json.dumps(doc))
    started = time.monotonic()
    with pytest.raises(RepositoryFormatError, match=match):
        Repository.open(LocalBackend(str(tmp_path / "repo")), PASSPHRASE)
    assert time.monotonic() - started < 5


def test_key_file_version_edit_is_a_tamper_not_a_downgrade(tmp_path: t.Any) -> None:
    make_repo(str(tmp_path / "repo"))
    path = tmp_path / "repo" / "keys" / "repokey"
    doc = json.loads(path.read_text())
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    edit_config(tmp_path / "repo" / "config", mac=None, chunk_size=8192)
    with pytest.raises(CorruptMetadataError, match="version field was changed"):
        Repository.open(LocalBackend(str(tmp_path / "repo")), PASSPHRASE)


def test_unencrypted_config_checksum_finds_damage(tmp_path: t.Any) -> None:
    make_repo(str(tmp_path / "repo"), encryption="none")
    edit_config(tmp_path / "repo" / "config", chunk_size=8192)
    with pytest.raises(CorruptMetadataError, match="checksum does not match"):
        Repository.open(LocalBackend(str(tmp_path / "repo")))
