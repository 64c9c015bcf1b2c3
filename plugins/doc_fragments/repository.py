# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Options that name and open a backup repository."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  repository:
    description:
      - Where the backup repository is, a local path (V(/backup/vmsafe)), V(sftp://user@host[:port]/path) or
        V(s3://bucket/prefix) on AWS S3 or an S3-compatible store (see the O(repository_s3_endpoint_url) and the other
        C(repository_s3_*) options). Credentials in an S3 URL are refused.
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
  repository_s3_endpoint_url:
    description:
      - Endpoint of an S3-compatible store (Ceph RGW, SeaweedFS, MinIO...) for an V(s3://) repository, for example
        V(https://s3.example.com:8333). Leave unset for AWS S3.
      - Can also be set with E(AWS_ENDPOINT_URL_S3) or E(AWS_ENDPOINT_URL).
    type: str
    version_added: 0.1.0
  repository_s3_region:
    description:
      - Region of the bucket of an V(s3://) repository.
      - Can also be set with E(AWS_REGION) or E(AWS_DEFAULT_REGION); otherwise the AWS profile's region.
    type: str
    version_added: 0.1.0
  repository_s3_access_key:
    description:
      - Access key id for an V(s3://) repository. Without it (and O(repository_s3_secret_key)), the standard AWS
        credential chain is used (E(AWS_ACCESS_KEY_ID)/E(AWS_SECRET_ACCESS_KEY), O(repository_s3_profile), the shared
        credentials file, an instance role).
      - Give backups a credential that can write new objects but not delete them, and run M(vmsafe.protect.backup_prune)
        with another one; see the collection's C(docs/backup.md).
      - Can also be set with E(AWS_ACCESS_KEY_ID).
    type: str
    version_added: 0.1.0
  repository_s3_secret_key:
    description:
      - Secret access key for an V(s3://) repository. Never logged or returned.
      - Can also be set with E(AWS_SECRET_ACCESS_KEY).
    type: str
    version_added: 0.1.0
  repository_s3_session_token:
    description:
      - Session token of temporary credentials for an V(s3://) repository. Never logged or returned.
      - Can also be set with E(AWS_SESSION_TOKEN).
    type: str
    version_added: 0.1.0
  repository_s3_profile:
    description:
      - AWS profile (shared config and credentials files) for an V(s3://) repository.
      - Can also be set with E(AWS_PROFILE).
    type: str
    version_added: 0.1.0
  repository_s3_ca_bundle:
    description:
      - CA certificate bundle (PEM) that signed the S3 endpoint's TLS certificate, for a private CA.
      - Can also be set with E(AWS_CA_BUNDLE).
    type: path
    version_added: 0.1.0
  repository_s3_validate_certs:
    description:
      - Verify the S3 endpoint's TLS certificate. Set V(false) only for a test store; prefer O(repository_s3_ca_bundle).
    type: bool
    default: true
    version_added: 0.1.0
  repository_s3_path_style:
    description:
      - Address the bucket in the path (V(https://endpoint/bucket/key)) instead of the host name
        (V(https://bucket.endpoint/key)).
      - Default V(true) when O(repository_s3_endpoint_url) is set (most S3-compatible stores), else automatic.
    type: bool
    version_added: 0.1.0
requirements:
  - zstandard, cryptography, and paramiko for V(sftp://), boto3 for V(s3://), on the host that runs the module
"""
