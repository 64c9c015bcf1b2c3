# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Options that name and open a backup repository."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  repository:
    description:
      - Where the backup repository is, a local path (V(/backup/vmsafe)) or V(sftp://user@host[:port]/path).
      - A password in the URL is refused (and masked in the task's output). Use O(repository_password) or, better,
        O(repository_key_file). SFTP operations time out after 30 seconds without an answer.
      - Can also be set with E(VMSAFE_REPOSITORY).
      - Keep it on other storage than the VMs; a backup on the same disk dies with it.
    type: str
    required: true
  passphrase:
    description:
      - Passphrase of an encrypted repository. It unlocks the repository key; it is never logged or returned.
      - Can also be set with E(VMSAFE_PASSPHRASE). Use Ansible Vault or your credential store, not plain text.
    type: str
  repository_key_file:
    description:
      - SSH private key for an V(sftp://) repository.
    type: path
  repository_password:
    description:
      - SSH password for an V(sftp://) repository (prefer O(repository_key_file)).
    type: str
  repository_known_hosts:
    description:
      - known_hosts file used to check the SFTP server's host key (default the user's).
    type: path
  repository_host_key_checking:
    description:
      - Refuse an SFTP server whose host key is unknown. Set V(false) only to accept a new server's key once. It is
        then recorded (pinned) in O(repository_known_hosts) (or the user's C(~/.ssh/known_hosts)), and a later,
        different key is refused. The task fails if the key cannot be recorded.
      - A key that differs from the recorded one is always refused.
    type: bool
    default: true
  lock_timeout:
    description:
      - How long to wait, in seconds, for a conflicting repository lock (another host's backup while this task
        prunes, a prune while this task backs up) before failing. Several backups share the repository; prune,
        garbage collection and repair need it alone, so with a wait they queue instead of failing.
      - V(0) fails at once when the repository is busy.
      - Can also be set with E(VMSAFE_LOCK_TIMEOUT).
    type: int
    default: 300
    version_added: 0.1.0
requirements:
  - zstandard, cryptography, and paramiko for V(sftp://), on the host that runs the module
"""
