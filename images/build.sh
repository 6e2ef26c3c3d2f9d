#!/bin/bash
# Build opshub's images: `make images` runs this from the repository root.
#
#   BASE_IMAGE     pinned base of both images (default below); when it cannot be pulled (an
#                  air-gapped site, or these machines), images/base/build.sh builds a Debian
#                  base from Debian packages instead (debootstrap + docker import)
#   EXTRA_CA_CERT  PEM bundle added to the images' trust store, for pip/npm behind a
#                  TLS-inspecting proxy. Default: this machine's bundle, so that builds trust what
#                  the build host trusts; set it empty for none
#   INSTALL_TERRAFORM  1 (default) or 0
#   OPS_IMAGE, HUB_IMAGE  tags (default opshub/ops:latest, opshub/hub:latest)
#   DOCKER_BUILD_ARGS  extra `docker build` arguments (for example --no-cache)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-debian:12.8-slim}"
LOCAL_BASE="${LOCAL_BASE:-opshub/debian:bookworm}"
OPS_IMAGE="${OPS_IMAGE:-opshub/ops:latest}"
HUB_IMAGE="${HUB_IMAGE:-opshub/hub:latest}"
EXTRA_CA_CERT="${EXTRA_CA_CERT-/etc/ssl/certs/ca-certificates.crt}"
SOURCE_LABEL=org.opshub.source  # the digest of the sources both images were built from (up.sh compares them)

if ! docker info >/dev/null 2>&1; then
  echo "images: no Docker Engine answers (is dockerd running? apt-get install docker.io)" >&2
  exit 1
fi

base="$(images/base/build.sh "$BASE_IMAGE" "$LOCAL_BASE" | tail -n1)"

mkdir -p images/.build
if [ -n "$EXTRA_CA_CERT" ]; then
  cp "$EXTRA_CA_CERT" images/.build/extra-ca.pem
else
  : >images/.build/extra-ca.pem
fi

# Both images from one snapshot of the sources, labelled with its digest. The working tree may change
# while the first image builds (a git pull, an edit): an ops image of one opshub with a hub image of
# another breaks what they share (the dashboards server's and the runner's API with the service), and
# up.sh refuses such a pair. The snapshot holds what .dockerignore lets through (it applies again).
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
tar --create --exclude=hub/node_modules --exclude=hub/labextension/node_modules --exclude='hub/*.egg-info' \
    --exclude=__pycache__ --exclude='*.pyc' .dockerignore hub images | tar --extract --directory "$context"
source_digest="$(cd "$context" && find hub images -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"

build() {
  local tag="$1" dockerfile="$2"
  echo "images: building $tag from $base (opshub source $source_digest)" >&2
  # The classic builder (DOCKER_BUILDKIT=0) is what Debian's docker.io has without buildx;
  # --network host lets pip, npm and apt reach the registries the host reaches.
  DOCKER_BUILDKIT=0 docker build --network host \
    --build-arg BASE_IMAGE="$base" \
    --build-arg INSTALL_TERRAFORM="${INSTALL_TERRAFORM:-1}" \
    --label org.opencontainers.image.source=opshub \
    --label "$SOURCE_LABEL=$source_digest" \
    --file "$context/$dockerfile" --tag "$tag" ${DOCKER_BUILD_ARGS:-} "$context"
}

build "$OPS_IMAGE" images/ops/Dockerfile
build "$HUB_IMAGE" images/hub/Dockerfile
echo "images: built $OPS_IMAGE and $HUB_IMAGE (opshub source $source_digest)" >&2
