# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Connection options shared by every vmsafe.protect module."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hypervisor:
    description:
      - Which hypervisor provider to use.
      - Can also be set with the E(VMSAFE_HYPERVISOR) environment variable.
    type: str
    default: libvirt
    choices: [libvirt, vmware, hyperv, virtualbox, azure]
    version_added: 0.1.0
  uri:
    description:
      - The libvirt connection URI, for example V(qemu:///system) or V(qemu+ssh://root@kvm01/system).
      - For V(qemu+ssh://), the SSH key must be usable without a prompt (agent or unencrypted key).
      - When not set, E(VMSAFE_LIBVIRT_URI) or E(LIBVIRT_DEFAULT_URI) is used, then V(qemu:///system).
    type: str
    version_added: 0.1.0
  connect_timeout:
    description:
      - Seconds to wait for the connection to the hypervisor before failing.
    type: int
    default: 30
    version_added: 0.1.0
  hostname:
    description:
      - The host to connect to, for O(hypervisor=vmware) the vCenter or ESXi host, for O(hypervisor=hyperv) the Hyper-V
        host whose WinRM HTTPS listener is used.
      - For O(hypervisor=virtualbox), the VirtualBox host reached over SSH; when not set, C(VBoxManage) runs on the host
        that runs the module.
      - When not set, E(VMWARE_HOST) (for O(hypervisor=vmware) only) or E(VMSAFE_HYPERV_HOST) (for
        O(hypervisor=hyperv) only) is used, then E(VMSAFE_HOST).
    type: str
    version_added: 0.1.0
  username:
    description:
      - The account to log in with (vSphere user; for Hyper-V V(DOMAIN\\user) or V(user@domain); for VirtualBox the SSH
        user, who must be the user owning the VMs).
      - When not set, E(VMWARE_USER) (for O(hypervisor=vmware) only) or E(VMSAFE_HYPERV_USER) (for
        O(hypervisor=hyperv) only) is used, then E(VMSAFE_USER).
    type: str
    aliases: [user, admin]
    version_added: 0.1.0
  password:
    description:
      - The password of O(username). It is never logged or returned.
      - For O(hypervisor=virtualbox), the SSH password, or the passphrase of O(ssh_key_file).
      - When not set, E(VMWARE_PASSWORD) (for O(hypervisor=vmware) only) or E(VMSAFE_HYPERV_PASSWORD) (for
        O(hypervisor=hyperv) only) is used, then E(VMSAFE_PASSWORD). A password read from the environment is masked
        in the output too.
    type: str
    aliases: [pass, pwd]
    version_added: 0.1.0
  port:
    description:
      - The TCP port to connect to. When not set, E(VMWARE_PORT) (for O(hypervisor=vmware) only) or
        E(VMSAFE_HYPERV_PORT) (for O(hypervisor=hyperv) only), then E(VMSAFE_PORT), then V(443) for
        O(hypervisor=vmware), V(5986) (WinRM HTTPS) for O(hypervisor=hyperv) and V(22) (SSH) for
        O(hypervisor=virtualbox).
    type: int
    version_added: 0.1.0
  validate_certs:
    description:
      - Whether to verify the host's TLS certificate. Set V(false) only for lab hosts with self-signed certificates;
        the connection is then open to impersonation.
      - For O(hypervisor=virtualbox) over SSH, V(false) accepts a host key that is not in O(ssh_known_hosts).
      - When not set, E(VMWARE_VALIDATE_CERTS) (for O(hypervisor=vmware) only) or E(VMSAFE_HYPERV_VALIDATE_CERTS)
        (for O(hypervisor=hyperv) only), then E(VMSAFE_VALIDATE_CERTS), then V(true).
      - The E(VMWARE_*) variables are never read for another hypervisor, so a vSphere setting cannot send vCenter
        credentials to a Hyper-V host or turn off its certificate checks.
    type: bool
    version_added: 0.1.0
  datacenter:
    description:
      - Look for VMs in this datacenter only, for O(hypervisor=vmware). All datacenters when not set.
    type: str
    version_added: 0.1.0
  folder:
    description:
      - Look for VMs in this VM folder only (and its subfolders), for O(hypervisor=vmware).
      - Relative to the datacenter's VM folder (needs O(datacenter)), or a full inventory path such as V(/DC0/vm/prod).
    type: str
    version_added: 0.1.0
  transport:
    description:
      - For O(hypervisor=hyperv), how WinRM authenticates. Messages always go over HTTPS.
      - V(certificate) uses O(client_cert) and O(client_key) instead of a password.
    type: str
    default: ntlm
    choices: [ntlm, kerberos, credssp, certificate]
    version_added: 0.1.0
  ca_path:
    description:
      - For O(hypervisor=hyperv), a PEM file of the CA certificates that may sign the WinRM listener's
        certificate. When not set, the system's trust store is used.
      - For O(hypervisor=azure), the CA certificates trusted for Azure Resource Manager, the authority and the disks'
        SAS URLs (a TLS-inspecting proxy, Azure Stack Hub, or a test endpoint).
    type: path
    version_added: 0.1.0
  client_cert:
    description:
      - For O(hypervisor=hyperv) and O(transport=certificate), the client certificate (PEM).
    type: path
    version_added: 0.1.0
  client_key:
    description:
      - For O(hypervisor=hyperv) and O(transport=certificate), the private key of O(client_cert) (PEM).
    type: path
    version_added: 0.1.0
  vboxmanage:
    description:
      - For O(hypervisor=virtualbox), the C(VBoxManage) command on the VirtualBox host (a name looked up in C(PATH), or a
        full path).
      - When not set, E(VMSAFE_VBOXMANAGE) is used, then V(VBoxManage).
    type: str
    version_added: 0.1.0
  ssh_key_file:
    description:
      - For O(hypervisor=virtualbox) with O(hostname), the private key to log in with over SSH. When not set, the SSH
        agent and the default keys in C(~/.ssh) are tried.
      - When not set, E(VMSAFE_SSH_KEY_FILE) is used.
    type: path
    version_added: 0.1.0
  ssh_known_hosts:
    description:
      - For O(hypervisor=virtualbox) with O(hostname), the known_hosts file that must hold the host's key. When not set,
        E(VMSAFE_SSH_KNOWN_HOSTS), then the user's C(~/.ssh/known_hosts).
    type: path
  auth_source:
    description:
      - For O(hypervisor=azure), where the credentials come from, as in azure.azcollection.
      - V(auto) uses O(client_id), O(secret) and O(tenant) when set (or their E(AZURE_CLIENT_ID), E(AZURE_SECRET),
        E(AZURE_TENANT) variables), then the O(profile) of C(~/.azure/credentials), then azure-identity's
        DefaultAzureCredential (environment, workload or managed identity, Azure CLI).
      - V(env) uses only the options and their E(AZURE_*) variables, V(credential_file) only C(~/.azure/credentials),
        V(cli) the Azure CLI's login, V(msi) the managed identity of the machine running the module (O(client_id)
        picks a user-assigned one).
      - When not set, E(ANSIBLE_AZURE_AUTH_SOURCE) is used, then V(auto).
    type: str
    default: auto
    choices: [auto, cli, credential_file, env, msi]
    version_added: 0.1.0
  profile:
    description:
      - For O(hypervisor=azure), the section of C(~/.azure/credentials) to read (keys C(subscription_id),
        C(client_id), C(secret), C(tenant)); V(default) when not set. E(AZURE_PROFILE) when not set.
    type: str
    version_added: 0.1.0
  subscription_id:
    description:
      - For O(hypervisor=azure), the subscription holding the VMs. E(AZURE_SUBSCRIPTION_ID) when not set, then the
        profile's C(subscription_id).
    type: str
    version_added: 0.1.0
  client_id:
    description:
      - For O(hypervisor=azure), the application (client) id of the service principal. E(AZURE_CLIENT_ID) when not set.
    type: str
    version_added: 0.1.0
  secret:
    description:
      - For O(hypervisor=azure), the service principal's client secret. It is never logged or returned.
      - E(AZURE_SECRET) or E(AZURE_CLIENT_SECRET) when not set.
    type: str
    version_added: 0.1.0
  tenant:
    description:
      - For O(hypervisor=azure), the Microsoft Entra tenant (directory) id. E(AZURE_TENANT) or E(AZURE_TENANT_ID) when
        not set.
    type: str
    version_added: 0.1.0
  cloud_environment:
    description:
      - For O(hypervisor=azure), the Azure cloud whose Resource Manager and authority to use.
      - E(AZURE_CLOUD_ENVIRONMENT) when not set.
    type: str
    default: AzureCloud
    choices: [AzureCloud, AzureChinaCloud, AzureUSGovernment]
    version_added: 0.1.0
  base_url:
    description:
      - For O(hypervisor=azure), another Azure Resource Manager endpoint than the cloud's (Azure Stack Hub, a private
        endpoint, or a test fake), for example V(https://management.local.azurestack.external).
      - E(VMSAFE_AZURE_BASE_URL) when not set.
    type: str
    version_added: 0.1.0
  authority_host:
    description:
      - For O(hypervisor=azure), another Microsoft Entra authority than the cloud's. Instance discovery is turned off
        for an authority that is not one of the public clouds'. E(AZURE_AUTHORITY_HOST) when not set.
    type: str
    version_added: 0.1.0
  resource_group:
    description:
      - For O(hypervisor=azure), look for VMs in this resource group only (all of the subscription when not set).
        Snapshot sets and the disks of a revert are made in the VM's own resource group.
    type: str
    version_added: 0.1.0
requirements:
  - libvirt-python (for O(hypervisor=libvirt)), on the host that runs the module
  - pyvmomi (for O(hypervisor=vmware)), on the host that runs the module
  - azure-mgmt-compute, azure-identity and azure-storage-blob (for O(hypervisor=azure)), on the host that runs
    the module
  - pywinrm (for O(hypervisor=hyperv)), on the host that runs the module; requests-kerberos or requests-credssp
    for those transports
  - paramiko (for O(hypervisor=virtualbox) with O(hostname)), on the host that runs the module; VirtualBox's
    C(VBoxManage) on the VirtualBox host
"""
