#!/usr/bin/env bash
# Builds the test guest: Debian's 6.1 cloud kernel and a busybox initramfs whose /init mounts the virtio-fs
# share at /nix/store, runs /run.sh (supplied per run by vm-fixtures/runner.ts as a second cpio archive
# appended to this one; the kernel unpacks concatenated archives in order) and reports on the serial console:
#
#   CFS-MOUNT ok|failed <rc>     whether the share mounted
#   CFS-BEGIN                    start of the script's output (stdout+stderr)
#   ...                          the script's output
#   CFS-EXIT <status>            the script's exit status
#   CFS-KLOG-BEGIN / -END        kernel warnings and errors (levels 0-4) logged from the mount on
#
# then powers off. Kernel command line parameters read by /init:
#   cfs.tag=TAG            virtio-fs tag to mount (default: store)
#   cfs.mountopts=A,B      extra mount options after "ro" (for example dax=always)
#   cfs.mountpoint=DIR     where to mount (default: /nix/store)
#
# Nothing is installed on the host: packages are fetched with `apt-get download` and unpacked with dpkg-deb.
# Idempotent and cached under ${CLOSUREFS_CACHE:-$HOME/.cache/closurefs}/guest/<hash of this script>.
# Prints the output directory (containing vmlinuz, initrd.gz, kernel-version) on stdout, nothing else.
set -euo pipefail

die() { echo "build-guest.sh: error: $*" >&2; exit 1; }

cache_root="${CLOSUREFS_CACHE:-$HOME/.cache/closurefs}"
key="$(sha256sum < "${BASH_SOURCE[0]}" | cut -c1-16)"
base="$cache_root/guest"
out="$base/$key"

[ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ] && { echo "$out"; exit 0; }

for tool in apt-get apt-cache dpkg-deb cpio gzip sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (vm-fixtures/setup.sh installs what is missing)"
done

mkdir -p "$base"
# Concurrent callers (jest workers, setup.sh) wait for one build instead of racing it.
exec 9>"$base/.lock"
flock 9
[ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ] && { echo "$out"; exit 0; }

work="$base/.tmp-$key-$$"
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/x" "$work/root"
log="$work/log"

# Newest 6.1 cloud kernel image package the apt lists know about (the signed one ships vmlinuz).
pick_kernel() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' 2>/dev/null \
    | cut -d' ' -f1 | sort -V | tail -n1
}
kpkg="$(pick_kernel)"
if [ -z "$kpkg" ]; then
  # Fresh machines (and slim containers) often have no package lists yet.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
  else
    die "no linux-image-6.1.0-*-cloud-amd64 in the apt lists; run 'apt-get update' as root"
  fi
  kpkg="$(pick_kernel)"
  [ -n "$kpkg" ] || die "no linux-image-6.1.0-*-cloud-amd64 package known to apt (is this Debian 12 amd64?)"
fi

# apt-get download drops privileges to _apt, which cannot write into a root-owned private directory;
# as root, download as root instead of opening the directory up.
sandbox_opt=()
[ "$(id -u)" = 0 ] && sandbox_opt=(-o APT::Sandbox::User=root)
download() { (cd "$work/debs" && apt-get download -qq "${sandbox_opt[@]}" "$kpkg" busybox-static) >"$log" 2>&1; }
if ! download; then
  # Stale lists name package versions the mirror has already dropped (404): refresh once and retry.
  if [ "$(id -u)" = 0 ] && apt-get update -qq >>"$log" 2>&1; then
    kpkg="$(pick_kernel)"
    [ -n "$kpkg" ] || die "no linux-image-6.1.0-*-cloud-amd64 package known to apt after apt-get update"
    download || { cat "$log" >&2; die "apt-get download $kpkg busybox-static failed"; }
  else
    cat "$log" >&2; die "apt-get download $kpkg busybox-static failed"
  fi
fi

for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done

kver="${kpkg#linux-image-}"
vmlinuz="$work/x/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "$kpkg has no /boot/vmlinuz-$kver"
moddir=""
for d in "$work/x/lib/modules/$kver" "$work/x/usr/lib/modules/$kver"; do [ -d "$d" ] && { moddir="$d"; break; }; done
[ -n "$moddir" ] || die "$kpkg has no modules directory for $kver"
busybox=""
for f in "$work/x/bin/busybox" "$work/x/usr/bin/busybox"; do [ -f "$f" ] && { busybox="$f"; break; }; done
[ -n "$busybox" ] || die "busybox-static has no bin/busybox"

# Initramfs tree.
r="$work/root"
mkdir -p "$r"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,lib/modules,nix/store}
cp "$busybox" "$r/bin/busybox"
chmod 0755 "$r/bin/busybox"
# Applet links, listed by the static busybox itself (it runs on the host too).
for applet in $("$r/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
done

# Modules in load order; some may be built in (then there is no .ko and nothing to load).
# A compressed module (.ko.xz/.ko.zst) is decompressed so busybox insmod can load it.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio fuse virtiofs"
config="$work/x/boot/config-$kver"
loaded=""
for m in $modules; do
  f="$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
  if [ -z "$f" ]; then
    # Accept a missing module only when the kernel has it built in.
    grep -q "^kernel/.*/$m\.ko" "$moddir/modules.builtin" 2>/dev/null \
      || die "module $m is neither a .ko in $kpkg nor listed in modules.builtin"
    continue
  fi
  case "$f" in
    *.ko) cp "$f" "$r/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$r/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$r/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" > "$r/lib/modules/$m.ko" ;;
  esac
  loaded="$loaded $m"
done
if [ -f "$config" ] && ! grep -q '^CONFIG_VIRTIO_FS=[ym]' "$config"; then die "$kpkg lacks CONFIG_VIRTIO_FS"; fi
echo "${loaded# }" > "$r/etc/cfs-modules"

cat > "$r/init" <<'INIT'
#!/bin/busybox sh
# closurefs test guest: mount the virtio-fs share, run /run.sh, report between markers, power off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node (building it would need mknod, i.e. root), so the kernel could not
# give /init a console: take it now that devtmpfs is mounted.
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

tag=store mountopts= mountpoint=/nix/store
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cfs.tag=*) tag="${arg#cfs.tag=}" ;;
    cfs.mountopts=*) mountopts="${arg#cfs.mountopts=}" ;;
    cfs.mountpoint=*) mountpoint="${arg#cfs.mountpoint=}" ;;
  esac
done

for m in $(cat /etc/cfs-modules); do
  insmod "/lib/modules/$m.ko" || echo "CFS-WARN insmod $m failed"
done

# Kernel warnings from here on (the mount and the script) are reported after the script; boot noise is not.
klog_mark=$(dmesg -r | wc -l)

# virtio devices probe asynchronously after insmod: wait (up to 5 s) until the virtiofs driver has bound a
# device, then mount exactly once, so a mount that fails for a real reason fails fast and says why.
mkdir -p "$mountpoint"
i=0
while [ $i -lt 100 ] && ! ls /sys/bus/virtio/drivers/virtiofs/ 2>/dev/null | grep -q '^virtio'; do
  i=$((i + 1))
  sleep 0.05
done
mount -t virtiofs -o "ro${mountopts:+,$mountopts}" "$tag" "$mountpoint" 2>/tmp/mount.err
rc=$?
if [ $rc = 0 ]; then echo "CFS-MOUNT ok"; else echo "CFS-MOUNT failed $rc $(cat /tmp/mount.err)"; fi

# Keep kernel messages off the console while the script runs, so its output is exactly the script's; the
# warnings are reported afterwards from the ring buffer.
echo 1 > /proc/sys/kernel/printk
echo CFS-BEGIN
if [ -f /run.sh ]; then
  (cd / && sh /run.sh) </dev/null 2>&1
  status=$?
else
  echo "no /run.sh in the initramfs"
  status=127
fi
echo "CFS-EXIT $status"
echo CFS-KLOG-BEGIN
dmesg -r | tail -n +$((klog_mark + 1)) | grep '^<[0-4]>' | sed 's/^<[0-9]>//'
echo CFS-KLOG-END
sync
poweroff -f
# Only reached if power-off is unavailable: a reset also ends QEMU when it runs with -no-reboot.
sleep 2
reboot -f
INIT
chmod 0755 "$r/init"

(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9n > "$work/initrd.gz"

mkdir -p "$work/out"
cp "$vmlinuz" "$work/out/vmlinuz"
mv "$work/initrd.gz" "$work/out/initrd.gz"
echo "$kver" > "$work/out/kernel-version"
echo "${loaded# }" > "$work/out/modules"
rm -rf "$out"
mv "$work/out" "$out"
echo "$out"
