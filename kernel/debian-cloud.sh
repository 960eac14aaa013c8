#!/usr/bin/env bash
# Fetches Debian 12's cloud kernel (the image package that
# linux-image-cloud-amd64 depends on; downloaded with apt-get, not
# installed), unpacks it with dpkg-deb and turns its compressed bzImage
# into the uncompressed ELF vmlinux, which boots without the ~2 minutes of
# emulated decompressor on PVM hosts. Cached; prints the vmlinux's path.
#   kernel/debian-cloud.sh [CACHE_DIR]   (default $SKIFF_CACHE, else /var/cache/skiff)
# Progress goes to stderr. The decompression follows Linux's
# scripts/extract-vmlinux: find each compressor's magic in the bzImage,
# decompress from there, keep the first result that is an ELF.
set -euo pipefail
cache=${1:-${SKIFF_CACHE:-/var/cache/skiff}}
say() { echo "[debian-cloud] $*" >&2; }

meta=linux-image-cloud-amd64
pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
if [ -z "$pkg" ]; then
  say "apt-cache does not know $meta; running apt-get update"
  apt-get update -q >&2
  pkg=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
fi
[ -n "$pkg" ] || { say "cannot resolve $meta's image package"; exit 1; }
version=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
dir="$cache/debian-cloud-$pkg-$version"
vmlinux="$dir/vmlinux"
if [ -s "$vmlinux" ]; then
  echo "$vmlinux"
  exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "downloading $pkg $version"
deb=$(ls "$dir"/"$pkg"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  # apt-get download writes into the current directory, as the _apt user
  # when it can: give it a folder it may write.
  (cd "$work" && chmod 0777 . && apt-get download -q "$pkg=$version" >&2)
  mv "$work"/"$pkg"_*.deb "$dir/"
  deb=$(ls "$dir"/"$pkg"_*.deb | head -n1)
fi
say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$work/root"
vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -n1)
cp "$vmlinuz" "$dir/vmlinuz"
cp "$work"/root/boot/config-* "$dir/config" 2>/dev/null || true

is_elf() { [ "$(head -c4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }
try() {  # magic(hex, as od prints it) decompressor...
  local magic=$1; shift
  local pos
  for pos in $(LC_ALL=C grep -obUaP "$(echo "$magic" | sed 's/\(..\)/\\x\1/g')" "$vmlinuz" | cut -d: -f1); do
    tail -c+$((pos + 1)) "$vmlinuz" | "$@" > "$work/vmlinux" 2>/dev/null || true
    if [ -s "$work/vmlinux" ] && is_elf "$work/vmlinux"; then return 0; fi
  done
  return 1
}
say "decompressing $(basename "$vmlinuz")"
if try 1f8b0800 gunzip ||
   try fd377a585a00 unxz ||
   try 425a68 bunzip2 ||
   try 5d000000 unlzma ||
   try 894c5a lzop -d ||
   try 02214c18 lz4 -d ||
   try 28b52ffd unzstd; then
  mv "$work/vmlinux" "$vmlinux.tmp"
  mv "$vmlinux.tmp" "$vmlinux"
  say "$(file -b "$vmlinux" 2>/dev/null | cut -c1-80 || true)"
  echo "$vmlinux"
else
  say "no compressed ELF found in $vmlinuz"
  exit 1
fi
