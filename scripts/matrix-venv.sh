#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Cached venvs for the ansible-core version matrix (scripts/test.sh --only matrix): the oldest ansible-core that
# meta/runtime.yml declares, on Python 3.11, and the newest, 2.21, on Python 3.13. Each holds that ansible-core,
# the modules' runtime libraries (requirements.txt) and what the unit tests import.
#
#   scripts/matrix-venv.sh floor|newest     create or update .cache/matrix/<name>; print its bin folder
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
  # The floor must match requires_ansible in meta/runtime.yml (tests/unit/test_version_matrix.py checks it).
  floor) CORE="ansible-core==2.17.14"; PYVER=3.11 ;;
  newest) CORE="ansible-core==2.21.5"; PYVER=3.13 ;;
  *) echo "usage: $0 floor|newest" >&2; exit 2 ;;
esac
PY=""
for candidate in "$HOME"/.pyenv/versions/"$PYVER".*/bin/python "python$PYVER"; do
  if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
done
[ -n "$PY" ] || { echo "matrix-venv: no Python $PYVER found (pyenv install $PYVER)" >&2; exit 1; }
VENV="$ROOT/.cache/matrix/$1-py$PYVER"
# What the unit tests import besides the runtime requirements; pinned as in requirements-dev.txt.
TEST_REQS=(pytest==9.2.0 pytest-xdist==3.8.0 hypothesis==6.170.15 PyYAML==6.0.3
  tree-sitter==0.26.1 tree-sitter-powershell==0.26.4)
STAMP="$VENV/.vmsafe-stamp"
WANT=$(printf '%s\n' "$CORE" "${TEST_REQS[@]}" | cat - "$ROOT/requirements.txt" | sha1sum | cut -c1-12)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "$CORE" "${TEST_REQS[@]}" -r "$ROOT/requirements.txt" \
      2>"$VENV/pip.err"; then
    grep -v "is ignored: it is neither" "$VENV/pip.err" >&2
    exit 1
  fi
  echo "$WANT" >"$STAMP"
fi
echo "$VENV/bin"
