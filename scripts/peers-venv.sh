#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# A separate venv with the peers' current VMware collections (ansible 14.5: vmware.vmware 2.11, community.vmware 6.5),
# which need Python >= 3.12, for tests/integration/test_vmware_peers.py and benchmarks/vmware_bench.py.
#
#   scripts/peers-venv.sh        create or update .cache/peers-venv; print its bin folder
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.cache/peers-venv"
PY=${VMSAFE_PEERS_PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "peers-venv: no Python 3.12+ found; set VMSAFE_PEERS_PYTHON" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# requests: both VMware collections import it, and neither pip package pulls it in.
if ! "$VENV/bin/python" -c "import ansible, pyVmomi, requests" 2>/dev/null; then
  "$VENV/bin/pip" install -q "ansible==14.5.*" requests "pyvmomi==9.1.1.0" 2>&1 | grep -v "is ignored" || true
fi
echo "$VENV/bin"
