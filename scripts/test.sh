#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The project's test command (the README's second command; .ci/run calls it).
#
#   scripts/test.sh                 everything that runs by default: sanity, lint, build/install/ansible-doc,
#                                   unit tests, integration tests on real libvirtd + QEMU
#   scripts/test.sh --long          also the long suites (50-run fault injection, benchmarks smoke, ...)
#   scripts/test.sh --only STEP     one step: sanity | matrix | lint | build | targets | pytest  (pytest args after --)
#
# It installs what it needs (scripts/lab.sh install) and starts libvirtd (scripts/lab.sh start): run it as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ONLY=""
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --long) export VMSAFE_LONG_TESTS=1 ;;
    --only) ONLY=$2; shift ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) echo "usage: $0 [--long] [--only sanity|matrix|lint|build|targets|pytest] [-- pytest args]" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n=== %s ===\n' "$*"; }
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

step "lab: install and start"
scripts/lab.sh install
scripts/lab.sh start >/dev/null
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"

# The collection must sit at .../ansible_collections/vmsafe/protect: a symlink for live use, a copy for ansible-test.
LINKDIR="$ROOT/.lab/collections/ansible_collections/vmsafe"
mkdir -p "$LINKDIR"
ln -sfn "$ROOT" "$LINKDIR/protect"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.lab/collections"

# Staged copies live outside the checkout, one set per checkout, so parallel runs of two checkouts never collide.
STAGE_BASE="${TMPDIR:-/tmp}/vmsafe-protect-$(printf '%s' "$ROOT" | sha1sum | cut -c1-8)"

stage_copy() {
  # tracked and untracked-but-not-ignored files, as they are in the work tree
  local dest=$1
  rm -rf "$dest"
  mkdir -p "$dest"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$dest"
}

cache_get_pip() {
  # ansible-test bootstraps pip in each test venv from a get-pip script it downloads from a host this
  # machine cannot reach; it takes a cached copy first. Ours bootstraps from the interpreter's ensurepip.
  mkdir -p "$HOME/.ansible/test/cache"
  for v in 23_1_2 24_2 25_2; do  # the pip versions of ansible-core 2.17, 2.19 and 2.21
    cat >"$HOME/.ansible/test/cache/get_pip_$v.py" <<'EOF'
# Written by vmsafe.protect scripts/test.sh: bootstrap pip from ensurepip, then install what was asked.
import subprocess
import sys

subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"] + args, check=True)
EOF
  done
}

if want sanity; then
  step "ansible-test sanity"
  cache_get_pip
  # Not under a hidden folder: ansible-test skips every target there.
  STAGE="$STAGE_BASE/sanity/ansible_collections/vmsafe/protect"
  stage_copy "$STAGE"
  (cd "$STAGE" && ansible-test sanity --python "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --venv --color no 2>&1 | grep -vE "is ignored: it is neither|^Looking in (indexes|links)")
fi

if want matrix; then
  # The ansible-core versions users run besides the lab's: the floor that meta/runtime.yml declares (on Python
  # 3.11) and the newest (2.21 on Python 3.13), each in a cached venv under .cache/matrix (scripts/matrix-venv.sh).
  # Sanity here is the tests whose rules follow the ansible-core version (the text checks run in the sanity step).
  # A pass is remembered by the hash of the files and the venv: unchanged content is not checked again.
  MATRIX_SANITY=(action-plugin-docs ansible-doc compile empty-init import pylint runtime-metadata validate-modules)
  cache_get_pip
  for target in ${VMSAFE_MATRIX:-floor newest}; do
    BIN=$(scripts/matrix-venv.sh "$target")
    MPY=$("$BIN/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    CORE=$("$BIN/python" -c 'from ansible.release import __version__; print(__version__)')
    PASSED="$ROOT/.cache/matrix/$target.passed"
    KEY=$( (cat "$BIN/../.vmsafe-stamp"; git ls-files -co --exclude-standard -z | xargs -0 sha1sum) | sha1sum | cut -c1-16)
    if [ "$(cat "$PASSED" 2>/dev/null)" = "$KEY" ]; then
      step "matrix: ansible-core $CORE on Python $MPY: passed before with these files ($KEY), not run again"
      continue
    fi
    step "matrix: ansible-core $CORE on Python $MPY: unit tests"
    STAGE="$STAGE_BASE/matrix-$target/ansible_collections/vmsafe/protect"
    stage_copy "$STAGE"
    # The staged copy is its own collection root: its tests/conftest.py links it, not this checkout.
    (cd "$STAGE" && PATH="$BIN:$PATH" "$BIN/python" -m pytest -q -p no:cacheprovider -n 2 tests/unit)
    step "matrix: ansible-core $CORE on Python $MPY: ansible-test sanity (${MATRIX_SANITY[*]})"
    (cd "$STAGE" && PATH="$BIN:$PATH" "$BIN/ansible-test" sanity --python "$MPY" --venv --color no \
      "${MATRIX_SANITY[@]/#/--test=}" 2>&1 | grep -vE "is ignored: it is neither|^Looking in (indexes|links)")
    echo "$KEY" >"$PASSED"
  done
fi

if want lint; then
  step "ansible-lint (production profile)"
  ansible-lint --offline -q
fi

if want build; then
  step "ansible-galaxy collection build + install + ansible-doc"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  stage_copy "$WORK/src"
  ansible-galaxy collection build "$WORK/src" --output-path "$WORK/dist" >/dev/null
  ANSIBLE_COLLECTIONS_PATH="$WORK/installed" ansible-galaxy collection install --no-deps -p "$WORK/installed" "$WORK"/dist/vmsafe-protect-*.tar.gz 2>&1 |
    grep -v "is not part of the configured Ansible collections paths" || true
  for path in plugins/modules/*.py; do
    module=$(basename "$path" .py)
    # ansible-doc exits 0 with a warning when a plugin does not load: check that the docs really came out.
    ANSIBLE_COLLECTIONS_PATH="$WORK/installed" ansible-doc --json "vmsafe.protect.$module" 2>"$WORK/doc.err" |
      "$PY" -c "import json, sys; d = json.load(sys.stdin); sys.exit(0 if d['vmsafe.protect.$module']['doc'] else 1)" ||
      { echo "ansible-doc vmsafe.protect.$module failed:"; cat "$WORK/doc.err"; exit 1; }
    echo "ansible-doc vmsafe.protect.$module: ok"
  done
fi

if want targets; then
  step "ansible-test integration targets (real libvirtd + QEMU)"
  STAGE="$STAGE_BASE/targets/ansible_collections/vmsafe/protect"
  stage_copy "$STAGE"
  # ansible-test passes no environment to the targets; integration_config.yml is how they get the lab helper.
  printf -- '---\nvmsafe_labvm: %s %s\n' "$PY" "$ROOT/tests/lab/labvm.py" >"$STAGE/tests/integration/integration_config.yml"
  (cd "$STAGE" && ansible-test integration --local --python "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --allow-destructive --allow-root --color no)
fi

if want pytest; then
  step "pytest: unit + integration (real libvirtd + QEMU)"
  # The peers' VMware collections (Python 3.12+, ansible 14.5) for test_vmware_peers.py; cached after the first run.
  "$ROOT/scripts/peers-venv.sh" >/dev/null
  export VMSAFE_REQUIRE_PEERS=1
  set +e
  # Both cores: every test makes its own VMs, repositories and ports; a file's tests stay on one worker, so a
  # session fixture (the booted guest, vcsim) starts once per file's worker. VMSAFE_PYTEST_WORKERS=0 runs serially.
  "$PY" -m pytest -q -p no:cacheprovider --durations=25 -n "${VMSAFE_PYTEST_WORKERS:-2}" --dist loadfile \
    "${PYTEST_ARGS[@]}"
  rc=$?
  set -e
  # pytest's 5 means no test ran: that is a failure of this script, never a pass.
  exit $rc
fi
