"""`auth:` section: who may log in, and how."""

from __future__ import annotations

from ..settings import Settings, role_groups


def allowed_groups(settings: Settings) -> list[str]:
    """Groups whose members may log in: `auth.allowed_groups`, or every group that has a role."""
    return sorted(settings["auth"]["allowed_groups"] or role_groups(settings.data))


def apply_auth(c, settings: Settings, runtime) -> None:
    auth = settings["auth"]
    if auth["provider"] == "shared-password":
        _apply_shared_password(c, settings, runtime.demo_password)


def _apply_shared_password(c, settings: Settings, password: str | None) -> None:
    team = settings["auth"]["shared_password"]["groups"]
    c.JupyterHub.authenticator_class = "jupyterhub.authenticators.shared.SharedPasswordAuthenticator"
    # Everyone logs in with the one user password; admin rights come from the admin role of
    # their group (RBAC), not from SharedPasswordAuthenticator's separate admin password.
    c.SharedPasswordAuthenticator.user_password = password or ""
    allowed = allowed_groups(settings)
    c.Authenticator.allowed_users = {user for group in allowed for user in team.get(group, [])}
    # The team's groups come from the settings file; `roles` binds RBAC roles to them.
    c.JupyterHub.load_groups = {group: {"users": sorted(users)} for group, users in team.items()}
