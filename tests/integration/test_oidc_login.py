"""Team login through a real OpenID Connect provider (oidc-provider-mock on loopback), the
settings written from the issue's contract, against a live hub and proxy: the full redirect
flow (hub -> authorize -> callback -> cookie), group-based access and roles."""

from __future__ import annotations

import subprocess
from urllib.parse import urljoin, urlparse

import pytest

from tests.helpers import VENV_BIN
from tests.idp import CLIENT_SECRET, CONTACT, PEOPLE, oidc_login


def test_callback_url_is_printed_at_start(oidc_hub):
    assert f"{oidc_hub.url}/hub/oauth_callback" in oidc_hub.log_file.read_text()


def test_member_of_an_allowed_group_lands_in_jupyterlab(oidc_hub):
    session, response = oidc_login(oidc_hub, "dave")
    assert response.status_code == 200, response.text[:500]
    assert urlparse(response.url).port == oidc_hub.port
    lab = oidc_hub.open_lab(session, "dave")
    assert "JupyterLab" in lab.text
    assert oidc_hub.contents(session, "dave", "runbooks").status_code == 200


def test_someone_in_no_allowed_group_is_refused_with_a_clear_page(oidc_hub):
    session, response = oidc_login(oidc_hub, "mallory")
    assert response.status_code == 403
    assert "not in a group allowed on this hub" in response.text
    assert CONTACT in response.text
    for leak in ["Traceback", "ops-leads", "management", "contractors", CLIENT_SECRET]:
        assert leak not in response.text
    assert urlparse(session.get(f"{oidc_hub.url}/hub/home").url).path == "/hub/login"  # no session
    # the hub never made mallory a user: an admin asking for her gets 404 (dave, who got in, 200)
    admin, _ = oidc_login(oidc_hub, "frank")  # frank is in the admin group
    assert admin.get(f"{oidc_hub.url}/hub/api/users/mallory").status_code == 404
    oidc_login(oidc_hub, "dave")
    assert admin.get(f"{oidc_hub.url}/hub/api/users/dave").status_code == 200


def test_viewer_sees_what_viewers_may_see_and_gets_no_server(oidc_hub):
    session, response = oidc_login(oidc_hub, "erin")
    assert response.status_code == 200
    assert response.url.endswith("/hub/home")
    assert 'id="opshub-viewer"' in response.text
    assert session.get(f"{oidc_hub.url}/hub/spawn").status_code == 403
    xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    assert session.post(f"{oidc_hub.url}/hub/api/users/erin/server", headers=xsrf).status_code == 403
    dave, _ = oidc_login(oidc_hub, "dave")
    oidc_hub.open_lab(dave, "dave")
    refused = session.get(f"{oidc_hub.url}/user/dave/lab")
    assert refused.status_code == 403 and "opshub-viewer-explanation" in refused.text


def test_several_groups_give_the_union_of_roles(oidc_hub):
    session, response = oidc_login(oidc_hub, "grace")  # author + viewer: the author's server wins
    assert response.status_code == 200
    oidc_hub.open_lab(session, "grace")
    groups = sorted(session.get(f"{oidc_hub.url}/hub/api/users/grace").json()["groups"])
    assert groups == ["management", "ops-authors"]


def test_admin_group_makes_admin_until_removed_at_the_provider(oidc_hub, idp):
    session, response = oidc_login(oidc_hub, "frank")
    assert response.status_code == 200
    assert session.get(f"{oidc_hub.url}/hub/admin").status_code == 200
    assert session.get(f"{oidc_hub.url}/hub/api/users/frank").json()["admin"] is True

    idp.set_user("frank", ["ops"])  # the provider takes frank out of ops-leads
    session, response = oidc_login(oidc_hub, "frank")  # next login
    assert response.status_code == 200
    me = session.get(f"{oidc_hub.url}/hub/api/users/frank").json()
    assert me["admin"] is False and me["groups"] == ["ops"]
    assert session.get(f"{oidc_hub.url}/hub/admin").status_code == 403
    idp.set_user("frank", PEOPLE["frank"])


@pytest.mark.parametrize("evil", ["https://evil.example.com/steal", "//evil.example.com/steal", "/\\evil.example.com"])
def test_next_pointing_off_site_is_not_followed(oidc_hub, evil):
    session, response = oidc_login(oidc_hub, "dave", next_url=evil)
    # every redirect after the provider's stays on the hub (a path such as /%5Cevil... is harmless)
    after_provider = [r for r in response.history if urlparse(r.url).port == oidc_hub.port]
    for hop in after_provider:
        target = urljoin(hop.url, hop.headers["location"])
        assert "\\" not in hop.headers["location"], target
        assert urlparse(target).hostname == "127.0.0.1" and urlparse(target).port == oidc_hub.port, target
    assert urlparse(response.url).hostname == "127.0.0.1"


def test_posts_without_the_xsrf_token_are_refused(oidc_hub):
    session, _ = oidc_login(oidc_hub, "dave")
    assert session.post(f"{oidc_hub.url}/hub/api/users/dave/tokens", json={"note": "x"}).status_code == 403
    assert session.post(f"{oidc_hub.url}/hub/spawn/dave").status_code == 403
    xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    made = session.post(f"{oidc_hub.url}/hub/api/users/dave/tokens", json={"note": "x"}, headers=xsrf)
    assert made.status_code == 201  # the same request with the token goes through


def test_client_secret_never_reaches_the_logs(oidc_hub):
    assert CLIENT_SECRET not in oidc_hub.log_file.read_text()
    shown = subprocess.run(
        [str(VENV_BIN / "opshub"), "config", "show", str(oidc_hub.settings_file)], capture_output=True, text=True
    )
    assert shown.returncode == 0 and CLIENT_SECRET not in shown.stdout
    assert "client_secret_env: OPSHUB_OIDC_CLIENT_SECRET" in shown.stdout
