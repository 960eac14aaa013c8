#!/usr/bin/env bash
# Builds Skiff's default guest kernel from Debian's linux-source-6.1 with the
# config fragment and patches beside this script. Cached by the hash of those
# inputs: a second run prints the path at once.
#   kernel/build.sh [CACHE_DIR]   -> prints the directory holding vmlinux, bzImage
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${SKIFF_CACHE:-/var/cache/skiff}}
say() { echo "[skiff kernel] $*" >&2; }

need=()
for pkg in linux-source-6.1 build-essential flex bison libelf-dev libssl-dev bc cpio xz-utils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2
fi

tarball=$(ls /usr/src/linux-source-6.1.tar.* | head -n1)
src_id=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (echo "$src_id"; cat "$here/skiff.config" "$here"/patches/*.patch "$0") | sha256sum | cut -c1-16)
out="$cache/kernel-$key"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  echo "$out"; exit 0
fi

mkdir -p "$cache"
work="$cache/build-$key"
if [ ! -f "$work/.patched" ]; then
  rm -rf "$work"; mkdir -p "$work"
  say "unpacking $(basename "$tarball") ($src_id)"
  tar -xf "$tarball" -C "$work" --strip-components=1
  for p in "$here"/patches/*.patch; do
    say "applying $(basename "$p")"
    patch -s -p1 -d "$work" < "$p"
  done
  touch "$work/.patched"
fi

cd "$work"
say "configuring (allnoconfig + skiff.config)"
make -s allnoconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$here/skiff.config" >/dev/null
make -s olddefconfig >/dev/null
# Every line of the fragment must have survived: a silently dropped option
# (a renamed symbol, an unmet dependency) would make a different kernel.
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$here/skiff.config" | while IFS= read -r line; do
  sym=${line%%=*}; val=${line#*=}
  if [ "$val" = n ]; then grep -q "^$sym=" .config && echo "$line"; else grep -qxF "$line" .config || echo "$line"; fi
done || true)
if [ -n "$missing" ]; then say "config options not taken: $(echo $missing)"; fi

jobs=$(nproc)
say "compiling with $jobs jobs (log: $work/build.log)"
start=$SECONDS
make -j"$jobs" vmlinux bzImage > build.log 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  sleep 15
  objs=$(grep -c '^  CC ' build.log || true)
  say "  $((SECONDS - start)) s, $objs files compiled"
done
if ! wait $pid; then
  tail -n 30 build.log >&2; say "kernel build failed (log: $work/build.log)"; exit 1
fi
say "built in $((SECONDS - start)) s"
mkdir -p "$out.tmp"
cp vmlinux arch/x86/boot/bzImage .config "$out.tmp/"
strip --strip-debug -o "$out.tmp/vmlinux" vmlinux
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
