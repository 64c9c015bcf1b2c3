# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The repository_s3_* module options: what reaches open_backend(), secrets marked no_log, AWS env fallbacks."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _repository


def test_s3_options_map_to_backend_options() -> None:
    params = {"repository": "s3://bucket/prefix", "repository_s3_endpoint_url": "https://s3.example.com",
              "repository_s3_region": "eu-west-1", "repository_s3_access_key": "AKIAEXAMPLE",
              "repository_s3_secret_key": "secret", "repository_s3_session_token": None,
              "repository_s3_profile": None, "repository_s3_ca_bundle": "/etc/ca.pem",
              "repository_s3_validate_certs": True, "repository_s3_path_style": False}
    assert _repository.s3_options(params) == {
        "endpoint_url": "https://s3.example.com", "region": "eu-west-1", "access_key": "AKIAEXAMPLE",
        "secret_key": "secret", "ca_bundle": "/etc/ca.pem", "path_style": False, "validate_certs": True}
    assert _repository.s3_options({"repository": "s3://b/p", "repository_s3_validate_certs": False}) == {
        "validate_certs": False}


def test_s3_secrets_are_no_log_and_fall_back_to_the_aws_variables() -> None:
    spec = _repository.repository_spec().argument_spec
    assert spec["repository_s3_secret_key"]["no_log"] is True
    assert spec["repository_s3_session_token"]["no_log"] is True
    assert spec["repository_s3_access_key"]["no_log"] is False  # an id, not a secret
    fallbacks = {name: spec[name]["fallback"][1] for name in spec if name.startswith("repository_s3_")
                 and "fallback" in spec[name]}
    assert fallbacks["repository_s3_access_key"] == ["AWS_ACCESS_KEY_ID"]
    assert fallbacks["repository_s3_secret_key"] == ["AWS_SECRET_ACCESS_KEY"]
    assert "AWS_DEFAULT_REGION" in fallbacks["repository_s3_region"]
    assert "AWS_ENDPOINT_URL" in fallbacks["repository_s3_endpoint_url"]


def test_open_repository_wraps_a_missing_bucket_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    seen: dict[str, t.Any] = {}

    def fake_open_backend(location: str, **options: t.Any) -> t.Any:
        seen.update(options, location=location)
        raise _repository.backup_errors.BackendError("Cannot use the bucket of s3://b/p: does not exist.")

    monkeypatch.setattr(_repository, "open_backend", fake_open_backend)
    with pytest.raises(_repository.RepositoryError, match="Repository s3://bucket/p: Cannot use the bucket"):
        _repository.open_repository({"repository": "s3://bucket/p", "repository_s3_region": "us-east-1",
                                     "repository_s3_validate_certs": True, "lock_timeout": 0})
    assert seen == {"location": "s3://bucket/p", "region": "us-east-1", "validate_certs": True}
