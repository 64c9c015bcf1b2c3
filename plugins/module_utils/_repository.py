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
        "repository_s3_endpoint_url": {"type": "str", "fallback": (env_fallback, ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])},
        "repository_s3_region": {"type": "str", "fallback": (env_fallback, ["AWS_REGION", "AWS_DEFAULT_REGION"])},
        "repository_s3_access_key": {"type": "str", "no_log": False,
                                     "fallback": (env_fallback, ["AWS_ACCESS_KEY_ID"])},
        "repository_s3_secret_key": {"type": "str", "no_log": True,
                                     "fallback": (env_fallback, ["AWS_SECRET_ACCESS_KEY"])},
        "repository_s3_session_token": {"type": "str", "no_log": True,
                                        "fallback": (env_fallback, ["AWS_SESSION_TOKEN"])},
        "repository_s3_profile": {"type": "str", "fallback": (env_fallback, ["AWS_PROFILE"])},
        "repository_s3_ca_bundle": {"type": "path", "fallback": (env_fallback, ["AWS_CA_BUNDLE"])},
        "repository_s3_validate_certs": {"type": "bool", "default": True},
        "repository_s3_path_style": {"type": "bool"},
    })


def open_repository(params: dict[str, t.Any], create: dict[str, t.Any] | None = None) -> Repository:
    """Open the repository the options name; with ``create`` (init options), create it when it does not exist.

    Raises RepositoryError with the engine's message.
    """
    options = backend_options(params)
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


def backend_options(params: dict[str, t.Any]) -> dict[str, t.Any]:
    """open_backend() options (besides the location) from the module's repository options.

    Plain data (no Ansible objects): a process that outlives the module (the instant-recovery NBD server) gets them
    as JSON and opens the same repository with open_backend(params["repository"], **options).
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
    elif params["repository"].startswith("s3://"):
        options.update(s3_options(params))
    return options


def s3_options(params: dict[str, t.Any]) -> dict[str, t.Any]:
    """open_backend() options of an s3:// repository from the module's repository_s3_* options."""
    names = {"endpoint_url": "repository_s3_endpoint_url", "region": "repository_s3_region",
             "access_key": "repository_s3_access_key", "secret_key": "repository_s3_secret_key",
             "session_token": "repository_s3_session_token", "profile": "repository_s3_profile",
             "ca_bundle": "repository_s3_ca_bundle", "path_style": "repository_s3_path_style"}
    options: dict[str, t.Any] = {key: params[name] for key, name in names.items() if params.get(name) is not None}
    options["validate_certs"] = params.get("repository_s3_validate_certs", True) is not False
    return options


def wrap(exc: Exception, repository: str) -> RepositoryError:
    return RepositoryError(f"Repository {repository}: {exc}")
