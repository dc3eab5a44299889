#!/bin/sh
# Builds vdso.so from vdso.S (run from anywhere; writes next to this script, or to $1).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/vdso.so}
gcc -nostdlib -shared -fPIC -Wl,-soname=linux-vdso.so.1 -Wl,--hash-style=both \
	-Wl,--build-id=none -Wl,--eh-frame-hdr -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack \
	-Wl,-T,"$here/vdso.lds" -Wl,--version-script="$here/vdso.map" \
	-o "$out" "$here/vdso.S"
strip --strip-unneeded -R .comment "$out" 2>/dev/null || true
