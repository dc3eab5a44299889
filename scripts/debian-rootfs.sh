#!/usr/bin/env bash
# Assembles a container root from programs installed on this Debian host: each program with
# its shared-library closure (as ldd resolves it) and the dynamic loader, at the same paths,
# plus busybox (static) for a shell and the usual tools.
#
# A directory among the arguments is copied whole (without test suites and caches), with the
# closure of the shared objects in it: an interpreter's library, such as /usr/lib/python3.11.
#
#   scripts/debian-rootfs.sh OUT PROGRAM|DIR...  e.g. scripts/debian-rootfs.sh /tmp/root /usr/bin/iperf3
set -euo pipefail

out=${1:?usage: debian-rootfs.sh OUT PROGRAM|DIR...}
shift
mkdir -p "$out"/{bin,etc,tmp,proc,dev,root}

copy() { # a file at the same path under $out, following symlinks for the content
  local src=$1
  [ -e "$out$src" ] && return 0
  mkdir -p "$out$(dirname "$src")"
  cp -L "$src" "$out$src"
}

closure() { # the libraries and loader a dynamically linked file needs
  # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
  while read -r lib; do
    copy "$lib"
  done < <(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
}

for prog in "$@"; do
  if [ -d "$prog" ]; then
    mkdir -p "$out$prog"
    tar -C "$prog" --exclude=test --exclude=tests --exclude=__pycache__ -cf - . | tar -C "$out$prog" -xf -
    while read -r so; do
      closure "$so"
    done < <(find "$prog" -name '*.so*' -type f -not -path '*/test*')
    continue
  fi
  path=$(command -v "$prog") || { echo "debian-rootfs: $prog not found" >&2; exit 1; }
  copy "$path"
  closure "$path"
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
