#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Build (once, cached) a small bootable Debian guest for the end-to-end tests: a root file system image with
# openssh-server and python3, its kernel and a small initramfs, and an SSH key for root.
#
#   scripts/guest-image.sh        prints the cache folder: root.qcow2, vmlinuz, initrd.img, id_ed25519
#
# No loop devices or mounts: mmdebstrap builds a folder, mkfs.ext4 -d turns it into an image. The cache key is a
# hash of this script, so a change here builds a new image. Needs root and Debian's package mirrors.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The hash ignores comments, so documenting the script does not rebuild the image.
HASH=$(grep -v '^[[:space:]]*#' "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
OUT="$ROOT/.cache/guest/$HASH"
log() { printf '[guest] %s\n' "$*" >&2; }

if [ -f "$OUT/root.qcow2" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
  echo "$OUT"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then log "needs root (mmdebstrap --mode=root)"; exit 1; fi
for p in mmdebstrap e2fsprogs qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING="${MISSING:-} $p"
done
if [ -n "${MISSING:-}" ]; then
  log "installing${MISSING}"
  apt-get update -qq
  # shellcheck disable=SC2086  # a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
fi

mkdir -p "$ROOT/.cache"
WORK=$(mktemp -d "$ROOT/.cache/guest-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
ssh-keygen -q -t ed25519 -N "" -C vmsafe-guest -f "$WORK/id_ed25519"

SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
log "mmdebstrap (about a minute)"
# The hooks are run by mmdebstrap's shell with the root folder as $1: single quotes are meant.
# shellcheck disable=SC2016
mmdebstrap --mode=root --variant=minbase --quiet \
  --include=linux-image-cloud-amd64,initramfs-tools,openssh-server,python3,python3-apt,systemd-sysv,udev,ifupdown,isc-dhcp-client,iproute2,procps,apt \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
  --customize-hook='echo vmsafe-guest > "$1/etc/hostname"' \
  --customize-hook='echo "nameserver 10.0.2.3" > "$1/etc/resolv.conf"' \
  --customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook="mkdir -p \"\$1/root/.ssh\" && cp $WORK/id_ed25519.pub \"\$1/root/.ssh/authorized_keys\" && chmod 700 \"\$1/root/.ssh\" && chmod 600 \"\$1/root/.ssh/authorized_keys\"" \
  --customize-hook='printf "virtio_pci\nvirtio_blk\nvirtio_net\next4\n" >> "$1/etc/initramfs-tools/modules"' \
  --customize-hook='sed -i "s/^MODULES=.*/MODULES=list/" "$1/etc/initramfs-tools/initramfs.conf"' \
  --customize-hook='chroot "$1" update-initramfs -u -k all >/dev/null' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer >/dev/null 2>&1 || true' \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  bookworm "$WORK/rootfs" "$SOURCES"

cp "$WORK"/rootfs/boot/vmlinuz-* "$WORK/vmlinuz"
cp "$WORK"/rootfs/boot/initrd.img-* "$WORK/initrd.img"
log "mkfs.ext4 -d + qemu-img convert"
truncate -s 2G "$WORK/root.raw"
mkfs.ext4 -q -L root -d "$WORK/rootfs" "$WORK/root.raw"
qemu-img convert -q -O qcow2 "$WORK/root.raw" "$WORK/root.qcow2"
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/root.qcow2" "$WORK/id_ed25519" "$WORK/id_ed25519.pub" "$OUT/"
log "built $OUT"
echo "$OUT"
