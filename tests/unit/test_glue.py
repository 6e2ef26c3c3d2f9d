"""The hub's config file is glue: load settings, prepare the state, apply, load the escape hatch."""

from __future__ import annotations

import pytest
from opshub.settings import EMBEDDED_SETTINGS, PACKAGE_DIR
from traitlets.config.loader import PyFileConfigLoader

from tests.helpers import make_work_tree

GLUE = PACKAGE_DIR / "jupyterhub_config.py"


def load_glue():
    return PyFileConfigLoader(GLUE.name, path=str(GLUE.parent)).load_config()


@pytest.fixture(autouse=True)
def claims_of_this_test(tmp_path, monkeypatch):
    """The glue's prepare() claims the machine's system accounts as root: here in a folder of the test's own."""
    monkeypatch.setattr("opshub.startup.CLAIMS_DIR", tmp_path / "claims")


@pytest.fixture
def embedded_here(open_tmp_path, monkeypatch):
    """`make run`'s folder: one other accounts can enter (the tests run as root in CI)."""
    make_work_tree(open_tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    monkeypatch.chdir(open_tmp_path)
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "glue-test-password")
    # the embedded default, copied here: its relative paths start at its file's folder
    (open_tmp_path / "embedded.yaml").write_text(EMBEDDED_SETTINGS.read_text())
    monkeypatch.setenv("OPSHUB_SETTINGS", str(open_tmp_path / "embedded.yaml"))
    return open_tmp_path


def test_glue_applies_the_embedded_default(embedded_here, monkeypatch):
    monkeypatch.setenv("OPSHUB_PORT", "18123")
    c = load_glue()
    assert c.JupyterHub.bind_url == "http://127.0.0.1:18123/"
    assert c.SharedPasswordAuthenticator.user_password == "glue-test-password"
    assert c.ConfigurableHTTPProxy.command[-1].endswith("configurable-http-proxy")
    assert (embedded_here / "runbooks.git" / "HEAD").exists()


def test_glue_loads_extra_config_files_after_its_own(embedded_here, monkeypatch):
    extra = embedded_here / "extra"
    extra.mkdir()
    (extra / "10-announce.py").write_text(
        "c.JupyterHub.template_vars.update({'announcement': 'patch window tonight'})\n"
    )
    (extra / "20-port.py").write_text("c.Spawner.start_timeout = 33\n")
    (extra / "notes.txt").write_text("not python: ignored\n")
    settings = embedded_here / "opshub.yaml"
    text = EMBEDDED_SETTINGS.read_text().replace(
        "  state_dir: state\n", "  state_dir: state\n  extra_config_dir: extra\n"
    )
    settings.write_text(text)
    monkeypatch.setenv("OPSHUB_SETTINGS", str(settings))
    c = load_glue()
    assert c.JupyterHub.template_vars["announcement"] == "patch window tonight"
    assert c.JupyterHub.template_vars["opshub_runbooks_target"] == "runbooks"  # ours, still there
    assert c.Spawner.start_timeout == 33


def test_glue_exits_with_the_settings_problem(embedded_here, monkeypatch, capsys):
    bad = embedded_here / "bad.yaml"
    bad.write_text("hub: {port: x}\n")
    monkeypatch.setenv("OPSHUB_SETTINGS", str(bad))
    with pytest.raises(SystemExit) as exited:
        load_glue()
    assert exited.value.code == 2
    assert "hub.port: expected integer" in capsys.readouterr().err
