"""The identity provider down when the hub starts (a Keycloak restarting): the hub and the opshub
service start anyway, logging in says which provider cannot be reached, and once it is back people
log in through it with no restart of the hub. A real provider (oidc-provider-mock) on a loopback
port that nothing listens on until the test starts it there."""

from __future__ import annotations

import re
from html import unescape
from types import SimpleNamespace
from urllib.parse import urljoin, urlparse

import requests

from tests.idp import CONTACT, oidc_hub, oidc_login, start_provider
from tests.livehub import free_port_block, wait_for

DISCOVERY_FAILED = "could not use the discovery document"  # opshub.auth's log line, once per failed read


def sign_in_button(hub, session: requests.Session) -> str:
    login = session.get(f"{hub.url}/hub/login", timeout=30)
    assert login.status_code == 200, login.text[:500]  # the login page itself never needs the provider
    button = re.search(r"href=['\"]([^'\"]*oauth_login[^'\"]*)['\"]", login.text)
    assert button, "the login page has no sign-in button"
    return urljoin(login.url, unescape(button.group(1)))


def assert_clear_unreachable_page(response: requests.Response, issuer: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert "Identity provider unreachable" in response.text
    assert f"The identity provider at {issuer} cannot be reached" in response.text
    assert "Try again in a few minutes" in response.text and CONTACT in response.text
    for leak in ["Traceback", "ConnectionRefused", "Errno", "Internal Server Error"]:
        assert leak not in response.text, leak


def service_answers(hub) -> bool:
    token = (hub.state / "metrics-token").read_text().strip()
    metrics = requests.get(
        f"{hub.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return metrics.status_code == 200 and "opshub_" in metrics.text


def test_hub_started_while_the_provider_is_down_lets_people_in_once_it_is_up(tmp_path):
    port = free_port_block(1)  # nothing listens here until the provider starts on it
    issuer = f"http://127.0.0.1:{port}"
    hub = oidc_hub(SimpleNamespace(url=issuer), tmp_path)
    provider = None
    try:
        hub.start()  # the old hub exited here: "could not read the discovery document"
        log = hub.log_file.read_text()
        assert f"could not read the discovery document {issuer}/.well-known/openid-configuration" in log
        assert "The hub starts anyway" in log

        # the hub and the opshub service answer
        assert requests.get(f"{hub.url}/hub/api", timeout=10).status_code == 200
        wait_for(lambda: service_answers(hub), timeout=60, what="the opshub service's metrics")

        # signing in gets a clear page naming the provider, not a 500 and not a traceback
        session = requests.Session()
        button = sign_in_button(hub, session)
        assert_clear_unreachable_page(session.get(button, timeout=30), issuer)
        # a flood of logins: the failed read is remembered, the provider is not asked again at once
        for _ in range(5):
            assert_clear_unreachable_page(session.get(button, timeout=30), issuer)
        assert hub.log_file.read_text().count(DISCOVERY_FAILED) == 1

        # the provider comes back on its port: the next login after the short memory goes through it
        provider = start_provider(port)

        def redirected_to_the_provider():
            response = session.get(button, allow_redirects=False, timeout=30)
            return response.status_code == 302 and urlparse(response.headers["location"]).port == port

        wait_for(redirected_to_the_provider, timeout=60, interval=1, what="the sign-in button to reach the provider")
        session, response = oidc_login(hub, "dave")
        assert response.status_code == 200, response.text[:500]
        assert urlparse(response.url).port == hub.port
        me = session.get(f"{hub.url}/hub/api/user", timeout=30).json()
        assert me["name"] == "dave" and me["groups"] == ["ops"]

        # the provider stops in the middle of a login (after its form, before the hub exchanges the code)
        session = requests.Session()
        authorize = session.get(sign_in_button(hub, session), timeout=30)
        assert urlparse(authorize.url).port == port
        to_callback = session.post(authorize.url, data={"sub": "frank"}, allow_redirects=False, timeout=30)
        assert "/hub/oauth_callback" in to_callback.headers["location"]
        provider.stop()
        provider = None
        assert_clear_unreachable_page(session.get(to_callback.headers["location"], timeout=30), issuer)
        assert service_answers(hub)

        # back again, same hub process: frank logs in
        provider = start_provider(port)
        session, response = oidc_login(hub, "frank")
        assert response.status_code == 200, response.text[:500]
        assert session.get(f"{hub.url}/hub/api/user", timeout=30).json()["admin"] is True
        assert hub.proc.poll() is None  # never restarted
    finally:
        if provider:
            provider.stop()
        hub.stop()
