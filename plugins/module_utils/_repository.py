# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Options that name and open a backup repository (doc fragment vmsafe.protect.repository)."""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import env_fallback

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmsafeError


class RepositoryError(VmsafeError):
    """A backup repository error, with the engine's message (which names the fix)."""


def repository_spec() -> ArgumentSpec:
    return ArgumentSpec({
        "repository": {"type": "str", "required": True, "fallback": (env_fallback, ["VMSAFE_REPOSITORY"])},
        "passphrase": {"type": "str", "no_log": True, "fallback": (env_fallback, ["VMSAFE_PASSPHRASE"])},
        "repository_key_file": {"type": "path", "no_log": False},
        "repository_password": {"type": "str", "no_log": True},
        "repository_known_hosts": {"type": "path"},
        "repository_host_key_checking": {"type": "bool", "default": True},
        "lock_timeout": {"type": "int", "default": 300, "fallback": (env_fallback, ["VMSAFE_LOCK_TIMEOUT"])},
    })


def open_repository(params: dict[str, t.Any], create: dict[str, t.Any] | None = None) -> Repository:
    """Open the repository the options name; with ``create`` (init options), create it when it does not exist.

    Raises RepositoryError with the engine's message.
    """
    options: dict[str, t.Any] = {}
    if params["repository"].startswith("sftp://"):
        if params.get("repository_key_file"):
            options["key_filename"] = params["repository_key_file"]
        if params.get("repository_password"):
            options["password"] = params["repository_password"]
        if params.get("repository_known_hosts"):
            options["known_hosts"] = params["repository_known_hosts"]
        if not params.get("repository_host_key_checking", True):
            options["host_key_policy"] = "accept_new"
    wait = max(0, int(params.get("lock_timeout") or 0))
    try:
        backend = open_backend(params["repository"], **options)
        try:
            repo = Repository.open(backend, params.get("passphrase"))
        except backup_errors.RepositoryNotFoundError:
            if create is None:
                raise
            try:
                repo = Repository.init(backend, passphrase=params.get("passphrase"), lock_wait=max(wait, 60), **create)
            except backup_errors.RepositoryExistsError:
                # another host's first night made it meanwhile (init: true on several hosts at once): use theirs
                repo = Repository.open(backend, params.get("passphrase"))
        repo.lock_wait = float(wait)
        return repo
    except backup_errors.BackupError as exc:
        raise wrap(exc, params["repository"]) from exc


def wrap(exc: Exception, repository: str) -> RepositoryError:
    return RepositoryError(f"Repository {repository}: {exc}")
