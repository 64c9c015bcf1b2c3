#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_repository
short_description: Create a vmsafe backup repository, or change its passphrase
version_added: 0.1.0
description:
  - Makes sure the repository exists (creates it when it does not) and opens with the passphrase.
  - With O(new_passphrase), re-wraps the repository key under the new passphrase. Only the key file changes; every
    backup stays readable with the new passphrase. A repository made by an older release also gets its config
    authenticated then.
  - Creation never replaces anything. Several hosts running this at once create one repository, and a location
    that holds a key or data without a config is refused.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the repository would be created or its passphrase changed; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - When the repository already opens with O(new_passphrase), nothing is changed.
options:
  encryption:
    description:
      - Encryption of a repository this task creates. Ignored (with a warning when it differs) for an existing one.
    type: str
    choices: [aes-256-gcm, none]
    default: aes-256-gcm
  compression_level:
    description:
      - zstd level for a repository this task creates (0 turns compression off).
    type: int
    default: 2
  kdf_memory:
    description:
      - Memory cost in MiB of the key derivation (Argon2id, t=3, p=4) that protects the repository key with the
        passphrase. Every job that opens the repository pays it once, in time and in peak memory.
      - Used when this task creates the repository or changes its passphrase. Given for an existing repository whose
        key file uses another memory cost, the key is re-wrapped under the same passphrase with this one.
      - When not set, a new repository gets the default of 32 MiB (see docs/repository-format.md for the measurement
        behind it), and an existing key file is left as it is. RFC 9106's second recommended option is 64.
    type: int
    version_added: 0.1.0
  new_passphrase:
    description:
      - The passphrase the repository key is to be wrapped with from now on. O(passphrase) must be the current one.
      - Update the vault variable the other jobs use in the same change; they fail with "Wrong passphrase" until then.
    type: str
notes:
  - The passphrases are never logged or returned.
seealso:
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_verify
"""

EXAMPLES = r"""
- name: The nightly repository exists
  vmsafe.protect.backup_repository:
    repository: sftp://backup@vault01/srv/vmsafe
    repository_key_file: /etc/vmsafe/id_ed25519
    passphrase: "{{ vmsafe_passphrase }}"

- name: A repository whose key derivation costs 256 MiB (RFC 9106 spends more where memory allows)
  vmsafe.protect.backup_repository:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    kdf_memory: 256

- name: Rotate the repository passphrase
  vmsafe.protect.backup_repository:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_old_passphrase }}"
    new_passphrase: "{{ vmsafe_passphrase }}"
"""

RETURN = r"""
created:
  description: Whether this task created the repository (would create it, in check mode).
  returned: always
  type: bool
  sample: false
passphrase_changed:
  description: Whether the passphrase was changed (would be, in check mode).
  returned: always
  type: bool
  sample: true
kdf_changed:
  description: Whether the key was re-wrapped for O(kdf_memory) (would be, in check mode).
  returned: always
  type: bool
  sample: false
info:
  description: The repository's parameters (none of them secret).
  returned: success, except in check mode when the repository does not exist yet
  type: dict
  contains:
    id:
      description: The repository's random id.
      type: str
    encryption:
      description: V(aes-256-gcm) or V(none).
      type: str
    format_version:
      description:
        - The repository's format version. V(2) (repositories this release creates) compresses
          a backup's new chunks together in frames; V(1) stores each chunk alone. This collection reads and writes
          both; an older collection refuses version 2 with "Upgrade vmsafe.protect".
      type: int
    chunk_size:
      description: Chunk size in bytes.
      type: int
    compression_level:
      description: zstd level new data is written with.
      type: int
    key_file_version:
      description: Version of C(keys/repokey); 2 binds it to the config and makes the config MAC mandatory.
      type: int
    config_authenticated:
      description: Whether the config carries a MAC (encrypted) or a checksum (unencrypted).
      type: bool
    kdf:
      description: The key file's key derivation and its parameters (the salt left out); empty when unencrypted.
      type: dict
  sample: {"id": "3f9a1c2e0b7d4e5f8a9b0c1d2e3f4a5b", "encryption": "aes-256-gcm", "format_version": 2, "chunk_size": 65536,
           "compression_level": 2, "key_file_version": 2, "config_authenticated": true,
           "kdf": {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 32768}}
elapsed:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.42
"""

import json
import time
import traceback
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import mask_url_passwords
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import kdf_for_memory
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import open_repository, repository_spec, wrap


def key_file(repo: t.Any) -> dict[str, t.Any]:
    if repo.encryption == "none":
        return {}
    try:
        doc = json.loads(repo.backend.read("keys/repokey"))
    except (ValueError, FileNotFoundError, backup_errors.BackupError):
        return {}
    return doc if isinstance(doc, dict) else {}


def info(repo: t.Any) -> dict[str, t.Any]:
    doc = key_file(repo)
    kdf = doc.get("kdf") if isinstance(doc.get("kdf"), dict) else {}
    return {"id": repo.config["id"], "encryption": repo.encryption, "format_version": int(repo.config["version"]),
            "chunk_size": repo.chunk_size,
            "compression_level": repo.compression_level, "key_file_version": int(doc.get("version", 0) or 0),
            "config_authenticated": "mac" in repo.config or "checksum" in repo.config,
            "kdf": {k: v for k, v in kdf.items() if k != "salt"}}


def wanted_kdf(p: dict[str, t.Any]) -> dict[str, t.Any] | None:
    if p["kdf_memory"] is None:
        return None
    try:
        return kdf_for_memory(p["kdf_memory"])
    except backup_errors.BackupError as exc:
        raise VmsafeError(f"{exc} Set kdf_memory to a number of MiB in that range, or leave it out.") from exc


def work(module: t.Any) -> dict[str, t.Any]:
    p = module.params
    result: dict[str, t.Any] = {"changed": False, "created": False, "passphrase_changed": False, "kdf_changed": False}
    new = p["new_passphrase"]
    kdf = wanted_kdf(p)
    try:
        repo = open_repository(p)
    except VmsafeError as exc:
        cause = exc.__cause__
        if isinstance(cause, backup_errors.WrongPassphraseError) and new:
            repo = open_repository(dict(p, passphrase=new))  # already changed by an earlier run
            result["info"] = info(repo)
            repo.close()
            return result
        if not isinstance(cause, backup_errors.RepositoryNotFoundError):
            raise
        result.update(changed=True, created=True)
        if module.check_mode:
            result["passphrase_changed"] = bool(new)
            return result
        create: dict[str, t.Any] = {"encryption": p["encryption"], "compression_level": p["compression_level"]}
        if kdf is not None and p["encryption"] != "none":
            create["kdf"] = kdf
        repo = open_repository(p, create=create)
    try:
        if not result["created"] and repo.encryption != p["encryption"]:
            module.warn(f"The repository is {repo.encryption}, not {p['encryption']}: encryption is chosen at creation "
                        "and cannot change.")
        current = info(repo)["kdf"]
        rewrap = (kdf is not None and not result["created"] and repo.encryption != "none"
                  and any(current.get(k) != v for k, v in kdf.items()))
        if (new and new != p["passphrase"]) or rewrap:
            result.update(changed=True, passphrase_changed=bool(new and new != p["passphrase"]), kdf_changed=rewrap)
            if not module.check_mode:
                try:
                    repo.change_passphrase(new or p["passphrase"], kdf)
                except backup_errors.BackupError as exc:
                    raise wrap(exc, p["repository"]) from exc
        result["info"] = info(repo)
    finally:
        repo.close()
    return result


def main() -> None:
    spec = repository_spec().update_argspec(
        encryption={"type": "str", "default": "aes-256-gcm", "choices": ["aes-256-gcm", "none"]},
        compression_level={"type": "int", "default": 2},
        new_passphrase={"type": "str", "no_log": True},
        kdf_memory={"type": "int"},
    )
    module = spec.create_ansible_module(supports_check_mode=True)
    mask_url_passwords(module)
    started = time.monotonic()
    try:
        result = work(module)
    except VmsafeError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    except Exception as exc:  # pylint: disable=broad-except  # the one place that turns any crash into fail_json
        module.fail_json(msg=f"Unexpected error ({type(exc).__name__}): {exc}", exception=traceback.format_exc())
    result["elapsed"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
