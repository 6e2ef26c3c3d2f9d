"""Settings files: the schema accepts good files and names the key of every problem in bad ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from opshub.contract import SERVICE_SETTINGS_SECTIONS
from opshub.settings import (
    EMBEDDED_SETTINGS,
    MASK,
    PACKAGE_DIR,
    SettingsError,
    load_settings,
    masked,
    render_docs,
    validate,
)

from tests.helpers import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
auth:
  shared_password:
    groups: {ops: [bob]}
roles:
  operator: [ops]
"""


def test_embedded_default_is_valid_and_complete(tmp_path):
    settings = load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)
    assert settings["hub"]["port"] == 8000
    assert settings["hub"]["state_dir"] == str(tmp_path / "state")
    assert settings["runbooks"]["repository"] == str(tmp_path / "runbooks.git")
    assert settings["auth"]["shared_password"]["groups"]["ops"] == ["bob"]
    assert settings["roles"]["viewer"] == ["management"]


def test_defaults_are_filled_in(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), cwd=tmp_path)
    assert settings["hub"]["ip"] == "127.0.0.1"
    assert settings["spawner"]["default_url"] == "/lab"
    assert settings["runbooks"]["branch"] == "main"
    assert settings["roles"]["admin"] == []


def test_opshub_settings_env_selects_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL + "hub: {port: 9123}\n")
    monkeypatch.setenv("OPSHUB_SETTINGS", str(path))
    assert load_settings()["hub"]["port"] == 9123


def test_port_override(tmp_path):
    assert load_settings(write(tmp_path, MINIMAL), port="8123")["hub"]["port"] == 8123


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "hub: {port: eighty}\n", "hub.port: expected integer, got str 'eighty'"),
        (MINIMAL + "hub: {port: 70000}\n", "hub.port: 70000 is greater than the maximum"),
        (MINIMAL + "hub: {prot: 80}\n", "hub: unknown key(s) prot; known keys:"),
        (MINIMAL + "auth2: {}\n", "(top level): unknown key(s) auth2"),
        (MINIMAL + "spawner: {kind: podman}\n", "spawner.kind: 'podman' is not one of local"),
        (MINIMAL + "runbooks: {target: ../etc}\n", "runbooks.target: '../etc' does not match the pattern"),
        (MINIMAL + "runbooks: {target: ..}\n", "runbooks.target: '..' should not be valid"),
        (MINIMAL + "runbooks: {branch: 'main; rm -rf /'}\n", "runbooks.branch: 'main; rm -rf /' does not match"),
        (MINIMAL + "hub: {base_url: ops}\n", "hub.base_url: 'ops' does not match the pattern"),
        (
            "auth:\n  shared_password:\n    groups: {ops: [Bob Smith]}\nroles: {operator: [ops]}\n",
            "auth.shared_password.groups.ops.0: 'Bob Smith' does not match",
        ),
        ("roles: {operator: [ops]}\n", "auth.shared_password.groups: the shared-password provider needs the team"),
        ("auth:\n  shared_password:\n    groups: {ops: [bob]}\n", "roles: no group is mapped to any role"),
        (
            "auth:\n  allowed_groups: [nobody]\n  shared_password:\n    groups: {ops: [bob]}\nroles: {operator: [ops]}\n",
            "auth.allowed_groups: group 'nobody' has no role",
        ),
        (
            "auth:\n  shared_password:\n    groups: {ops: [bob], extra: [eve]}\nroles: {operator: [ops]}\n",
            "auth.shared_password.groups.extra: group 'extra' has no role",
        ),
        (
            MINIMAL + "runbooks: {repository: 'https://git.example.com/ops/runbooks.git', mirror_from: here}\n",
            "runbooks.mirror_from: mirroring needs `runbooks.repository` to be a local path",
        ),
        ("hub: [1, 2]\n", "hub: expected object, got list"),
        ("- just a list\n", "(top level): expected a mapping"),
        ("hub:\n  port: 80\n   ip: x\n", "line 3, column 6: not valid YAML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), cwd=tmp_path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert str(tmp_path / "settings.yaml") in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, MINIMAL + "hub: {port: x, ip: 3}\n"), cwd=tmp_path)
    assert len(caught.value.problems) == 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="cannot read the settings file"):
        load_settings(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_start_directory(tmp_path):
    text = MINIMAL + "hub: {state_dir: var/opshub}\nrunbooks: {repository: 'git@github.com:acme/runbooks.git'}\n"
    settings = load_settings(write(tmp_path, text), cwd=tmp_path)
    assert settings["hub"]["state_dir"] == str(tmp_path / "var" / "opshub")
    assert settings["runbooks"]["repository"] == "git@github.com:acme/runbooks.git"  # URLs stay as they are


def test_relative_paths_start_at_the_settings_file_whatever_the_current_folder(tmp_path, monkeypatch):
    """`opshub config show` typed in a home shows the state where `opshub hub` keeps it."""
    (tmp_path / "etc").mkdir()
    settings_file = write(tmp_path / "etc", MINIMAL + "hub: {state_dir: var/opshub}\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(settings_file)["hub"]["state_dir"] == str(tmp_path / "etc" / "var" / "opshub")
    # the embedded default's paths start at the checkout, where `make run` keeps state/ and runbooks.git
    embedded = load_settings(EMBEDDED_SETTINGS)
    assert embedded["hub"]["state_dir"] == str(PACKAGE_DIR.parents[1] / "state")
    shown = yaml.safe_load(run_cli("config", "show", str(settings_file)).stdout)
    assert shown["hub"]["state_dir"] == str(tmp_path / "etc" / "var" / "opshub")


def test_masked_hides_literal_secret_values():
    data = {"auth": {"oidc": {"client_secret": "s3cret", "client_secret_env": "X_SECRET", "password_env": "P"}}}
    shown = masked(data)
    assert shown["auth"]["oidc"]["client_secret"] == MASK
    assert shown["auth"]["oidc"]["client_secret_env"] == "X_SECRET"
    assert data["auth"]["oidc"]["client_secret"] == "s3cret"  # the original is untouched


def test_validate_does_not_change_its_input():
    data = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
    before = yaml.safe_dump(data)
    validate(data)
    assert yaml.safe_dump(data) == before


def test_settings_reference_is_rendered_from_the_schema_and_committed():
    docs = render_docs()
    for key in ["hub.port", "auth.provider", "auth.shared_password.groups", "roles.viewer", "runbooks.mirror_from"]:
        assert f"`{key}`" in docs
    committed = (ROOT / "hub" / "docs" / "settings.md").read_text()
    assert committed == docs, "hub/docs/settings.md is stale: run `make docs`"


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "opshub.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def test_cli_validate_and_show(tmp_path):
    good = write(tmp_path, MINIMAL)
    result = run_cli("config", "validate", str(good))
    assert result.returncode == 0 and "valid" in result.stdout
    result = run_cli("config", "show", str(good))
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["runbooks"]["target"] == "runbooks"


def test_cli_validate_reports_problems_without_traceback(tmp_path):
    bad = write(tmp_path, MINIMAL + "hub: {port: eighty}\n")
    result = run_cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert "hub.port" in result.stderr and "Traceback" not in result.stderr


def test_the_schema_is_the_one_place_defaults_are_declared(tmp_path):
    """The service's own defaults (its command line, the dashboards registry, the store) are the schema's."""
    from opshub.service.__main__ import parse_args
    from opshub.service.dashboards import DEFAULTS
    from opshub.service.store import DEFAULT_OUTPUT_CAP
    from opshub.settings import schema_default

    filled = load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)
    assert DEFAULTS == schema_default("dashboards") == filled["dashboards"]
    assert filled["history"]["output_cap_bytes"] == DEFAULT_OUTPUT_CAP
    # the embedded default's one setting beyond the defaults: the practice fleet's key (make fleet)
    assert set(filled["runner"]["credentials"]) == {"SSH_PRIVATE_KEY"}
    filled["runner"]["credentials"] = schema_default("runner")["credentials"]
    place = {"database_url": "sqlite://", "runbooks_repository": "x", "cache_dir": "y"}
    read = parse_args(["--settings", json.dumps({"service": place})])
    plain = [section for section in SERVICE_SETTINGS_SECTIONS if section != "runbooks"]  # paths get resolved
    assert {section: read[section] for section in plain} == {section: filled[section] for section in plain}
    assert read["runbooks"]["branch"] == filled["runbooks"]["branch"]


def test_the_service_reads_every_section_it_needs_as_one_document_from_the_hub(tmp_path):
    """What the hub hands over is what the service reads: the validated sections, whole, so a new
    setting needs no argument of its own; and a document without a place the service needs is refused
    naming it."""
    from opshub.configure.services import service_arguments
    from opshub.service.__main__ import SettingsDocumentError, parse_args, read_settings

    data = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
    data.setdefault("runner", {})["catch_up_minutes"] = 7
    data.setdefault("history", {})["retention_days"] = 3
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path, cwd=tmp_path)
    read = parse_args(service_arguments(settings, proxy="http://proxy:8000"))
    assert read["runner"]["catch_up_minutes"] == 7 and read["history"]["retention_days"] == 3
    assert read["notifications"] == settings["notifications"] and read["dashboards"] == settings["dashboards"]
    assert read["service"]["proxy_url"] == "http://proxy:8000"
    assert read["service"]["dashboards_dir"] == str(settings.state_dir / "dashboards")
    for document, problem in [
        ("{}", "service.database_url is required"),
        ('{"service": {"database_url": "sqlite://"}, "histroy": {}}', "unknown section(s) histroy"),
        ("[1]", "must be a JSON object"),
        ("{", "is not JSON"),
    ]:
        with pytest.raises(SettingsDocumentError, match=re.escape(problem)):
            read_settings(document)


NOTIFICATIONS = """
notifications:
  targets:
    ops-chat: {url_env: OPSHUB_NOTIFY_OPS_CHAT}
  rules:
    - to: [ops-chat]
      on: [failed, never_started]
      runbooks: ["patching/*"]
    - to: [ops-chat]
"""


def test_notifications_are_off_by_default_and_an_unquoted_on_is_the_rule_s(tmp_path):
    assert load_settings(write(tmp_path, MINIMAL), cwd=tmp_path)["notifications"] == {
        "targets": {},
        "rules": [],
        "max_attempts": 10,
    }
    notifications = load_settings(write(tmp_path, MINIMAL + NOTIFICATIONS), cwd=tmp_path)["notifications"]
    first, second = notifications["rules"]
    assert first == {"to": ["ops-chat"], "on": ["failed", "never_started"], "runbooks": ["patching/*"]}
    assert second == {"to": ["ops-chat"]}  # the notifier takes the rest from the schema's defaults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL + NOTIFICATIONS.replace("- to: [ops-chat]\n", "- to: [ops-chat, pager]\n", 1),
            "notifications.rules.0.to: unknown target 'pager' (known targets: ops-chat);"
            " declare it under notifications.targets",
        ),
        (
            MINIMAL + NOTIFICATIONS.replace("never_started", "sometimes"),
            "notifications.rules.0.on.1: 'sometimes' is not one of",
        ),
        (MINIMAL + NOTIFICATIONS.replace("url_env:", "url:"), "notifications.targets.ops-chat: unknown key(s) url"),
        (MINIMAL + "notifications: {rules: [{to: [x]}]}\n", "unknown target 'x' (known targets: none)"),
    ],
)
def test_bad_notifications_name_the_key(tmp_path, text, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), cwd=tmp_path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
