"""The identity provider's login in a real browser: hub -> provider's page -> callback -> JupyterLab."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.idp import CONTACT

from .conftest import screenshot


def sign_in(page, hub, sub: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.get_by_role("button", name="Sign in with Test IdP").click()
    page.wait_for_url(f"{hub.oidc_issuer}/oauth2/authorize**")  # the provider's own page
    page.fill("input[name=sub]", sub)
    page.get_by_role("button", name="Authorize").click()


def test_member_signs_in_at_the_provider_and_lands_in_jupyterlab(page, oidc_hub):
    sign_in(page, oidc_hub, "dave")
    page.wait_for_url(f"{oidc_hub.url}/user/dave/lab**", timeout=90_000)
    expect(page.locator(".jp-DirListing-item", has_text="runbooks")).to_be_visible(timeout=60_000)
    screenshot(page, "oidc-dave-jupyterlab")


def test_outsider_gets_the_clear_refusal_page(page, oidc_hub):
    sign_in(page, oidc_hub, "mallory")
    expect(page.get_by_text("not in a group allowed on this hub")).to_be_visible()
    expect(page.get_by_text(CONTACT)).to_be_visible()
    screenshot(page, "oidc-mallory-refused")
