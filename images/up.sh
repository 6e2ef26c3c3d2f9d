#!/bin/bash
# `make up`: start opshub with Docker Compose (images/compose.yaml), wait until it answers, and
# say where to log in. The images come from `make images`. Variables: see images/compose.yaml.
set -euo pipefail
here="$(dirname "$0")"
export OPSHUB_NAME="${OPSHUB_NAME:-opshub}"
export OPSHUB_PORT="${OPSHUB_PORT:-8000}"
export OPSHUB_BIND="${OPSHUB_BIND:-127.0.0.1}"
# paths given by the caller are relative to where `make` runs
export OPSHUB_SETTINGS_FILE="$(realpath "${OPSHUB_SETTINGS_FILE:-$here/opshub-docker.yaml}")"
export OPSHUB_SOURCE="$(realpath "${OPSHUB_SOURCE:-$here/..}")"
cd "$here"
source ./compose.sh
ops_image="$(sed -n 's/^ *image: *//p' "$OPSHUB_SETTINGS_FILE" | head -n1)"

if ! docker info >/dev/null 2>&1; then
  echo "up: no Docker Engine answers (is dockerd running? apt-get install docker.io)" >&2
  exit 1
fi
for image in "${OPSHUB_HUB_IMAGE:-opshub/hub:latest}" "${ops_image:-opshub/ops:latest}"; do
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "up: the image $image is missing: run \`make images\` first" >&2
    exit 1
  fi
done

# Both images must carry the same opshub (images/build.sh labels them with the digest of the sources
# they were built from): a hub image of one version with an ops image of another breaks live dashboards
# and unattended runs, whose servers in the ops image talk to the hub's service.
source_of() {  # empty for an image without the label (not built by images/build.sh: not ours to judge)
  docker image inspect --format '{{index .Config.Labels "org.opshub.source"}}' "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}
hub_source="$(source_of "${OPSHUB_HUB_IMAGE:-opshub/hub:latest}")"
ops_source="$(source_of "${ops_image:-opshub/ops:latest}")"
if [ -n "$hub_source" ] && [ -n "$ops_source" ] && [ "$hub_source" != "$ops_source" ]; then
  echo "up: ${OPSHUB_HUB_IMAGE:-opshub/hub:latest} (opshub source $hub_source) and ${ops_image:-opshub/ops:latest}" \
    "(opshub source $ops_source) were built from different sources: run \`make images\` again" >&2
  exit 1
fi

compose up --detach
url="http://${OPSHUB_BIND/0.0.0.0/127.0.0.1}:${OPSHUB_PORT}"
for _ in $(seq 1 120); do
  if curl -fsS "$url/hub/api" >/dev/null 2>&1; then
    if [ -n "${OPSHUB_DEMO_PASSWORD:-}" ]; then
      password='$OPSHUB_DEMO_PASSWORD'
    else
      password="$(docker exec "$OPSHUB_NAME-hub" cat /srv/opshub/state/demo-password 2>/dev/null || echo '(see the hub log)')"
    fi
    echo
    echo "opshub is up: $url/"
    echo "  log in as alice (admin), bob (operator) or carol (viewer) with the password $password"
    echo "  logs: docker logs -f $OPSHUB_NAME-hub    stop: make down"
    exit 0
  fi
  if [ "$(docker inspect -f '{{.State.Running}}' "$OPSHUB_NAME-hub" 2>/dev/null)" != "true" ]; then
    break
  fi
  sleep 1
done
echo "up: the hub did not answer at $url; its log:" >&2
docker logs --tail 40 "$OPSHUB_NAME-hub" >&2 || true
exit 1
