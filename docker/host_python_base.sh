#!/usr/bin/env bash
# A local base image for running docker/compose.yaml with THIS machine's Python where no image
# registry can be reached (tests/integration/test_docker.py): a minimal Debian 12 root filesystem made by
# debootstrap from Debian's packages and loaded with `docker import`. It holds no Python: the
# test mounts the host's interpreter, its .venv and the repository read-only at their own paths,
# so torch, Ray and ffpipe come from the host and nothing has to be installed into an image.
# The shared libraries those need (libssl, libffi, ...) come from Debian like the host's own.
#   docker/host_python_base.sh [IMAGE]     default ffpipe-host-python:bookworm; kept once made
# Needs root, debootstrap (installed with apt-get if missing) and a Debian mirror ($DEBIAN_MIRROR).
set -euo pipefail
image=${1:-ffpipe-host-python:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image is already there" >&2; exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "host_python_base.sh: debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/ffpipe-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase plus the libraries that CPython's extension modules, torch and Ray link against.
libs=libssl3,libffi8,libsqlite3-0,libexpat1,libreadline8,libncursesw6,libnsl2,libtirpc3
libs=$libs,libgssapi-krb5-2,libuuid1,libbz2-1.0,liblzma5,libstdc++6,procps
debootstrap --variant=minbase --include="$libs" bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "host_python_base.sh: debootstrap failed (log above)" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/{doc,man,locale}
# The same non-root user as docker/Dockerfile, and the mount points its volumes inherit from.
chroot "$root" groupadd --gid 1000 ffpipe
chroot "$root" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ffpipe
mkdir -p "$root/runs" "$root/ray-auth"
chown 1000:1000 "$root/runs" "$root/ray-auth"
chmod 700 "$root/ray-auth"
chmod 755 "$root/root"  # a host Python under /root (pyenv) is mounted there: let the user in
tar -C "$root" -c . | docker import --change 'USER ffpipe' \
  --change 'LABEL org.ffpipe.role=host-python-base' - "$image" >/dev/null
echo "made $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))" >&2
