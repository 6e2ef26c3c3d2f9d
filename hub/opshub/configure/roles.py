"""`roles:` section: the four roles of opshub as JupyterHub RBAC roles bound to groups."""

from __future__ import annotations

from ..settings import Settings

# JupyterHub gives every user the `user` role, which by default holds `self` (start and use
# one's own server). opshub narrows it to reading oneself, so that a viewer gets no server;
# the roles that may have a server get `self` back through their groups.
EVERY_USER_SCOPES = ["read:users!user", "read:groups:name"]
SERVER_USER_SCOPES = ["self"]


def load_roles(settings: Settings) -> list[dict]:
    groups = settings["roles"]
    return [
        {
            "name": "user",
            "description": "Every logged-in person: may read their own user model.",
            "scopes": EVERY_USER_SCOPES,
        },
        # JupyterHub's own admin role (its scopes and description cannot be changed): platform owners.
        {"name": "admin", "groups": groups["admin"]},
        {
            "name": "opshub-author",
            "description": "Writes runbooks: own server, runs and publishes runbooks.",
            "scopes": SERVER_USER_SCOPES,
            "groups": groups["author"],
        },
        {
            "name": "opshub-operator",
            "description": "Runs runbooks: own server, runs runbooks, reads the history.",
            "scopes": SERVER_USER_SCOPES,
            "groups": groups["operator"],
        },
        {
            "name": "opshub-viewer",
            "description": "Only looks: dashboards and run history, never a server.",
            "scopes": EVERY_USER_SCOPES,
            "groups": groups["viewer"],
        },
    ]


def apply_roles(c, settings: Settings) -> None:
    c.JupyterHub.load_roles = load_roles(settings)
