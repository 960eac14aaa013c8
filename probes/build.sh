#!/usr/bin/env bash
# Builds every probe guest (probes/*.S) into OUTDIR/NAME.elf.
#   probes/build.sh [OUTDIR]   (default probes/out)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
for src in "$here"/*.S; do
  name=$(basename "$src" .S)
  elf="$out/$name.elf"
  if [ ! -f "$elf" ] || [ "$src" -nt "$elf" ] || [ "$here/common.h" -nt "$elf" ] || [ "$here/probe.ld" -nt "$elf" ]; then
    gcc -c -I"$here" -o "$out/$name.o" "$src"
    ld -m elf_x86_64 -nostdlib -z noexecstack --no-warn-rwx-segments -T "$here/probe.ld" -o "$elf" "$out/$name.o"
  fi
done
echo "$out"
