# Sourced by up.sh and down.sh: `compose ARGS` runs Docker Compose on images/compose.yaml as
# project $OPSHUB_NAME. Debian bookworm's is `docker-compose` (package docker-compose); newer
# Docker packages have the `docker compose` plugin.
compose() {
  if command -v docker-compose >/dev/null; then
    docker-compose --project-name "$OPSHUB_NAME" --file compose.yaml "$@"
  elif docker compose version >/dev/null 2>&1; then
    docker compose --project-name "$OPSHUB_NAME" --file compose.yaml "$@"
  else
    echo "opshub: Docker Compose is missing: apt-get install docker-compose" >&2
    return 1
  fi
}
