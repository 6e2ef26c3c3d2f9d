"""The live dashboards' backend: a standalone Voila in the server of the `opshub-dashboards` system
account, started by the deployment's spawner like anyone's server (its own OS account when the
embedded default runs as root, its own container of the ops image in Docker, its own pod in
Kubernetes). So no dashboard's code runs in the hub's trust domain (THREAT-MODEL.md, invariant 1).

It knows nothing but what the opshub service hands it over its API (`opshub-backend/` under the
server's prefix): the published notebooks, the runbooks repository's files at the synced commit,
and the kernels' environment (the read-only data token). The service is the only client:

- `POST opshub-backend/session` with the service's hub token (checked with the hub: it must hold
  `access:servers` on this server) answers a per-start secret;
- every other request, Voila's pages and websockets included, must carry that secret in
  `X-Opshub-Voila-Secret`; anything else gets 403, whoever reaches the server through the proxy.

The runner of unattended runs reuses the same shape: a system account's server, started through
the hub's API by the service, that serves only the service.
"""

SECRET_HEADER = "X-Opshub-Voila-Secret"
# The body of the server's 403 to anything without its secret: how the service tells the server's
# own answer from a redirect to the hub's login (the server gone) or the proxy's error.
REFUSED = "this server only answers the opshub service"
# The body of its 503 to a page asked for before the service handed it the repository's files: no
# dashboard's kernel starts without them (a dashboard reads its inventory and data files there).
WAITING = "waiting for the runbooks' files"
API_PATH = "opshub-backend/"  # under the server's prefix
POOLS_PATH = API_PATH + "pools/"
NOTEBOOKS_PATH = API_PATH + "notebooks/"
RUNBOOKS_PATH = API_PATH + "runbooks"
ENVIRONMENT_PATH = API_PATH + "environment"
SESSION_PATH = API_PATH + "session"
# Where the service says which URL prefix the pages use (the service's proxy path), and the pool settings.
BASE_URL_ENV = "OPSHUB_DASHBOARDS_BASE_URL"
POOL_SIZE_ENV = "OPSHUB_DASHBOARDS_POOL_SIZE"
CULL_IDLE_ENV = "OPSHUB_DASHBOARDS_CULL_IDLE"
