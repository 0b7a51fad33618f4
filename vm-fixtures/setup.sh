#!/usr/bin/env bash
# Installs what closurefs' guest tests need on a fresh Debian 12 machine, then builds (or finds cached) the
# guest kernel + initramfs and the real Nix store fixture. Idempotent; silent unless something fails.
#
#   Debian packages: qemu-system-x86 (QEMU 7.2 and /usr/lib/qemu/virtiofsd), nix-bin, busybox-static,
#                    cpio, gzip, xz-utils, zstd, util-linux (flock), coreutils (timeout)
#   then:            vm-fixtures/build-guest.sh, test/fixtures/nix/build-store.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
log="$(mktemp -t closurefs-setup.XXXXXX)"
trap 'rm -f "$log"' EXIT

die() { echo "vm-fixtures/setup.sh: error: $*" >&2; [ -s "$log" ] && cat "$log" >&2; exit 1; }

# package → a file it provides, so presence is checked without asking dpkg about every package.
declare -A want=(
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [nix-bin]=/usr/bin/nix-build
  [cpio]=/usr/bin/cpio
  [gzip]=/bin/gzip
  [xz-utils]=/usr/bin/xz
  [zstd]=/usr/bin/zstd
  [util-linux]=/usr/bin/flock
  [coreutils]=/usr/bin/timeout
)
missing=()
for pkg in "${!want[@]}"; do
  [ -e "${want[$pkg]}" ] || missing+=("$pkg")
done
# busybox (dynamic) and busybox-static conflict and both provide /bin/busybox; the fixture copies busybox into a
# store path for the guest to exec, so it must be the static one.
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)" = "install ok installed" ] || missing+=(busybox-static)
# virtiofsd ships inside qemu-system-x86 on Debian 12 (the peer daemon for side-by-side tests).
[ -x /usr/lib/qemu/virtiofsd ] || [[ " ${missing[*]-} " == *" qemu-system-x86 "* ]] || missing+=(qemu-system-x86)

if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run this script as root or install them"
  export DEBIAN_FRONTEND=noninteractive
  # Fresh images often have no package lists; update once if apt cannot even see one of the packages.
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >"$log" 2>&1 || die "apt-get update failed"
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
    || die "apt-get install ${missing[*]} failed"
fi

: >"$log"
bash "$here/build-guest.sh" >/dev/null 2>"$log" || die "vm-fixtures/build-guest.sh failed"
CFS_FIXTURE_QUIET=1 bash "$repo/test/fixtures/nix/build-store.sh" >/dev/null 2>"$log" \
  || die "test/fixtures/nix/build-store.sh failed"
