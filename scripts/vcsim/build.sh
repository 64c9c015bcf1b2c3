#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Build the project's vcsim (VMware vCenter simulator) offline from Debian's govmomi source plus our overlay.
#
#   scripts/vcsim/build.sh          build if needed; print the path of the binary
#
# Installs golang-go and golang-github-vmware-govmomi-dev when missing (needs root). The binary is cached
# under .cache/vcsim/<hash>/vcsim, keyed by the Go version, the govmomi package version and our sources, so a
# second run costs a few milliseconds. Environment: VMSAFE_SKIP_APT=1 (never call apt-get).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GOPATH_DIR=/usr/share/gocode
SIM="$GOPATH_DIR/src/github.com/vmware/govmomi/simulator"
PACKAGES=(golang-go golang-github-vmware-govmomi-dev)

log() { printf '[vcsim] %s\n' "$*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${VMSAFE_SKIP_APT:-0}" = 1 ]; then log "missing Debian packages: ${missing[*]}"; exit 1; fi
  if [ "$(id -u)" -ne 0 ]; then log "installing ${missing[*]} needs root"; exit 1; fi
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# Files of the stock simulator that our overlay replaces; the others in overlay/ are added.
REPLACED=(task.go snapshot.go)
for f in "${REPLACED[@]}"; do
  [ -f "$SIM/$f" ] || { log "$SIM/$f is missing: the overlay was written for govmomi 0.24.2"; exit 1; }
done

key=$(
  {
    go version
    dpkg-query -W -f='${Package} ${Version}\n' "${PACKAGES[@]}"
    cd "$HERE" && sha256sum build.sh main.go overlay/*.go
  } | sha256sum | cut -c1-16
)
OUT="$ROOT/.cache/vcsim/$key"
if [ -x "$OUT/vcsim" ]; then echo "$OUT/vcsim"; exit 0; fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# overlay.json maps each file of the simulator package to our version of it (or adds one).
{
  printf '{"Replace": {\n'
  sep=""
  for src in "$HERE"/overlay/*.go; do
    printf '%s  "%s": "%s"' "$sep" "$SIM/$(basename "$src")" "$src"
    sep=$',\n'
  done
  printf '\n}}\n'
} >"$OUT/overlay.json"

log "building $OUT/vcsim (cold: about 30 s)"
(
  cd "$HERE"
  GO111MODULE=off GOPATH="$GOPATH_DIR" GOFLAGS="" CGO_ENABLED=0 \
    go build -overlay "$OUT/overlay.json" -o "$WORK/vcsim" main.go
)
mv "$WORK/vcsim" "$OUT/vcsim"
echo "$OUT/vcsim"
