"""Names shared by the processes of opshub (the hub, the opshub service, people's servers, the
dashboards server): who the system accounts are and how they are reached."""

from __future__ import annotations

# The JupyterHub user whose server renders live dashboards (opshub.dashboards_backend). Its OS
# account, when the embedded default runs as root, is the same name; people's are `jupyter-<name>`.
DASHBOARDS_ACCOUNT = "opshub-dashboards"
# Accounts of the execution plane: never a person, so nobody may log in as one.
SYSTEM_ACCOUNTS = (DASHBOARDS_ACCOUNT,)


def server_prefix(hub_base_url: str, account: str) -> str:
    """Where the proxy routes the default server of `account`."""
    return f"{hub_base_url.rstrip('/')}/user/{account}/"
