#!/usr/bin/env bash
# Fails when a Linux binary needs a newer glibc than the oldest one we claim to support: prints
# the highest GLIBC_x.y symbol version it references (what the dynamic loader checks when Node.js
# loads the addon) and compares it with the limit. Usage: check-glibc.sh BINARY [MAX, default 2.17]
set -euo pipefail
binary=${1:?usage: check-glibc.sh BINARY [MAX]}
max=${2:-2.17}
[ -f "$binary" ] || { echo "check-glibc: $binary: no such file" >&2; exit 2; }
needed=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V -u | tail -n 1)
if [ -z "$needed" ]; then
  echo "check-glibc: $binary references no GLIBC_ symbol versions (not a glibc binary?)" >&2
  exit 1
fi
highest=$(printf '%s\n%s\n' "$needed" "$max" | sort -V | tail -n 1)
if [ "$highest" != "$max" ]; then
  echo "check-glibc: $binary needs glibc $needed, newer than the supported floor $max" >&2
  exit 1
fi
echo "check-glibc: $binary needs glibc $needed (floor $max): ok"
