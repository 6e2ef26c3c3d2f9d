"""The request form built from a runbook's typed parameters, in a browser, as bob (an operator) uses it:
from the navigation to the Runbooks list and a patching runbook, a stack picked from the dropdown and its
hosts following without a reload, dry run unticked, the review with the last dry run (requested first with
the same values) linked, the live run confirmed, and its values and "live" on its page and in the history.
Also: a value outside its bounds is refused under its field with what he entered kept, and cancelling a
running run asks first.

The runbook is committed into the test hub's repository here (a copy of the patching runbook's declaration
that prints what it would do), so that a live run changes nothing anywhere.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import expect

from tests.helpers import git
from tests.livehub import Hub, wait_for

from .conftest import screenshot
from .test_unattended_browser import log_in_to_home, snap

RUNBOOK = "typed-form-patching.ipynb"
PREFIX = "/services/opshub/"
INVENTORY = {"file": "inventory/stacks.yaml", "path": ["stacks"]}
DECLARATION = {
    "stack": {"type": "string", "description": "The stack to patch, from the inventory", "choices_from": INVENTORY},
    "hosts": {
        "type": "list",
        "description": "Hosts of the stack to patch (none: all of them)",
        "choices_from": {"file": "inventory/stacks.yaml", "path": ["stacks", "{stack}", "hosts"]},
    },
    "dry_run": {"type": "boolean", "description": "Print the commands, change nothing"},
    "reboot": {"type": "boolean", "description": "Reboot each host after updating it"},
    "wait_timeout": {"type": "integer", "min": 60, "max": 7200, "description": "Seconds to wait for a host"},
    "pause": {"type": "integer", "min": 0, "max": 300, "description": "Seconds to wait before starting"},
}
PARAMETERS_CELL = """stack = "lab"
hosts = []
dry_run = True
reboot = True
wait_timeout = 900
pause = 0
ssh_options = "-o BatchMode=yes"  # not declared: fixed"""


def typed_runbook() -> dict:
    return new_notebook(
        cells=[
            new_markdown_cell("# Patch a stack (the browser test's copy: it only prints)"),
            new_code_cell(PARAMETERS_CELL, metadata={"tags": ["parameters"]}),
            new_code_cell(
                "import time\ntime.sleep(pause)\n"
                "mode = 'DRY RUN' if dry_run else 'LIVE'\n"
                "print(mode, stack, hosts, 'reboot' if reboot else 'no reboot', wait_timeout, ssh_options)"
            ),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "opshub": {
                "title": "Patch a stack (typed form test)",
                "changes_systems": True,
                "locks": ["stack:{stack}"],
                "parameters": DECLARATION,
            },
        },
    )


RESTRICTED = "typed-form-restricted.ipynb"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub of this module's own, its repository holding the test's runbooks from the start: the
    session's hub keeps its repository as the other modules expect it (people's checkouts at its commit)."""
    the_hub = Hub(tmp_path_factory.mktemp("typed-form"))
    restricted = typed_runbook()
    restricted.metadata["opshub"]["run_groups"] = ["database-admins"]
    nbformat.write(typed_runbook(), the_hub.upstream / RUNBOOK)
    nbformat.write(restricted, the_hub.upstream / RESTRICTED)
    git("add", RUNBOOK, RESTRICTED, cwd=the_hub.upstream)
    git("commit", "-q", "-m", "the typed form's runbooks", cwd=the_hub.upstream)
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def typed(hub):
    """The module's hub once its service has read the test's runbook, and tokens."""
    tokens = hub.tokens(users=["bob"])
    wait_for(
        lambda: hub.service_api(tokens["bob"], "GET", f"runbooks/{RUNBOOK}").status_code == 200,
        timeout=60,
        what=f"the service to read {RUNBOOK}",
    )
    return tokens


def request(hub, token, **parameters) -> dict:
    response = hub.service_api(token, "POST", "requests", json={"runbook": RUNBOOK, "parameters": parameters})
    assert response.status_code == 201, response.text
    return response.json()


def ended(hub, token, run_id, timeout=180) -> dict:
    def done():
        run = hub.service_api(token, "GET", f"runs/{run_id}").json()
        return run if run["status"] not in ("queued", "running") else None

    return wait_for(done, timeout=timeout, interval=1, what=f"run {run_id} to end")


def option_texts(select) -> list[str]:
    return select.locator("option").evaluate_all("options => options.map(o => o.value).filter(v => v)")


def test_bob_reviews_and_confirms_a_live_run_after_a_dry_run(page, hub, typed):
    bob = typed["bob"]
    values = {"stack": "web", "hosts": ["web02.example.internal"], "reboot": False, "wait_timeout": 900}
    dry = request(hub, bob, **values, dry_run=True)
    assert ended(hub, bob, dry["id"])["status"] == "succeeded"

    log_in_to_home(page, hub, "bob")
    page.click("#opshub-history-link")
    page.click("#nav-runbooks")
    expect(page.locator("#runbooks")).to_be_visible()
    page.locator("#runbooks a", has_text=RUNBOOK).click()
    expect(page.locator("#request-form")).to_be_visible()

    # each parameter as its declaration says: a dropdown, a dependent multi-select, checkboxes, a number
    stack, hosts = page.locator("#p-stack"), page.locator("#p-hosts")
    expect(stack).to_have_value("lab")
    assert sorted(option_texts(stack)) == ["db", "fleet-db", "fleet-web", "lab", "monitoring", "web"]
    assert option_texts(hosts) == ["localhost"]  # the hosts of lab, the default stack
    expect(page.locator("#p-dry_run")).to_be_checked()
    expect(page.locator("#p-wait_timeout")).to_have_attribute("type", "number")
    expect(page.locator("#p-wait_timeout")).to_have_attribute("min", "60")
    expect(page.locator("#p-wait_timeout")).to_have_attribute("max", "7200")
    expect(page.locator("#fixed-ssh_options")).to_be_visible()  # not declared: shown with its default, fixed
    expect(page.locator("#p-ssh_options")).to_be_disabled()
    expect(page.locator("#about-stack")).to_contain_text("The stack to patch, from the inventory")
    snap(page, "typed-form")

    stack.select_option("web")  # the hosts follow, without a reload
    expect(page.locator("#follows-hosts")).to_contain_text("web")
    assert option_texts(hosts) == ["web01.example.internal", "web02.example.internal"]
    hosts.select_option(["web02.example.internal"])
    page.uncheck("#p-reboot")
    page.uncheck("#p-dry_run")
    expect(page.locator("#request-run")).to_have_text("Review live run")
    snap(page, "typed-form-live")
    page.click("#request-run")

    review = page.locator("#review")
    expect(review).to_be_visible()
    expect(page.locator("#request-form")).to_have_count(0)  # nothing queued yet
    rows = page.locator("#review-values")
    expect(rows.locator("tr[data-name=stack]")).to_contain_text('"web"')
    expect(rows.locator("tr[data-name=hosts]")).to_contain_text("web02.example.internal")
    expect(rows.locator("tr[data-name=dry_run]")).to_contain_text("false")
    expect(rows.locator("tr[data-name=reboot]")).to_contain_text("false")
    expect(rows.locator("tr[data-name=wait_timeout]")).to_contain_text("the default")
    expect(rows.locator("tr[data-name=ssh_options]")).to_contain_text("-o BatchMode=yes")
    expect(rows.locator("tr[data-name=ssh_options]")).to_contain_text("fixed")
    expect(rows.locator("tr[data-name=stack]")).to_contain_text("set here")
    expect(page.locator("#review-locks")).to_contain_text("stack:web")
    expect(page.locator("#last-dry-run-link")).to_have_attribute("href", f"{PREFIX}runs/{dry['id']}")
    snap(page, "typed-review")
    # "Change values" goes back to the form with what he entered; asking again reviews again
    page.click("#change-values")
    expect(page.locator("#review")).to_have_count(0)
    expect(page.locator("#p-stack")).to_have_value("web")
    expect(page.locator("#p-dry_run")).not_to_be_checked()
    expect(page.locator("#p-reboot")).not_to_be_checked()
    assert hosts.locator("option:checked").evaluate_all("o => o.map(x => x.value)") == ["web02.example.internal"]
    page.click("#request-run")
    expect(page.locator("#review")).to_be_visible()
    page.click("#start-live-run")

    page.wait_for_url(re.compile(r"/services/opshub/runs/[0-9a-f-]+$"))
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    assert run_id != dry["id"]
    expect(page.locator("#run-mode")).to_have_text("live")
    parameters = page.locator("#parameters")
    expect(parameters.locator("tr[data-name=hosts]")).to_contain_text("web02.example.internal")
    expect(parameters.locator("tr[data-name=dry_run]")).to_contain_text("false")
    expect(parameters.locator("tr[data-name=wait_timeout]")).to_contain_text("900")
    run = ended(hub, bob, run_id)
    assert run["status"] == "succeeded", run
    assert run["parameters"] == {**values, "dry_run": False, "pause": 0, "ssh_options": "-o BatchMode=yes"}
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.frame_locator("iframe.notebook").locator("body")).to_contain_text("LIVE web")
    snap(page, "typed-live-run")

    # the history: the values and the badge of each run
    page.click("nav >> text=Run history")
    live_row = page.locator("#runs tbody tr", has=page.locator(f"a[href='{PREFIX}runs/{run_id}']"))
    expect(live_row.locator(".run-mode")).to_have_text("live")
    expect(live_row.locator(".params")).to_contain_text("stack=web")
    expect(live_row.locator(".params")).to_contain_text("web02.example.internal")
    dry_row = page.locator("#runs tbody tr", has=page.locator(f"a[href='{PREFIX}runs/{dry['id']}']"))
    expect(dry_row.locator(".run-mode")).to_have_text("dry run")
    snap(page, "typed-history")


def test_the_history_filters_by_parameter_and_partial_user(page, hub, typed):
    """The filter form sends `param` and `user`, and keeps them (HistoryPage filters by them)."""
    bob = typed["bob"]
    web = request(hub, bob, stack="web", dry_run=True)
    db = request(hub, bob, stack="db", dry_run=True)
    log_in_to_home(page, hub, "bob")
    page.click("#opshub-history-link")
    page.fill("#f-user", "bo")
    page.fill("#f-param", "stack=web")
    page.click("text=Filter")
    expect(page).to_have_url(re.compile(r"[?&]param=stack%3Dweb"))
    expect(page.locator("#f-param")).to_have_value("stack=web")
    expect(page.locator("#f-user")).to_have_value("bo")
    expect(page.locator(f"#runs a[href='{PREFIX}runs/{web['id']}']")).to_have_count(1)
    expect(page.locator(f"#runs a[href='{PREFIX}runs/{db['id']}']")).to_have_count(0)
    snap(page, "typed-history-filtered")


def test_a_value_out_of_bounds_is_refused_under_its_field(page, hub, typed):
    log_in_to_home(page, hub, "bob")
    page.goto(f"{hub.url}{PREFIX}runbooks/{RUNBOOK}")
    page.locator("#p-stack").select_option("db")
    page.locator("#p-hosts").select_option(["db01.example.internal"])
    page.fill("#p-wait_timeout", "5")
    page.click("#request-run")

    error = page.locator("#error-wait_timeout")
    expect(error).to_contain_text("parameter wait_timeout: 5 is not at least 60")
    expect(page.locator("#request-error")).to_contain_text("see the fields marked below")
    expect(page.locator("#error-stack")).to_have_count(0)
    # what bob entered is kept
    expect(page.locator("#p-wait_timeout")).to_have_value("5")
    expect(page.locator("#p-stack")).to_have_value("db")
    assert page.locator("#p-hosts option:checked").evaluate_all("o => o.map(x => x.value)") == ["db01.example.internal"]
    assert "Traceback" not in page.content()
    screenshot(page, "typed-inline-error")


def test_cancelling_a_running_run_asks_first(page, hub, typed):
    bob = typed["bob"]
    run = request(hub, bob, stack="monitoring", dry_run=False, pause=120)
    wait_for(
        lambda: hub.service_api(bob, "GET", f"runs/{run['id']}").json()["status"] == "running",
        timeout=120,
        what="the slow run to start",
    )
    log_in_to_home(page, hub, "bob")
    page.goto(f"{hub.url}{PREFIX}runs/{run['id']}")
    expect(page.locator("#run-mode")).to_have_text("live")
    page.click("#cancel-run")
    expect(page.locator("#cancel-confirm")).to_contain_text("Cancel this run?")
    expect(page.locator("#cancel-confirm")).to_contain_text("live")
    assert hub.service_api(bob, "GET", f"runs/{run['id']}").json()["status"] == "running"  # not yet
    snap(page, "typed-cancel-confirm")
    page.click("#confirm-cancel")
    page.wait_for_url(re.compile(rf"/runs/{run['id']}$"))
    assert ended(hub, bob, run["id"], timeout=120)["status"] in ("cancelled", "interrupted")
    # the page refreshes itself until it shows the end, then stops (and can be captured)
    expect(page.locator("#run-status")).to_have_text(re.compile("cancelled|interrupted"), timeout=30_000)
    expect(page.locator("meta[http-equiv='refresh']")).to_have_count(0)
    expect(page.locator("#cancel-run")).to_have_count(0)
    snap(page, "typed-cancelled")


def test_a_runbook_restricted_to_groups_says_who_may_request_it(page, hub, typed):
    """bob is in none of the runbook's run_groups: its page says so, naming them, and offers no form; a
    POST all the same is a page naming the refusal, never a traceback."""
    wait_for(
        lambda: hub.service_api(typed["bob"], "GET", f"runbooks/{RESTRICTED}").status_code == 200,
        timeout=60,
        what=f"the service to read {RESTRICTED}",
    )
    log_in_to_home(page, hub, "bob")
    page.goto(f"{hub.url}{PREFIX}runbooks/{RESTRICTED}")
    expect(page.locator("#request-form")).to_have_count(0)
    expect(page.locator("#no-request")).to_contain_text("database-admins")
    expect(page.locator("#no-request")).to_contain_text("bob is in none of them")
    expect(page.locator("#run-groups")).to_contain_text("database-admins")
    screenshot(page, "typed-restricted")

    xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf" and c["path"] == PREFIX)
    answer = page.request.post(
        f"{hub.url}{PREFIX}runbooks/{RESTRICTED}",
        form={"_xsrf": xsrf, "f-stack": "1", "p-stack": "web", "f-dry_run": "1", "p-dry_run": "true"},
    )
    assert answer.status == 403, answer.text()[:500]
    assert "database-admins" in answer.text() and "Traceback" not in answer.text()
