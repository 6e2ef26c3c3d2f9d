"""Debian's Chromium driven by Playwright (never a browser download): its settings and the browser tests'
helpers. The `browser` and `page` fixtures are in tests/conftest.py: one Playwright for the whole session
(tests/fleet/ drives Chromium too, and a second sync Playwright cannot start beside the first)."""

from __future__ import annotations

from tests.helpers import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the rest keeps it from calling out of this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def log_in(page, hub, user: str) -> None:
    """Log in through the hub's login form with the demo password, as a person does."""
    from tests.livehub import DEMO_PASSWORD

    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", DEMO_PASSWORD)
    page.click("#login_submit")


def screenshot(page, name: str) -> None:
    # Chromium cannot capture a page that is still navigating ("Unable to capture screenshot").
    page.wait_for_load_state("load")
    (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "screenshots" / f"{name}.png")
