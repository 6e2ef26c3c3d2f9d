"""`roles:` section: the four roles of opshub as JupyterHub RBAC roles bound to groups."""

from __future__ import annotations

from ..contract import (
    DASHBOARDS_ACCOUNT,
    DELETE_SCOPE,
    PUBLISH_SCOPE,
    RECORD_SCOPE,
    REQUEST_SCOPE,
    RUNNER_ACCOUNT,
    SERVICE_NAME,
    SYSTEM_ACCOUNTS,
)
from ..settings import Settings
from .services import IDLE_CULLER_ROLE, idle_culler_enabled

# JupyterHub gives every user the `user` role, which by default holds `self` (start and use
# one's own server). opshub narrows it to reading oneself, so that a viewer gets no server;
# the roles that may have a server get `self` back through their groups.
EVERY_USER_SCOPES = ["read:users!user", "read:groups:name"]
SERVER_USER_SCOPES = ["self"]
# Everyone on the team reads the run history; who may write to it is a custom scope.
READ_HISTORY = f"access:services!service={SERVICE_NAME}"
RECORD_RUNS = f"{RECORD_SCOPE}!user"
PUBLISH_DASHBOARDS = f"{PUBLISH_SCOPE}!user"  # as oneself: the service records the token's owner
REQUEST_RUNS = f"{REQUEST_SCOPE}!user"  # runs requested as oneself

# What each system account is for, as the admin page and refusals say it.
SYSTEM_ACCOUNT_PURPOSES = {
    RUNNER_ACCOUNT: "runs unattended runbooks",
    DASHBOARDS_ACCOUNT: "serves live dashboards",
}
# What each of opshub's roles gives, in a few words (the admin page's Groups note).
ROLE_SUMMARIES = {
    "admin": "the admin page; deletes runs, cancels anyone's",
    "author": "own server; writes, runs and publishes runbooks",
    "operator": "own server; runs and requests runbooks",
    "viewer": "dashboards and run history only, no server",
}


def group_roles(settings: Settings) -> dict[str, list[str]]:
    """group -> the opshub roles it gives (`roles:` read the other way round), groups in name order."""
    found: dict[str, list[str]] = {}
    for role, groups in settings["roles"].items():
        for group in groups:
            found.setdefault(group, [])
            if role not in found[group]:
                found[group].append(role)
    return dict(sorted(found.items()))


def admin_role_groups(settings: Settings) -> list[str]:
    """Groups bound to JupyterHub's admin role.

    With an OAuth provider, the authenticator's `admin_groups` sets each person's admin flag
    at login instead: the groups only exist once someone of them has logged in, and JupyterHub
    6.1 fails at start when the admin role names a group that does not exist yet.
    """
    return settings["roles"]["admin"] if settings["auth"]["provider"] == "shared-password" else []


def load_roles(settings: Settings) -> list[dict]:
    groups = settings["roles"]
    return [
        {
            "name": "user",
            "description": "Every logged-in person: may read their own user model.",
            "scopes": EVERY_USER_SCOPES,
        },
        # JupyterHub's own admin role (its scopes and description cannot be changed): platform owners.
        {"name": "admin", "groups": admin_role_groups(settings)},
        {
            "name": "opshub-admin",
            "description": "Platform owners: may also delete runs from the history and cancel anyone's runs.",
            "scopes": [READ_HISTORY, RECORD_SCOPE, DELETE_SCOPE, PUBLISH_SCOPE, REQUEST_SCOPE],
            "groups": groups["admin"],
        },
        {
            "name": "opshub-author",
            "description": "Writes runbooks: own server, runs, requests and publishes runbooks.",
            "scopes": [*SERVER_USER_SCOPES, READ_HISTORY, RECORD_RUNS, REQUEST_RUNS, PUBLISH_DASHBOARDS],
            "groups": groups["author"],
        },
        {
            "name": "opshub-operator",
            "description": "Runs runbooks: own server, runs and requests runbooks, reads the history.",
            "scopes": [*SERVER_USER_SCOPES, READ_HISTORY, RECORD_RUNS, REQUEST_RUNS],
            "groups": groups["operator"],
        },
        {
            "name": "opshub-viewer",
            "description": "Only looks: dashboards and run history, never a server.",
            "scopes": [*EVERY_USER_SCOPES, READ_HISTORY],
            "groups": groups["viewer"],
        },
    ]


def execution_plane_roles() -> list[dict]:
    """The system accounts of the execution plane (listing them creates them), and what the opshub
    service may do with their servers: start, stop and use them, nothing else of anyone's."""
    return [
        {
            "name": "opshub-system-accounts",
            "description": "opshub's system accounts: their servers serve the opshub service only.",
            # a runner's server tells the hub it is active while its run goes on (no idle culling)
            "scopes": ["users:activity!user"],
            "users": list(SYSTEM_ACCOUNTS),
        },
        {
            "name": "opshub-service",
            "description": "The opshub service: starts and uses the servers of opshub's system accounts.",
            "scopes": [f"{scope}!user={user}" for user in SYSTEM_ACCOUNTS for scope in ("servers", "access:servers")],
            "services": [SERVICE_NAME],
        },
    ]


def apply_roles(c, settings: Settings) -> None:
    roles = load_roles(settings) + execution_plane_roles()
    if idle_culler_enabled(settings):
        roles.append(IDLE_CULLER_ROLE)
    c.JupyterHub.load_roles = roles


def may_have_a_server(orm_user) -> bool:
    """Whether this person's roles give them a server (`self` or an admin's `servers`): viewers' do not.

    Read from JupyterHub's database when asked (a page, a spawn), so a change of groups counts at once."""
    from jupyterhub.scopes import get_scopes_for

    return any(scope.split("!")[0] == "servers" for scope in get_scopes_for(orm_user))
