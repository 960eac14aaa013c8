#!/usr/bin/env bash
# PackageTests: installs Skiff's .deb into a fresh Debian 12 root and runs
# it from there, with no source tree and no Swift toolchain in sight.
#   fresh_root_install.sh DEB KERNEL_DIR WORK
# DEB: scripts/package-deb's output. KERNEL_DIR: the default kernel this
# checkout built (/var/cache/skiff/kernel-HASH), placed read-only at the
# same path in the root: the installed build inputs must find it by their
# own hash (the same inputs, the same linux-source-6.1), or the step fails
# rather than spend minutes building it again.
# WORK: a folder for the root. Runs in a mount namespace of its own
# (unshare -m), so every mount goes when it ends. Prints "ok: STEP" per step.
set -euo pipefail
deb=$(realpath "$1") kernel_dir=$(realpath "$2") work=$3
root="$work/root"
rm -rf "$root"; mkdir -p "$work"

t0=$SECONDS
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
  bookworm "$root" >&2  # Debian's mirror, with bookworm-updates and -security as the host has
echo "ok: mmdebstrap root in $((SECONDS - t0)) s"

in_root() { chroot "$root" "$@"; }
# As a user would: `apt install ./skiff.deb`, which resolves its Depends from Debian.
t0=$SECONDS
in_root apt-get update -q >&2
cp "$deb" "$root/tmp/"
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -q "/tmp/$(basename "$deb")" >&2
rm -f "$root/tmp/$(basename "$deb")"
echo "ok: apt installed the package and its dependencies in $((SECONDS - t0)) s"
[ "$(in_root dpkg-query -W -f='${Status}' skiff)" = "install ok installed" ]
[ ! -e "$root/work" ] && [ ! -e "$root/opt/swift" ]
echo "ok: installed: $(in_root dpkg-query -W -f='${Package} ${Version}' skiff), no source tree or toolchain"
[ "$(stat -c %a "$root/var/lib/skiff")" = 700 ]
in_root getent group skiff >/dev/null
[ -f "$root/lib/systemd/system/skiffd.service" ]
echo "ok: state directory 0700, group skiff, systemd unit"

# The root as a mount of its own (the jailer's pivot_root needs one), with
# the host's devices (/dev/kvm), cgroups and the kernel cache.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root$kernel_dir"
mount --bind -o ro "$kernel_dir" "$root$kernel_dir"

in_root skiff --version
kernel=$(timeout 60 chroot "$root" skiff kernel build)
[ "$kernel" = "$kernel_dir" ] && [ -f "$root$kernel/vmlinux" ]
echo "ok: skiff kernel build found $kernel from /usr/share/skiff/kernel"

out=$(timeout 120 chroot "$root" skiff run --append 'skiff_run="echo packaged guest says hello; exit 7"' </dev/null) && status=0 || status=$?
echo "$out" | grep -q "packaged guest says hello"
[ "$status" = 7 ]
echo "ok: skiff run booted the default guest (exit $status)"

# skiffd as its unit starts it (systemd's RuntimeDirectory= made by hand).
exec_start=$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/skiffd.service")
install -d -m 0750 -g "$(in_root getent group skiff | cut -d: -f3)" "$root/run/skiff"
# shellcheck disable=SC2086
chroot "$root" $exec_start >"$work/skiffd.log" 2>&1 &
daemon=$!
stop_daemon() { kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; }
trap stop_daemon EXIT
for _ in $(seq 100); do [ -S "$root/run/skiff/skiffd.sock" ] && break; sleep 0.1; done
[ -S "$root/run/skiff/skiffd.sock" ] || { cat "$work/skiffd.log" >&2; exit 1; }
in_root skiff ps >/dev/null
echo "ok: skiffd started by its unit's ExecStart, skiff ps answers"

in_root skiff create pkgvm --cmdline 'console=ttyS0 reboot=k panic=-1 skiff_run="echo managed guest says hello; sleep 600"' >/dev/null
for _ in $(seq 240); do
  in_root skiff logs pkgvm | grep -q "managed guest says hello" && break
  sleep 0.5
done
in_root skiff logs pkgvm | grep -q "managed guest says hello" || { in_root skiff inspect pkgvm >&2; cat "$work/skiffd.log" >&2; exit 1; }
echo "ok: skiffd ran a VM of the default guest"
in_root skiff rm -f pkgvm >/dev/null
in_root skiff inspect pkgvm >/dev/null 2>&1 && exit 1
echo "ok: removed"
