#!/bin/bash
# The base image of opshub's images, and the air-gapped path when the registry cannot be reached.
#
#   images/base/build.sh PINNED_IMAGE LOCAL_TAG
#
# Prints (last line of stdout) the image the other Dockerfiles should start FROM:
#   1. PINNED_IMAGE if it is already present, or can be pulled;
#   2. else LOCAL_TAG if it was built before (the rootfs is not rebuilt);
#   3. else LOCAL_TAG built now: debootstrap a minimal Debian rootfs from the Debian mirror this
#      machine's apt uses, then `docker import` it. Only Debian packages are needed, no registry.
set -euo pipefail

pinned="${1:?usage: build.sh PINNED_IMAGE LOCAL_TAG}"
local_tag="${2:?usage: build.sh PINNED_IMAGE LOCAL_TAG}"
suite="${DEBIAN_SUITE:-bookworm}"
# The mirror apt already uses here (a local mirror in an air-gapped site), else Debian's own.
mirror="${DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -oE 'https?://[^ ]+' | head -n1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

say() { echo "images/base: $*" >&2; }

if docker image inspect "$pinned" >/dev/null 2>&1; then
  say "using $pinned (present)"
  echo "$pinned"
  exit 0
fi
if [ "${OPSHUB_OFFLINE:-}" != "1" ] && timeout 120 docker pull "$pinned" >&2 2>/dev/null; then
  say "using $pinned (pulled)"
  echo "$pinned"
  exit 0
fi
if docker image inspect "$local_tag" >/dev/null 2>&1; then
  say "$pinned cannot be pulled; using $local_tag, built from Debian packages before"
  echo "$local_tag"
  exit 0
fi

say "$pinned cannot be pulled: building $local_tag from Debian packages ($suite from $mirror)"
if ! command -v debootstrap >/dev/null; then
  say "debootstrap is missing: apt-get install debootstrap (as root)"
  exit 1
fi
rootfs="$(mktemp -d /var/tmp/opshub-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
# minbase: essential packages and apt only, like the official -slim images.
debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" >&2
# The same apt sources a Debian image has: the release, its updates, and security updates.
security="${mirror%/debian*}/debian-security"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
# Like the official images: no docs or caches kept, no services started by package installs.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --message "debootstrap $suite minbase from $mirror (opshub air-gapped base)" \
  - "$local_tag" >&2
say "built $local_tag"
echo "$local_tag"
