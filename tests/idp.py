"""A real OpenID Connect provider for login tests (PyPI oidc-provider-mock, on loopback), the
people it knows, and a hub configured from the issue's OIDC settings contract."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urljoin, urlparse

import requests

from tests.helpers import ARTIFACTS, VENV_BIN
from tests.livehub import Hub, free_port_block, start_server

CLIENT_SECRET = "oidc-client-secret-7f3a9c"
CONTACT = "the platform team (#ops-platform)"

# provider users: sub -> claims. Group names as in the contract.
PEOPLE = {
    "dave": ["ops"],  # operator
    "erin": ["management"],  # viewer
    "frank": ["ops-leads", "ops"],  # admin (and operator)
    "grace": ["ops-authors", "management"],  # author and viewer: the union
    "mallory": ["contractors"],  # in no allowed group
}


class OidcProvider:
    def __init__(self, port: int | None = None):
        self.port = port or free_port_block(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_server(
            [str(VENV_BIN / "oidc-provider-mock"), "--host", "127.0.0.1", "--port", str(self.port)],
            f"oidc-provider-{self.port}.log",
            f"{self.url}/.well-known/openid-configuration",
        )

    def set_user(self, sub: str, groups: list[str]) -> None:
        claims = {"preferred_username": sub, "email": f"{sub}@example.com", "groups": groups}
        assert requests.put(f"{self.url}/users/{sub}", json=claims, timeout=5).status_code == 204

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_provider(port: int | None = None) -> OidcProvider:
    """The provider on `port` (default: a free one), knowing PEOPLE."""
    ARTIFACTS.mkdir(exist_ok=True)
    provider = OidcProvider(port)
    for sub, groups in PEOPLE.items():
        provider.set_user(sub, groups)
    return provider


def oidc_hub(idp: OidcProvider, root) -> Hub:
    """A hub (not yet started) with the issue's OIDC contract, pointed at `idp`."""

    def contract(settings):
        # the contract, pointed at the test provider
        settings["auth"] = {
            "provider": "oidc",
            "contact": CONTACT,
            "oidc": {
                "issuer": idp.url,
                "client_id": "opshub",
                "client_secret_env": "OPSHUB_OIDC_CLIENT_SECRET",
                "groups_claim": "groups",
                "display_name": "Test IdP",
            },
            "allowed_groups": ["ops", "ops-authors", "ops-leads", "management"],
        }
        settings["roles"] = {
            "admin": ["ops-leads"],
            "author": ["ops-authors"],
            "operator": ["ops"],
            "viewer": ["management"],
        }

    hub = Hub(root, configure=contract, env={"OPSHUB_OIDC_CLIENT_SECRET": CLIENT_SECRET})
    hub.oidc_issuer = idp.url
    return hub


def oidc_login(hub: Hub, sub: str, next_url: str | None = None) -> tuple[requests.Session, requests.Response]:
    """What a browser does: the hub's login page, its button, the provider's form, the callback."""
    session = requests.Session()
    login = session.get(f"{hub.url}/hub/login", params={"next": next_url} if next_url else None)
    button = re.search(r"href='([^']*oauth_login[^']*)'|href=\"([^\"]*oauth_login[^\"]*)\"", login.text)
    assert button, "the login page has no sign-in button"
    authorize = session.get(urljoin(login.url, unescape(button.group(1) or button.group(2))))
    assert urlparse(authorize.url).port == urlparse(hub.oidc_issuer).port, authorize.url  # at the provider
    assert authorize.status_code == 200
    # the provider's own form: who signs in
    response = session.post(authorize.url, data={"sub": sub}, timeout=90)
    return session, response
