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
#   cfs.tag=TAG            virtio-fs (or 9p) tag to mount (default: store)
#   cfs.mountopts=A,B      extra mount options (for example dax=always)
#   cfs.mountpoint=DIR     where to mount (default: /nix/store)
#   cfs.rw=1               mount WITHOUT the "ro" option, so that read-only-ness must come from the daemon
#                          (tests use this to check that EROFS is the daemon's answer, not the guest VFS's)
#   cfs.fstype=9p          mount a virtio-9p share instead (QEMU -virtfs; needs a kernel flavour with 9p)
#
# Kernel flavour: CFS_GUEST_FLAVOUR=cloud-amd64 (default: small and quick to boot, virtiofs as a module, but
# no 9p at all) or amd64 (Debian's generic kernel: also 9p, used by the guest benchmark so that all of its
# columns run on one kernel). Modules are resolved with their dependencies from the .ko files' modinfo.
#
# Nothing is installed on the host: packages are fetched with `apt-get download` and unpacked with dpkg-deb.
# Idempotent and cached under ${CLOSUREFS_CACHE:-$HOME/.cache/closurefs}/guest/<hash of this script+flavour>.
# Prints the output directory (containing vmlinuz, initrd.gz, kernel-version, modules, features) on stdout,
# nothing else. `features` lists "virtiofs" and, when the kernel has it, "9p".
set -euo pipefail

die() { echo "build-guest.sh: error: $*" >&2; exit 1; }

cache_root="${CLOSUREFS_CACHE:-$HOME/.cache/closurefs}"
flavour="${CFS_GUEST_FLAVOUR:-cloud-amd64}"
case "$flavour" in cloud-amd64|amd64) ;; *) die "CFS_GUEST_FLAVOUR must be cloud-amd64 or amd64, got '$flavour'" ;; esac
key="$( (cat "${BASH_SOURCE[0]}"; echo "$flavour") | sha256sum | cut -c1-16)"
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

# Newest 6.1 kernel image package of the flavour that the apt lists know about (the signed one ships vmlinuz).
pick_kernel() {
  apt-cache search --names-only "^linux-image-6\\.1\\.0-[0-9]+-${flavour}\$" 2>/dev/null \
    | cut -d' ' -f1 | sort -V | tail -n1
}
kpkg="$(pick_kernel)"
if [ -z "$kpkg" ]; then
  # Fresh machines (and slim containers) often have no package lists yet.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
  else
    die "no linux-image-6.1.0-*-$flavour in the apt lists; run 'apt-get update' as root"
  fi
  kpkg="$(pick_kernel)"
  [ -n "$kpkg" ] || die "no linux-image-6.1.0-*-$flavour package known to apt (is this Debian 12 amd64?)"
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
    [ -n "$kpkg" ] || die "no linux-image-6.1.0-*-$flavour package known to apt after apt-get update"
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

# Modules with their dependencies, in load order (dependencies first). The package has no modules.dep
# (depmod runs at install time), so dependencies come from each .ko's own modinfo "depends=" field. A module
# that has no .ko may be built in (modules.builtin); then there is nothing to load. Compressed modules are
# decompressed so busybox insmod can load them.
config="$work/x/boot/config-$kver"
ko_file() {
  local m=$1 alt=${1//_/-}
  find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \
    -o -name "$alt.ko" -o -name "$alt.ko.xz" -o -name "$alt.ko.zst" -o -name "$alt.ko.gz" \) | head -n1
}
builtin() { grep -qE "(^|/)(${1}|${1//_/-})\.ko$" "$moddir/modules.builtin" 2>/dev/null; }
unpack_ko() {
  case "$1" in
    *.ko) cat "$1" ;;
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
  esac
}
declare -A seen=()
order=()
# resolve MODULE: appends MODULE's dependencies and then MODULE to $order; returns 1 if it does not exist.
resolve() {
  local m=$1 f deps d
  [ -n "${seen[$m]-}" ] && return 0
  seen[$m]=1
  f="$(ko_file "$m")"
  if [ -z "$f" ]; then builtin "$m" && return 0; return 1; fi
  unpack_ko "$f" > "$r/lib/modules/$m.ko"
  deps="$(tr '\0' '\n' < "$r/lib/modules/$m.ko" | sed -n 's/^depends=//p' | head -n1)"
  for d in ${deps//,/ }; do resolve "$d" || die "module $m needs $d, which $kpkg has neither as .ko nor built in"; done
  order+=("$m")
}
order=()
for m in virtio_pci virtio_mmio virtiofs; do
  resolve "$m" || die "module $m is neither a .ko in $kpkg nor listed in modules.builtin"
done
loaded="${order[*]}"
if [ -f "$config" ] && ! grep -q '^CONFIG_VIRTIO_FS=[ym]' "$config"; then die "$kpkg lacks CONFIG_VIRTIO_FS"; fi
echo "$loaded" > "$r/etc/cfs-modules"
# 9p (QEMU -virtfs), loaded only when cfs.fstype=9p asks for it; the cloud kernel has none (CONFIG_NET_9P unset).
features="virtiofs"
order=()
if resolve 9pnet_virtio && resolve 9p; then
  echo "${order[*]}" > "$r/etc/cfs-9p-modules"
  features="$features 9p"
else
  for m in "${order[@]}"; do rm -f "$r/lib/modules/$m.ko"; done
fi

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

tag=store mountopts= mountpoint=/nix/store rw=0 fstype=virtiofs
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cfs.tag=*) tag="${arg#cfs.tag=}" ;;
    cfs.mountopts=*) mountopts="${arg#cfs.mountopts=}" ;;
    cfs.mountpoint=*) mountpoint="${arg#cfs.mountpoint=}" ;;
    cfs.rw=1) rw=1 ;;
    cfs.fstype=*) fstype="${arg#cfs.fstype=}" ;;
  esac
done

modules=$(cat /etc/cfs-modules)
driver=virtiofs
opts=ro
[ $rw = 1 ] && opts=
if [ "$fstype" = 9p ]; then
  if [ -f /etc/cfs-9p-modules ]; then modules="$modules $(cat /etc/cfs-9p-modules)"; else echo "CFS-WARN this kernel has no 9p"; fi
  driver=9pnet_virtio
  # A large msize (the kernel caps it at what its virtio transport carries, about 500 KiB in 6.1): the
  # default of 128 KiB would understate 9p's sequential throughput in the benchmark.
  opts="trans=virtio,version=9p2000.L,msize=524288${opts:+,$opts}"
fi
for m in $modules; do
  insmod "/lib/modules/$m.ko" || echo "CFS-WARN insmod $m failed"
done

# Kernel warnings from here on (the mount and the script) are reported after the script; boot noise is not.
klog_mark=$(dmesg -r | wc -l)

# virtio devices probe asynchronously after insmod: wait (up to 5 s) until the driver has bound a device,
# then mount exactly once, so a mount that fails for a real reason fails fast and says why.
mkdir -p "$mountpoint"
i=0
while [ $i -lt 100 ] && ! ls "/sys/bus/virtio/drivers/$driver/" 2>/dev/null | grep -q '^virtio'; do
  i=$((i + 1))
  sleep 0.05
done
opts="$opts${mountopts:+${opts:+,}$mountopts}"
mount -t "$fstype" ${opts:+-o "$opts"} "$tag" "$mountpoint" 2>/tmp/mount.err
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
# The generic kernel is xz-compressed, and decompressing it under TCG takes about 3 s of every boot. With
# CONFIG_PVH, QEMU boots the uncompressed ELF directly: unpack it once here (the runner prefers vmlinux).
# bzImage header: setup_sects at 0x1f1, payload_offset at 0x248; the payload starts after the setup sectors.
if grep -q '^CONFIG_KERNEL_XZ=y' "$config" && grep -q '^CONFIG_PVH=y' "$config"; then
  setup_sects=$(od -An -tu1 -j$((0x1f1)) -N1 "$vmlinuz" | tr -d ' ')
  payload_offset=$(od -An -tu4 -j$((0x248)) -N4 "$vmlinuz" | tr -d ' ')
  start=$(( (setup_sects + 1) * 512 + payload_offset ))
  # Through a file, not a pipe: xz stops after the stream, and pipefail would count tail's SIGPIPE.
  tail -c +$((start + 1)) "$vmlinuz" > "$work/payload.xz"
  xz -dc --single-stream "$work/payload.xz" > "$work/out/vmlinux" || die "cannot unpack the xz payload of $vmlinuz"
  rm -f "$work/payload.xz"
  [ "$(od -An -c -N4 "$work/out/vmlinux" | tr -d ' ')" = '177ELF' ] || die "the payload of $vmlinuz is not an ELF kernel"
fi
mv "$work/initrd.gz" "$work/out/initrd.gz"
echo "$kver" > "$work/out/kernel-version"
echo "$loaded" > "$work/out/modules"
echo "$features" > "$work/out/features"
rm -rf "$out"
mv "$work/out" "$out"
echo "$out"
