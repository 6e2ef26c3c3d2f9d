"""The identity providers' applied configuration (GitHub and GitLab cannot be reached from here,
so this is where their configuration is proven), and the settings rules around them."""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace

import pytest
from opshub.configure import Runtime, apply_all, apply_auth, apply_roles
from opshub.configure.auth import ClaimGroups, github_team_groups
from opshub.settings import SettingsError, load_settings
from opshub.startup import IssuerUnreachable, check_issuer, client_secret, oidc_endpoints
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from tests.helpers import run_async

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
    assert c.JupyterHub.authenticator_class == "opshub.auth.OIDCAuthenticator"
    oidc = c.OIDCAuthenticator
    assert oidc.oidc_issuer == "https://idp.example.com/realms/ops"
    assert oidc.contact == "a hub admin"  # auth.contact's default
    assert oidc.authorize_url == "https://idp.example.com/auth"
    assert oidc.userdata_url == "https://idp.example.com/userinfo"
    assert oidc.scope == ["openid", "profile", "email"]
    assert oidc.username_claim == "preferred_username"
    assert oidc.client_secret == "the-secret"
    assert oidc.manage_groups is True
    assert oidc.allowed_groups == {"ops", "ops-authors", "ops-leads", "management"}
    assert oidc.admin_groups == {"ops-leads"}
    assert oidc.auth_state_groups_key == ClaimGroups("groups")


def test_oidc_without_endpoints_at_start_leaves_them_to_the_first_login(tmp_path):
    """The provider could not be reached at start: the authenticator gets the issuer and no endpoints."""
    from opshub.auth import OIDCAuthenticator

    settings = settings_from(tmp_path, OIDC)
    c = Config()
    apply_auth(c, settings, Runtime(python="/py", proxy_command=["chp"], client_secret="s", oidc_endpoints={}))
    authenticator = OIDCAuthenticator(config=c)  # the config reaches the class the hub loads
    assert authenticator.oidc_issuer == "https://idp.example.com/realms/ops"
    assert authenticator.missing_endpoints() == ["authorize_url", "token_url", "userinfo_url"]
    assert authenticator.allowed_groups == {"ops", "ops-authors", "ops-leads", "management"}


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
    assert c.OIDCAuthenticator.oauth_callback_url == "https://ops.example.com/hub/oauth_callback"


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


def test_unreachable_issuer_is_reported_by_validate_but_does_not_stop_the_hub(tmp_path, capsys):
    from opshub.cli import main

    issuer = "http://127.0.0.1:9/realms/ops"  # the discard port: nothing answers
    settings = settings_from(tmp_path, OIDC.replace("https://idp.example.com/realms/ops", issuer))
    expected = f"auth.oidc.issuer: could not read the discovery document {issuer}/.well-known/openid-configuration"
    with pytest.raises(IssuerUnreachable, match=expected):
        check_issuer(settings)
    # `opshub config validate` reports it, naming the key
    assert main(["config", "validate", settings.source]) == 1
    assert expected in capsys.readouterr().err
    # the hub starts with no endpoints (its authenticator reads them at a login) and says why
    assert oidc_endpoints(settings) == {"authorize_url": "", "token_url": "", "userinfo_url": ""}
    assert expected in capsys.readouterr().err


def test_a_discovery_document_of_another_issuer_still_stops_the_hub():
    from opshub.startup import endpoints_from_document

    document = {"issuer": "https://other.example.com", "authorization_endpoint": "a", "token_endpoint": "t"}
    with pytest.raises(ValueError, match="names the issuer 'https://other.example.com' instead"):
        endpoints_from_document("https://idp.example.com", document, {})
    document["issuer"] = "https://idp.example.com/"
    with pytest.raises(ValueError, match="has no userinfo_url; set them in the settings"):
        endpoints_from_document("https://idp.example.com", document, {})
    given = {"userinfo_url": "https://idp.example.com/me"}
    assert endpoints_from_document("https://idp.example.com", document, given) == {
        "authorize_url": "a",
        "token_url": "t",
        "userinfo_url": "https://idp.example.com/me",
    }


def test_explicit_endpoints_skip_discovery(tmp_path):
    text = OIDC.replace(
        "    groups_claim: groups\n",
        "    groups_claim: groups\n"
        "    authorize_url: http://127.0.0.1:9/a\n    token_url: http://127.0.0.1:9/t\n    userinfo_url: http://127.0.0.1:9/u\n",
    )
    assert oidc_endpoints(settings_from(tmp_path, text))["token_url"] == "http://127.0.0.1:9/t"


# -- opshub.auth: the endpoints read at a login when the provider was down at start ---------------

ISSUER = "https://idp.example.com/realms/ops"
DOCUMENT = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/auth",
    "token_endpoint": f"{ISSUER}/token",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
}


class Provider:
    """Stands in for the provider's discovery endpoint: counts reads, answers or fails as told."""

    def __init__(self, answer):
        self.answer = answer
        self.reads = 0

    async def httpfetch(self, url, *args, **kwargs):
        assert url == f"{ISSUER}/.well-known/openid-configuration"
        self.reads += 1
        await asyncio.sleep(0.01)  # logins arriving meanwhile must wait for this read
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def authenticator_with(provider: Provider, monkeypatch, clock: list[float]):
    from opshub import auth

    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    authenticator = auth.OIDCAuthenticator(oidc_issuer=ISSUER, contact="the platform team")
    authenticator.httpfetch = provider.httpfetch
    return authenticator


async def logins(authenticator, count: int) -> list:
    """`count` logins at once: each one's outcome (None: it may go on to the provider)."""
    return await asyncio.gather(*(authenticator.ensure_endpoints() for _ in range(count)), return_exceptions=True)


def assert_unreachable_page(outcome) -> None:
    from tornado.web import HTTPError

    assert isinstance(outcome, HTTPError), outcome
    assert outcome.status_code == 503 and outcome.reason == "Identity provider unreachable"
    message = outcome.get_message()
    assert f"The identity provider at {ISSUER} cannot be reached" in message
    assert "Try again in a few minutes" in message and "tell the platform team" in message


def test_a_provider_that_is_down_gets_a_503_naming_it_and_is_asked_once_per_interval(monkeypatch):
    clock = [1000.0]
    provider = Provider(ConnectionRefusedError(111, "Connection refused"))
    authenticator = authenticator_with(provider, monkeypatch, clock)

    async def scenario():  # one event loop, as in the hub
        for outcome in await logins(authenticator, 20):  # a flood of logins
            assert_unreachable_page(outcome)
        assert provider.reads == 1
        clock[0] += authenticator.discovery_retry_interval - 0.1
        assert_unreachable_page((await logins(authenticator, 1))[0])
        assert provider.reads == 1  # still remembered
        clock[0] += 0.2
        assert_unreachable_page((await logins(authenticator, 1))[0])
        assert provider.reads == 2  # asked again, once
        # the provider is back: the next login after the interval reads the endpoints, and they are kept
        provider.answer = DOCUMENT
        clock[0] += authenticator.discovery_retry_interval
        assert await logins(authenticator, 5) == [None] * 5
        assert provider.reads == 3
        provider.answer = ConnectionRefusedError(111, "Connection refused")
        assert await logins(authenticator, 3) == [None] * 3  # known endpoints need no provider
        assert provider.reads == 3

    run_async(scenario())
    assert (authenticator.authorize_url, authenticator.token_url, authenticator.userdata_url) == (
        f"{ISSUER}/auth",
        f"{ISSUER}/token",
        f"{ISSUER}/userinfo",
    )


@pytest.mark.parametrize(
    "answer",
    [
        HTTPClientError(502, "Bad Gateway"),  # a reverse proxy in front of a restarting Keycloak
        HTTPClientError(599, "Timeout"),
        ValueError("Expecting value: line 1 column 1"),  # an HTML maintenance page
        {**DOCUMENT, "issuer": "https://other.example.com"},  # answered, but not as this issuer
        None,  # an empty body
    ],
)
def test_any_unusable_answer_is_the_same_page_and_remembered(monkeypatch, answer):
    provider = Provider(answer)
    authenticator = authenticator_with(provider, monkeypatch, [0.0])
    for outcome in run_async(logins(authenticator, 3)):
        assert_unreachable_page(outcome)
    assert provider.reads == 1
    assert authenticator.missing_endpoints() == ["authorize_url", "token_url", "userinfo_url"]


def test_endpoints_given_in_the_settings_are_kept_and_the_rest_discovered(monkeypatch):
    provider = Provider(DOCUMENT)
    authenticator = authenticator_with(provider, monkeypatch, [0.0])
    authenticator.userdata_url = "https://idp.example.com/me"
    assert run_async(logins(authenticator, 1)) == [None]
    assert authenticator.userdata_url == "https://idp.example.com/me"
    assert authenticator.token_url == f"{ISSUER}/token"


@pytest.mark.parametrize(
    ("failure", "page"),
    [
        (ConnectionRefusedError(111, "Connection refused"), 503),
        (HTTPClientError(599, "Timeout"), 503),
        (HTTPClientError(503, "Service Unavailable"), 503),
        (HTTPClientError(400, "Bad Request"), None),  # the provider answered: oauthenticator's own handling
    ],
)
def test_a_provider_that_stops_during_a_login_gets_the_same_page(monkeypatch, failure, page):
    provider = Provider(DOCUMENT)
    authenticator = authenticator_with(provider, monkeypatch, [0.0])

    async def token_exchange(handler, params):
        raise failure

    authenticator.build_access_tokens_request_params = lambda handler, data=None: {}
    authenticator.get_token_info = token_exchange
    with pytest.raises(Exception) as caught:
        run_async(authenticator.authenticate(handler=None))
    if page:
        assert_unreachable_page(caught.value)
    else:
        assert caught.value is failure
