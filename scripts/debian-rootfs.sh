#!/usr/bin/env bash
# Assembles a container root from programs installed on this Debian host: each program with
# its shared-library closure (as ldd resolves it) and the dynamic loader, at the same paths,
# plus busybox (static) for a shell and the usual tools.
#
#   scripts/debian-rootfs.sh OUT PROGRAM...      e.g. scripts/debian-rootfs.sh /tmp/root /usr/bin/iperf3
set -euo pipefail

out=${1:?usage: debian-rootfs.sh OUT PROGRAM...}
shift
mkdir -p "$out"/{bin,etc,tmp,proc,dev,root}

copy() { # a file at the same path under $out, following symlinks for the content
  local src=$1
  [ -e "$out$src" ] && return 0
  mkdir -p "$out$(dirname "$src")"
  cp -L "$src" "$out$src"
}

for prog in "$@"; do
  path=$(command -v "$prog") || { echo "debian-rootfs: $prog not found" >&2; exit 1; }
  copy "$path"
  # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
  while read -r lib; do
    copy "$lib"
  done < <(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
done

if [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then
  cp /bin/busybox "$out/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$out/bin/$applet" ] || ln -s busybox "$out/bin/$applet"
  done
fi
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$out/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$out/etc/group"
echo "$out: $*"
