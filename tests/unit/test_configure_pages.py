"""What the hub's own pages add (configure/pages.py, configure/roles.py, templates/admin.html): which
group gives which role, the system accounts' labels, rendered by JupyterHub's own template loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from jupyterhub._data import DATA_FILES_PATH
from opshub.configure import Runtime, apply_pages
from opshub.configure.pages import TEMPLATES, admin_page_notes, people_without_server
from opshub.configure.roles import group_roles
from opshub.settings import EMBEDDED_SETTINGS, load_settings
from traitlets.config import Config

RUNTIME = Runtime(python="/opt/opshub/bin/python", proxy_command=["/opt/chp"], demo_password="correct-horse")
HOSTILE_GROUP = "</script><script>document.title='owned'</script>"


@pytest.fixture
def settings(tmp_path):
    return load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)


def test_each_group_is_listed_with_the_roles_it_gives(settings):
    assert group_roles(settings) == {
        "management": ["viewer"],
        "ops": ["operator"],
        "ops-authors": ["author"],
        "ops-leads": ["admin"],
    }
    settings["roles"]["author"].append("ops")  # a group several roles name gives them all
    assert group_roles(settings)["ops"] == ["author", "operator"]
    for groups in settings["roles"].values():
        groups.clear()
    assert group_roles(settings) == {}


def test_the_admin_page_knows_the_system_accounts_and_the_groups(settings):
    c = Config()
    apply_pages(c, settings, RUNTIME)
    notes = c.JupyterHub.template_vars["opshub_admin_notes"]
    assert notes == admin_page_notes(settings)
    assert notes["system_accounts"] == {
        "opshub-runner": "system account: runs unattended runbooks",
        "opshub-dashboards": "system account: serves live dashboards",
    }
    viewers = [entry for entry in notes["group_roles"] if entry["group"] == "management"]
    assert viewers == [
        {"group": "management", "roles": ["viewer"], "gives": "dashboards and run history only, no server"}
    ]
    # JupyterHub calls it with the page's viewer on every page; nobody logged in: nobody listed
    assert c.JupyterHub.template_vars["opshub_people_without_server"] is people_without_server
    assert people_without_server(None)() == []


def render_admin_page(settings) -> str:
    """templates/admin.html as JupyterHub renders it, with its loader (JupyterHub.init_tornado_settings)."""
    c = Config()
    apply_pages(c, settings, RUNTIME)
    share = Path(DATA_FILES_PATH) / "templates"
    loader = ChoiceLoader(
        [PrefixLoader({"templates": FileSystemLoader([str(share)])}, "/"), FileSystemLoader([TEMPLATES, str(share)])]
    )
    env = Environment(loader=loader, autoescape=True)
    namespace = {key: value for key, value in c.JupyterHub.template_vars.items() if not callable(value)}
    return env.get_template("admin.html").render(
        **namespace,
        opshub_people_without_server=lambda: ["carol"],
        static_url=lambda path, **_: f"/hub/static/{path}",
        base_url="/hub/",
        prefix="/",
        api_page_limit=50,
        parsed_scopes={},
    )


def test_the_admin_page_hands_its_script_the_accounts_and_groups_as_json(settings):
    page = render_admin_page(settings)
    config = json.loads(
        re.search(r'<script id="opshub-admin-config" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert config["no_server"] == ["carol"]
    assert config["system_accounts"]["opshub-runner"] == "system account: runs unattended runbooks"
    assert {entry["group"]: entry["roles"] for entry in config["group_roles"]} == group_roles(settings)
    assert "src=/hub/static/js/admin-react.js" in page  # JupyterHub's own app is still there


def test_a_group_named_like_markup_stays_text(settings):
    """Group names come from the identity provider: one shaped like a script must not run on the admin page."""
    settings["roles"]["viewer"].append(HOSTILE_GROUP)
    page = render_admin_page(settings)
    assert HOSTILE_GROUP not in page
    config = json.loads(
        re.search(r'<script id="opshub-admin-config" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    assert HOSTILE_GROUP in [entry["group"] for entry in config["group_roles"]]  # as data, escaped
    assert "&lt;/script&gt;&lt;script&gt;" in page  # and as text in the table
