"""The identity providers' applied configuration (GitHub and GitLab cannot be reached from here,
so this is where their configuration is proven), and the settings rules around them."""

from __future__ import annotations

import textwrap

import pytest
from opshub.configure import Runtime, apply_all, apply_auth, apply_roles
from opshub.configure.auth import ClaimGroups, github_team_groups
from opshub.settings import SettingsError, load_settings
from opshub.startup import client_secret, oidc_endpoints
from traitlets.config import Config

ROLES = """
roles:
  admin: [acme:leads]
  author: [acme:authors]
  operator: [acme:sre]
  viewer: [acme:management]
"""
GITHUB = (
    """
auth:
  provider: github
  contact: "the platform team in #ops-platform"
  github:
    client_id: gh-client
    client_secret_env: GH_SECRET
    organizations: [acme]
"""
    + ROLES
)
GITLAB = """
auth:
  provider: gitlab
  gitlab:
    url: https://gitlab.acme.internal/
    client_id: gl-client
    client_secret_file: /run/secrets/gitlab
  allowed_groups: [infra/ops, infra/leads]
roles:
  admin: [infra/leads]
  operator: [infra/ops]
"""
OIDC = """
auth:
  provider: oidc
  oidc:
    issuer: https://idp.example.com/realms/ops
    client_id: opshub
    client_secret_env: OPSHUB_OIDC_CLIENT_SECRET
    groups_claim: groups
  allowed_groups: [ops, ops-authors, ops-leads, management]
roles:
  admin: [ops-leads]
  author: [ops-authors]
  operator: [ops]
  viewer: [management]
"""
ENDPOINTS = {
    "authorize_url": "https://idp.example.com/auth",
    "token_url": "https://idp.example.com/token",
    "userinfo_url": "https://idp.example.com/userinfo",
}
RUNTIME = Runtime(python="/py", proxy_command=["chp"], client_secret="the-secret", oidc_endpoints=ENDPOINTS)


def settings_from(tmp_path, text):
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(text))
    return load_settings(path, cwd=tmp_path)


def test_github_orgs_teams_scopes_and_roles(tmp_path):
    settings = settings_from(tmp_path, GITHUB)
    c = Config()
    apply_auth(c, settings, RUNTIME)
    gh = c.GitHubOAuthenticator
    assert c.JupyterHub.authenticator_class == "oauthenticator.github.GitHubOAuthenticator"
    assert gh.client_id == "gh-client" and gh.client_secret == "the-secret"
    assert gh.allowed_organizations == {"acme"}
    assert gh.scope == ["read:org"]
    assert gh.populate_teams_in_auth_state is True
    assert gh.manage_groups is True
    assert gh.allowed_groups == {"acme:leads", "acme:authors", "acme:sre", "acme:management"}
    assert gh.admin_groups == {"acme:leads"}
    assert gh.oauth_callback_url == "http://127.0.0.1:8000/hub/oauth_callback"
    assert "the platform team in #ops-platform" in gh.custom_403_message
    # teams as the GitHub API lists them become org:team groups
    teams = [
        {"slug": "sre", "organization": {"login": "acme"}},
        {"slug": "management", "organization": {"login": "acme"}},
    ]
    assert gh.auth_state_groups_key({"teams": teams}) == ["acme:sre", "acme:management"]
    assert github_team_groups({}) == []
    # and roles bind to those groups
    apply_roles(c, settings)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["opshub-operator"]["groups"] == ["acme:sre"]
    assert roles["opshub-viewer"]["groups"] == ["acme:management"]
    assert roles["admin"]["groups"] == []  # admins come from gh.admin_groups at login
    assert "load_groups" not in c.JupyterHub  # groups are the provider's, not the settings'


def test_github_enterprise_url(tmp_path):
    settings = settings_from(tmp_path, GITHUB.replace("organizations: [acme]", "url: https://github.acme.internal"))
    c = Config()
    apply_auth(c, settings, RUNTIME)
    assert c.GitHubOAuthenticator.github_url == "https://github.acme.internal"
    assert c.GitHubOAuthenticator.allowed_organizations == set()


def test_gitlab_self_hosted_groups_become_jupyterhub_groups(tmp_path):
    settings = settings_from(tmp_path, GITLAB)
    c = Config()
    apply_auth(c, settings, RUNTIME)
    gl = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "oauthenticator.generic.GenericOAuthenticator"
    assert gl.authorize_url == "https://gitlab.acme.internal/oauth/authorize"
    assert gl.token_url == "https://gitlab.acme.internal/oauth/token"
    assert gl.userdata_url == "https://gitlab.acme.internal/oauth/userinfo"
    assert gl.scope == ["openid", "profile", "email"]
    assert gl.username_claim == "nickname"
    assert gl.allowed_groups == {"infra/ops", "infra/leads"}
    assert gl.admin_groups == {"infra/leads"}
    assert gl.login_service == "GitLab"
    userinfo = {"oauth_user": {"nickname": "dave", "groups": ["infra", "infra/ops"]}}
    assert gl.auth_state_groups_key(userinfo) == ["infra", "infra/ops"]


def test_oidc_contract_from_the_issue(tmp_path):
    settings = settings_from(tmp_path, OIDC)
    c = Config()
    apply_auth(c, settings, RUNTIME)
    oidc = c.GenericOAuthenticator
    assert oidc.authorize_url == "https://idp.example.com/auth"
    assert oidc.userdata_url == "https://idp.example.com/userinfo"
    assert oidc.scope == ["openid", "profile", "email"]
    assert oidc.username_claim == "preferred_username"
    assert oidc.client_secret == "the-secret"
    assert oidc.manage_groups is True
    assert oidc.allowed_groups == {"ops", "ops-authors", "ops-leads", "management"}
    assert oidc.admin_groups == {"ops-leads"}
    assert oidc.auth_state_groups_key == ClaimGroups("groups")


def test_claim_groups_reads_any_claim_name():
    groups = ClaimGroups("https://gitlab.org/claims/groups/owner")
    assert groups({"oauth_user": {"https://gitlab.org/claims/groups/owner": ["infra"]}}) == ["infra"]
    assert ClaimGroups("groups")({"oauth_user": {}}) == []
    assert ClaimGroups("role")({"oauth_user": {"role": "ops"}}) == ["ops"]


def test_apply_all_with_oidc_is_pure(tmp_path):
    settings = settings_from(tmp_path, OIDC)
    first, second = Config(), Config()
    apply_all(first, settings, RUNTIME)
    apply_all(second, settings, RUNTIME)
    assert first == second


def test_public_url_sets_the_callback(tmp_path):
    settings = settings_from(tmp_path, OIDC + "hub:\n  public_url: https://ops.example.com/\n")
    c = Config()
    apply_auth(c, settings, RUNTIME)
    assert c.GenericOAuthenticator.oauth_callback_url == "https://ops.example.com/hub/oauth_callback"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("    issuer: https://idp.example.com/realms/ops\n", ""),
            "auth.oidc.issuer: the oidc provider needs the issuer",
        ),
        (("    client_id: opshub\n", ""), "auth.oidc.client_id: the oidc provider needs the OAuth client ID"),
        (
            ("    client_secret_env: OPSHUB_OIDC_CLIENT_SECRET\n", ""),
            "auth.oidc: give exactly one of client_secret_env",
        ),
        (
            ("    client_secret_env: OPSHUB_OIDC_CLIENT_SECRET\n", "    client_secret: hunter22\n"),
            "Secrets never go in the settings file",
        ),
        (("provider: oidc", "provider: okta"), "auth.provider: 'okta' is not one of"),
        (("issuer: https://", "issuer: ftp://"), "auth.oidc.issuer: 'ftp://idp.example.com/realms/ops' does not match"),
    ],
)
def test_bad_oauth_settings_name_the_key(tmp_path, change, expected):
    with pytest.raises(SettingsError) as caught:
        settings_from(tmp_path, OIDC.replace(*change))
    assert any(expected in p for p in caught.value.problems), caught.value.problems


def test_client_secret_from_env_or_file(tmp_path, monkeypatch):
    settings = settings_from(tmp_path, OIDC)
    monkeypatch.delenv("OPSHUB_OIDC_CLIENT_SECRET", raising=False)
    with pytest.raises(SettingsError, match="environment variable OPSHUB_OIDC_CLIENT_SECRET is not set"):
        client_secret(settings)
    monkeypatch.setenv("OPSHUB_OIDC_CLIENT_SECRET", "from-env")
    assert client_secret(settings) == "from-env"

    secret_file = tmp_path / "secret"
    text = OIDC.replace("client_secret_env: OPSHUB_OIDC_CLIENT_SECRET", f"client_secret_file: {secret_file}")
    settings = settings_from(tmp_path, text)
    with pytest.raises(SettingsError, match="auth.oidc.client_secret_file: cannot read"):
        client_secret(settings)
    secret_file.write_text("from-file\n")
    assert client_secret(settings) == "from-file"


def test_unreachable_issuer_is_a_clear_error(tmp_path):
    settings = settings_from(
        tmp_path, OIDC.replace("https://idp.example.com/realms/ops", "http://127.0.0.1:9/realms/ops")
    )
    with pytest.raises(
        SettingsError, match=r"auth.oidc.issuer: could not read the discovery document http://127.0.0.1:9/"
    ):
        oidc_endpoints(settings)


def test_explicit_endpoints_skip_discovery(tmp_path):
    text = OIDC.replace(
        "    groups_claim: groups\n",
        "    groups_claim: groups\n"
        "    authorize_url: http://127.0.0.1:9/a\n    token_url: http://127.0.0.1:9/t\n    userinfo_url: http://127.0.0.1:9/u\n",
    )
    assert oidc_endpoints(settings_from(tmp_path, text))["token_url"] == "http://127.0.0.1:9/t"
