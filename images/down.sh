#!/bin/bash
# `make down`: stop the Docker deployment. The hub stops every user's container first (they are
# removed on stop), on SIGINT; any container of this deployment still there afterwards is removed too.
# Volumes (state, runbooks, homes) stay; `docker volume rm` them to start from scratch.
set -euo pipefail
here="$(dirname "$0")"
export OPSHUB_NAME="${OPSHUB_NAME:-opshub}"
# paths given by the caller are relative to where `make` runs
export OPSHUB_SETTINGS_FILE="$(realpath "${OPSHUB_SETTINGS_FILE:-$here/opshub-docker.yaml}")"
export OPSHUB_SOURCE="$(realpath "${OPSHUB_SOURCE:-$here/..}")"
cd "$here"

source ./compose.sh
# Ctrl-C for the hub first (SIGINT): it stops every server it started, unattended runs first, each
# recorded. (`compose down` sends SIGTERM, which the hub takes for a restart: it would leave the
# servers running for its next start, and the network in use.)
hub="$OPSHUB_NAME-hub"
if [ "$(docker inspect --format '{{.State.Running}}' "$hub" 2>/dev/null)" = true ]; then
  since="$(date +%s)"
  docker kill --signal SIGINT "$hub" >/dev/null
  timeout 90 docker wait "$hub" >/dev/null || echo "down: the hub did not stop within 90 s of SIGINT" >&2
  # what the hub said as it stopped (tini passed the signal on): the runs it interrupted, if any
  docker logs --since "$since" "$hub" 2>&1 |
    grep -E 'Received signal|opshub: interrupting|Cleaning up single-user|Leaving single-user' | sed 's/^/down: hub: /' >&2 || true
fi
compose down --timeout 90
# Users' containers are on the deployment's network (which compose removed, unless one
# still used it): anything DockerSpawner left is found by that network.
left="$(docker ps -aq --filter "network=$OPSHUB_NAME")"
if [ -n "$left" ]; then
  echo "down: removing containers left on network $OPSHUB_NAME: $left" >&2
  docker rm -f $left >/dev/null
  docker network rm "$OPSHUB_NAME" >/dev/null 2>&1 || true
fi
