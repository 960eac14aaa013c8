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
# C probes (*.c): the CPL3 runtime in rt/ plus one file each.
cflags="-O2 -fno-asynchronous-unwind-tables -ffreestanding -fno-pic -fno-pie -fno-stack-protector -mgeneral-regs-only -mno-red-zone -fno-builtin -I$here"
rt_changed=0
for f in "$here"/rt/*; do [ "$f" -nt "$out/rt.stamp" ] && rt_changed=1; done
if [ ! -f "$out/rt.stamp" ] || [ $rt_changed = 1 ]; then
  gcc $cflags -c -o "$out/rt-boot.o" "$here/rt/boot.S"
  gcc $cflags -c -o "$out/rt.o" "$here/rt/rt.c"
  touch "$out/rt.stamp"
fi
for src in "$here"/*.c; do
  name=$(basename "$src" .c)
  elf="$out/$name.elf"
  if [ ! -f "$elf" ] || [ "$src" -nt "$elf" ] || [ "$out/rt.stamp" -nt "$elf" ]; then
    gcc $cflags -c -o "$out/$name.o" "$src"
    ld -m elf_x86_64 -nostdlib -z noexecstack --no-warn-rwx-segments -T "$here/rt/probe-c.ld" -o "$elf" "$out/rt-boot.o" "$out/rt.o" "$out/$name.o"
  fi
done
echo "$out"
