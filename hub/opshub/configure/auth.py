"""`auth:` section: who may log in, and how.

The OAuth providers map onto oauthenticator 17: the provider's groups become JupyterHub groups
at every login (`manage_groups`), `allowed_groups` decides who gets in, `roles.admin` groups
make hub admins, and `roles` binds the other RBAC roles to the same groups (see roles.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import SYSTEM_ACCOUNTS
from ..settings import Settings, callback_url, role_groups

GITHUB_CLASS = "oauthenticator.github.GitHubOAuthenticator"
GENERIC_CLASS = "oauthenticator.generic.GenericOAuthenticator"
OIDC_CLASS = "opshub.auth.OIDCAuthenticator"  # GenericOAuthenticator that copes with a provider that is down


def allowed_groups(settings: Settings) -> list[str]:
    """Groups whose members may log in: `auth.allowed_groups`, or every group that has a role."""
    return sorted(settings["auth"]["allowed_groups"] or role_groups(settings.data))


def refusal_message(settings: Settings) -> str:
    """The page for someone the provider knows but who is in no allowed group. Names no groups."""
    return (
        "You signed in at the identity provider, but you are not in a group allowed on this hub."
        f" To get access, ask {settings['auth']['contact']} to add you to your team's group."
    )


def github_team_groups(auth_state: dict) -> list[str]:
    """JupyterHub groups from GitHub teams: `org:team-slug`, as GitHub's own URLs name them."""
    return [f"{team['organization']['login']}:{team['slug']}" for team in auth_state.get("teams") or []]


@dataclass(frozen=True)
class ClaimGroups:
    """JupyterHub groups from a userinfo claim. A class, not a dotted key, because claim names
    may contain dots (GitLab's `https://gitlab.org/claims/groups/owner`)."""

    claim: str

    def __call__(self, auth_state: dict) -> list[str]:
        groups = (auth_state.get("oauth_user") or {}).get(self.claim) or []
        return [groups] if isinstance(groups, str) else [str(g) for g in groups]


def refuse_system_accounts(authenticator, handler, authentication: dict) -> dict:
    """`Authenticator.post_auth_hook`: nobody logs in as an account of the execution plane (an
    identity provider's user of that name is refused with a page saying why).

    Not `blocked_users`: JupyterHub takes every role away from a blocked user, and the system
    accounts' roles are what let the opshub service start their servers."""
    from tornado import web

    if authentication and authentication.get("name") in SYSTEM_ACCOUNTS:
        raise web.HTTPError(403, f"{authentication['name']} is a system account of opshub: nobody logs in as it")
    return authentication


def apply_auth(c, settings: Settings, runtime) -> None:
    provider = settings["auth"]["provider"]
    c.Authenticator.post_auth_hook = refuse_system_accounts
    if provider == "shared-password":
        _apply_shared_password(c, settings, runtime.demo_password)
    elif provider == "github":
        _apply_github(c, settings, runtime)
    elif provider == "gitlab":
        _apply_gitlab(c, settings, runtime)
    elif provider == "oidc":
        _apply_oidc(c, settings, runtime)


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


def _apply_oauth_client(c, settings: Settings, runtime, cls: str) -> None:
    """What every OAuth provider shares: the client, the callback, groups, admins, refusals."""
    section = settings["auth"][settings["auth"]["provider"]]
    c.JupyterHub.authenticator_class = cls
    trait = getattr(c, cls.rsplit(".", 1)[1])
    trait.client_id = section["client_id"]
    trait.client_secret = runtime.client_secret or ""
    trait.oauth_callback_url = callback_url(settings.data)
    # The provider's groups are the truth: synced at every login, so a change there (such as
    # leaving the admin group) takes effect at the next login.
    trait.manage_groups = True
    trait.allowed_groups = set(allowed_groups(settings))
    trait.admin_groups = set(settings["roles"]["admin"])
    trait.custom_403_message = refusal_message(settings)


def _apply_github(c, settings: Settings, runtime) -> None:
    github = settings["auth"]["github"]
    _apply_oauth_client(c, settings, runtime, GITHUB_CLASS)
    c.GitHubOAuthenticator.allowed_organizations = set(github["organizations"])
    # read:org lets oauthenticator see private membership and list the person's teams.
    c.GitHubOAuthenticator.scope = ["read:org"]
    c.GitHubOAuthenticator.populate_teams_in_auth_state = True
    c.GitHubOAuthenticator.auth_state_groups_key = github_team_groups
    c.GitHubOAuthenticator.github_url = github["url"]


def _apply_gitlab(c, settings: Settings, runtime) -> None:
    # GitLab is an OpenID Connect provider whose userinfo carries `groups` (full group paths);
    # oauthenticator's GitLabOAuthenticator can check group membership but not turn groups
    # into JupyterHub groups, so GitLab goes through the generic OIDC client.
    url = settings["auth"]["gitlab"]["url"].rstrip("/")
    _apply_oauth_client(c, settings, runtime, GENERIC_CLASS)
    generic = c.GenericOAuthenticator
    generic.authorize_url = f"{url}/oauth/authorize"
    generic.token_url = f"{url}/oauth/token"
    generic.userdata_url = f"{url}/oauth/userinfo"
    generic.scope = ["openid", "profile", "email"]
    generic.username_claim = "nickname"  # the GitLab user name
    generic.auth_state_groups_key = ClaimGroups("groups")
    generic.login_service = "GitLab"


def _apply_oidc(c, settings: Settings, runtime) -> None:
    oidc = settings["auth"]["oidc"]
    _apply_oauth_client(c, settings, runtime, OIDC_CLASS)
    authenticator = c.OIDCAuthenticator
    authenticator.oidc_issuer = oidc["issuer"]
    authenticator.contact = settings["auth"]["contact"]
    # The endpoints found at start. Any left empty (the provider could not be reached then) are read
    # from the issuer's discovery document at the next login (opshub.auth).
    endpoints = runtime.oidc_endpoints
    authenticator.authorize_url = endpoints.get("authorize_url", "")
    authenticator.token_url = endpoints.get("token_url", "")
    authenticator.userdata_url = endpoints.get("userinfo_url", "")
    authenticator.scope = list(oidc["scopes"])
    authenticator.username_claim = oidc["username_claim"]
    authenticator.auth_state_groups_key = ClaimGroups(oidc["groups_claim"])
    authenticator.login_service = oidc["display_name"]
