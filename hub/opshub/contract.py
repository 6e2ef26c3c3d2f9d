"""Names shared by the processes of opshub (the hub, the opshub service, people's servers, the
dashboards server): the service's name and scopes, the variables the hub hands to servers, who the
system accounts are and how they are reached. Each is declared here once."""

from __future__ import annotations

SERVICE_NAME = "opshub"  # the JupyterHub service: /services/opshub/
# The settings sections the service reads: the hub hands them over whole, as one JSON document
# (configure/services.py `service_settings`, read by service/__main__.py).
SERVICE_SETTINGS_SECTIONS = ("history", "runner", "runbooks", "dashboards", "notifications")

# Custom RBAC scopes (JupyterHub >= 3): the hub hands them out through roles, the service checks them.
RECORD_SCOPE = "custom:opshub:runs:record"
DELETE_SCOPE = "custom:opshub:runs:delete"
PUBLISH_SCOPE = "custom:opshub:dashboards:publish"
REQUEST_SCOPE = "custom:opshub:runs:request"  # ask the runner for a run (page, `opshub request`, API)

# What the hub hands a person's server (configure/spawner.py user_environment), read there.
RUNBOOKS_REPO_ENV = "OPSHUB_RUNBOOKS_REPO"
RUNBOOKS_BRANCH_ENV = "OPSHUB_RUNBOOKS_BRANCH"
RUNBOOKS_TARGET_ENV = "OPSHUB_RUNBOOKS_TARGET"
ALLOWED_PULL_REPOS_ENV = "OPSHUB_ALLOWED_PULL_REPOS"
SERVICE_URL_ENV = "OPSHUB_SERVICE_URL"
PUBLIC_URL_ENV = "OPSHUB_PUBLIC_URL"  # the hub's address as browsers reach it (links printed in terminals)
# the deployment's id: what a person's server keeps for its deployment (interactive runs' spool) is kept apart
DEPLOYMENT_ID_ENV = "OPSHUB_DEPLOYMENT_ID"
DEFAULT_RUNBOOKS_TARGET = "runbooks"


def service_prefix(hub_base_url: str) -> str:
    """Where the proxy routes the opshub service: /services/opshub/ under the hub's base URL."""
    return f"{hub_base_url.rstrip('/')}/services/{SERVICE_NAME}/"


# The JupyterHub user whose server renders live dashboards (opshub.dashboards_backend). Its OS
# account, when the embedded default runs as root, is the same name; people's are `jupyter-<name>`.
DASHBOARDS_ACCOUNT = "opshub-dashboards"
# The JupyterHub user whose named servers run unattended runs, one per run (opshub.runner).
RUNNER_ACCOUNT = "opshub-runner"
# Accounts of the execution plane: never a person, so nobody may log in as one.
SYSTEM_ACCOUNTS = (DASHBOARDS_ACCOUNT, RUNNER_ACCOUNT)


def server_prefix(hub_base_url: str, account: str) -> str:
    """Where the proxy routes the default server of `account`."""
    return f"{hub_base_url.rstrip('/')}/user/{account}/"
