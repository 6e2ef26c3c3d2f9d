"""The hub's own pages: opshub's templates, where people land, links on the home page."""

from __future__ import annotations

from urllib.parse import urlencode

from ..contract import SYSTEM_ACCOUNTS, service_prefix
from ..settings import PACKAGE_DIR, Settings, repository_url
from .roles import ROLE_SUMMARIES, SYSTEM_ACCOUNT_PURPOSES, group_roles, may_have_a_server
from .spawner import local_accounts

TEMPLATES = str(PACKAGE_DIR / "templates")


def runbooks_pull_link(settings: Settings) -> str:
    """An nbgitpuller link that pulls the latest runbooks into the user's server and opens them."""
    runbooks = settings["runbooks"]
    query = urlencode(
        {
            "repo": repository_url(settings),
            "branch": runbooks["branch"],
            "targetpath": runbooks["target"],
            "urlpath": f"lab/tree/{runbooks['target']}",
        }
    )
    return f"{settings['hub']['base_url']}hub/user-redirect/git-pull?{query}"


def demo_team(settings: Settings) -> str:
    """'alice (admin, author), bob (operator)...' for the shared-password demo; empty otherwise."""
    if settings["auth"]["provider"] != "shared-password":
        return ""
    return ", ".join(f"{user} ({', '.join(roles)})" for user, roles in team_roles(settings).items())


def team_roles(settings: Settings) -> dict[str, list[str]]:
    """user -> roles, for the shared-password team listed in the settings."""
    team = settings["auth"]["shared_password"]["groups"]
    roles: dict[str, list[str]] = {}
    for role, groups in settings["roles"].items():
        for group in groups:
            for user in team.get(group, []):
                roles.setdefault(user, [])
                if role not in roles[user]:
                    roles[user].append(role)
    return roles


def landing_page(handler) -> str:
    """After login: people who may have a server go to it (JupyterHub's default); viewers go home.

    The handler's own scopes are those of the request (none yet on the login POST), so the
    user's scopes are looked up here.
    """
    user = handler.current_user
    if user is not None and may_have_a_server(user.orm_user):
        return ""  # JupyterHub then sends them to their server, spawning it if needed
    return handler.hub.base_url + "home"


def admin_page_notes(settings: Settings) -> dict:
    """What opshub's admin page adds to JupyterHub's (templates/admin.html): the system accounts
    with what they do, and which group gives which role."""
    return {
        "system_accounts": {name: f"system account: {purpose}" for name, purpose in SYSTEM_ACCOUNT_PURPOSES.items()},
        "group_roles": [
            {"group": group, "roles": roles, "gives": "; ".join(ROLE_SUMMARIES[role] for role in roles)}
            for group, roles in group_roles(settings).items()
        ],
    }


def people_without_server(user):
    """`template_vars` value: JupyterHub calls it with the page's viewer on every page; only the admin
    page calls what it returns: the names of the people whose roles give them no server (viewers)."""

    def names() -> list[str]:
        from jupyterhub import orm

        if user is None:
            return []
        people = user.db.query(orm.User).filter(orm.User.name.notin_(SYSTEM_ACCOUNTS)).order_by(orm.User.name)
        return [person.name for person in people if not may_have_a_server(person)]

    return names


TRIAL_WARNING = (
    "Single-account trial: every person's server runs as the same system account as the hub, so"
    " anyone logged in can read everyone's files and the hub's secrets. Use it alone; for a team,"
    " start opshub as root (one system account per person) or use Docker or Kubernetes."
)


def apply_pages(c, settings: Settings, runtime) -> None:
    c.JupyterHub.template_paths = [TEMPLATES]
    c.JupyterHub.default_url = landing_page
    c.JupyterHub.template_vars = {
        "opshub_runbooks_pull_link": runbooks_pull_link(settings),
        "opshub_runbooks_target": settings["runbooks"]["target"],
        "opshub_demo_team": demo_team(settings),
        "opshub_history_url": service_prefix(settings["hub"]["base_url"]),
        "opshub_admin_notes": admin_page_notes(settings),
        "opshub_people_without_server": people_without_server,
    }
    if settings["spawner"]["kind"] == "local" and local_accounts(settings, runtime) == "shared":
        # JupyterHub shows `announcement` at the top of every one of its pages
        c.JupyterHub.template_vars["announcement"] = TRIAL_WARNING
