"""Fixtures shared by the test folders. Helpers live in tests/helpers.py and tests/livehub.py."""

from __future__ import annotations

import shutil

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import ARTIFACTS, ensure_debian_package, open_folder
from tests.idp import oidc_hub as make_oidc_hub
from tests.idp import start_provider
from tests.livehub import Hub

FOLDER_MARKERS = {
    "integration": "integration",
    "browser": "browser",
    "runbooks": "runbooks",
    "docker": "docker",
    "chart": "chart",
    "fleet": "fleet",
}


def pytest_collection_modifyitems(items):
    """Each test folder is a marker, so `-m integration` and friends select by folder."""
    for item in items:
        folder = item.path.parent.name
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, FOLDER_MARKERS[folder]))


@pytest.fixture
def open_tmp_path():
    """Like tmp_path, but other accounts can enter it (homes, runbooks repositories)."""
    path = open_folder("opshub-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One live opshub shared by the tests that need it (spawning is the slow part)."""
    the_hub = Hub(tmp_path_factory.mktemp("opshub"))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="session")
def idp():
    """A real OpenID Connect provider on loopback that knows the people in tests/idp.py."""
    provider = start_provider()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def oidc_hub(idp, tmp_path_factory):
    """A live hub logging in through `idp`, configured from the issue's OIDC contract."""
    the_hub = make_oidc_hub(idp, tmp_path_factory.mktemp("oidc-hub"))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="session")
def browser():
    ensure_debian_package("chromium", CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "screenshots" / f"{request.node.name}-last.png")
    context.close()
