#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The README's first command: set up the lab, make a throwaway local QEMU/libvirt VM, run the demo playbook
# (snapshot -> change the disk -> revert -> prove the content is back -> consolidate -> report), then remove the VM.
#   scripts/demo.sh [--keep]     --keep leaves the VM (vmsafe-demo) for you to play with
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

scripts/lab.sh install
scripts/lab.sh start >/dev/null
mkdir -p .lab/collections/ansible_collections/vmsafe
ln -sfn "$ROOT" .lab/collections/ansible_collections/vmsafe/protect
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.lab/collections" PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false

VM=vmsafe-demo
.venv/bin/python tests/lab/labvm.py destroy "$VM" 2>/dev/null || true
.venv/bin/python tests/lab/labvm.py create "$VM" >/dev/null
cleanup() { [ "$KEEP" = 1 ] || .venv/bin/python tests/lab/labvm.py destroy "$VM"; }
trap cleanup EXIT
ansible-playbook -e "ansible_python_interpreter=$ROOT/.venv/bin/python" -e "demo_vm=$VM" tests/lab/demo.yml
