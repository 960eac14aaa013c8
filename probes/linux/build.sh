#!/usr/bin/env bash
# Builds the static Linux user programs the guest tests run (probes/linux/*.c)
# into OUTDIR/NAME, rebuilding only what changed.
#   probes/linux/build.sh [OUTDIR]   (default probes/linux/out)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
for src in "$here"/*.c; do
  name=$(basename "$src" .c)
  bin="$out/$name"
  if [ ! -f "$bin" ] || [ "$src" -nt "$bin" ] || [ "$here/build.sh" -nt "$bin" ]; then
    gcc -static -O2 -Wall -o "$bin.tmp" "$src"
    mv "$bin.tmp" "$bin"
  fi
done
echo "$out"
