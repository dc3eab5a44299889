#!/usr/bin/env bash
# Builds an OCI image tarball (what `ctr image import` and `docker load` take) of a busybox
# root: Debian's static busybox with a symlink per applet, one uncompressed layer.
#
#   scripts/oci-image.sh OUT.tar [IMAGE-NAME]
#
# IMAGE-NAME defaults to docker.io/quark/busybox:latest.
set -euo pipefail

out=${1:?usage: oci-image.sh OUT.tar [IMAGE-NAME]}
name=${2:-docker.io/quark/busybox:latest}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "oci-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
ldd "$busybox" >/dev/null 2>&1 && { echo "oci-image: $busybox is not static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,etc,tmp,proc,dev,root}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
# A reproducible layer: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .

blob() { # FILE -> prints "DIGEST SIZE" after storing it
  local sum size
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$sum"
  echo "$sum $size"
}

read -r layer_sum layer_size < <(blob "$work/layer.tar")
cat >"$work/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sum"]},"history":[{"created_by":"quark scripts/oci-image.sh"}]}
EOF
read -r config_sum config_size < <(blob "$work/config.json")
cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_sum","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_sum","size":$layer_size}]}
EOF
read -r manifest_sum manifest_size < <(blob "$work/manifest.json")
cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_sum","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"${name##*:}"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out" .
echo "$out: $name"
