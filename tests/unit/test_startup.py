"""The state folder and the demo password."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from opshub.cli import banner
from opshub.configure import Runtime
from opshub.configure.pages import team_roles
from opshub.settings import EMBEDDED_SETTINGS, SettingsError, load_settings
from opshub.startup import DEMO_PASSWORD_FILE, demo_password, prepare

from tests.helpers import make_work_tree


@pytest.fixture(autouse=True)
def claims_of_this_test(tmp_path, monkeypatch):
    """prepare() claims the machine's system accounts as root: here in a folder of the test's own, never
    the machine's, where a live hub's claim would refuse the test (and the test's would refuse live hubs)."""
    monkeypatch.setattr("opshub.startup.CLAIMS_DIR", tmp_path / "claims")
    return tmp_path / "claims"


def embedded(tmp_path, monkeypatch):
    make_work_tree(tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    monkeypatch.delenv("OPSHUB_DEMO_PASSWORD", raising=False)
    return load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)


def in_open_folder(settings, folder):
    """The runbooks repository and the homes where every account can read them (per-person
    accounts when the tests run as root, as in CI)."""
    settings["runbooks"]["repository"] = str(folder / "runbooks.git")
    settings["spawner"]["local"]["homes_dir"] = str(folder / "homes")
    return settings


def test_demo_password_is_generated_once_and_kept_private(tmp_path, open_tmp_path, monkeypatch):
    settings = in_open_folder(embedded(tmp_path, monkeypatch), open_tmp_path)
    first = prepare(settings).demo_password
    assert len(first) >= 16
    file = tmp_path / "state" / DEMO_PASSWORD_FILE
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert prepare(settings).demo_password == first  # the same one on the next start
    assert demo_password(settings) == (first, str(file))


def test_demo_password_from_the_environment_wins(tmp_path, open_tmp_path, monkeypatch):
    settings = in_open_folder(embedded(tmp_path, monkeypatch), open_tmp_path)
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "from-the-env")
    assert prepare(settings).demo_password == "from-the-env"
    assert not (tmp_path / "state" / DEMO_PASSWORD_FILE).exists()


def test_prepare_state_mirrors_the_runbooks(tmp_path, open_tmp_path, monkeypatch):
    settings = in_open_folder(embedded(tmp_path, monkeypatch), open_tmp_path)
    prepare(settings)
    assert (open_tmp_path / "runbooks.git" / "HEAD").exists()
    assert (open_tmp_path / "homes").is_dir()


def test_the_embedded_default_keeps_the_runbooks_outside_the_private_state(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    assert settings["runbooks"]["repository"] == str(tmp_path / "runbooks.git")
    assert not Path(settings["runbooks"]["repository"]).is_relative_to(settings.state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="per-person accounts need root")
def test_per_person_accounts_refuse_what_people_could_not_read(tmp_path, open_tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)  # all of it in pytest's root-only tmp_path
    settings["spawner"]["local"]["homes_dir"] = str(open_tmp_path / "homes")
    with pytest.raises(SettingsError, match="people's accounts cannot read runbooks.repository"):
        prepare(settings)
    settings["runbooks"]["repository"] = str(tmp_path / "state" / "runbooks.git")
    with pytest.raises(SettingsError, match="runbooks.repository: .* is inside hub.state_dir"):
        prepare(settings)
    in_open_folder(settings, open_tmp_path)
    settings["spawner"]["local"]["homes_dir"] = str(tmp_path / "state" / "homes")
    with pytest.raises(SettingsError, match="spawner.local.homes_dir: .* is inside hub.state_dir"):
        prepare(settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="the hub runs as root here")
def test_a_shared_account_is_refused_as_root(tmp_path, open_tmp_path, monkeypatch):
    settings = in_open_folder(embedded(tmp_path, monkeypatch), open_tmp_path)
    settings["spawner"]["local"]["accounts"] = "shared"
    with pytest.raises(SettingsError, match="spawner.local.accounts: shared would run every server as root"):
        prepare(settings)


def test_banner_says_where_and_how_to_log_in(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    assert team_roles(settings) == {"alice": ["admin", "author"], "bob": ["operator"], "carol": ["viewer"]}
    text = banner(settings, Runtime(python="python", proxy_command=[]), "pw-123456", "generated")
    assert "http://127.0.0.1:8000/" in text
    assert "Single-account trial" in text  # not root: everyone shares one account, and it says so
    as_root = banner(settings, Runtime(python="python", proxy_command=[], as_root=True), "pw-123456", "generated")
    assert "Single-account trial" not in as_root and "one system account per person" in as_root
    assert "alice (admin, author), bob (operator), carol (viewer)" in text
    assert "pw-123456" in text and "TRYING OPSHUB OUT ONLY" in text


def test_database_password_comes_from_the_named_variable(tmp_path, open_tmp_path, monkeypatch):
    from opshub.service.__main__ import database_url

    make_work_tree(tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    path = tmp_path / "s.yaml"
    path.write_text(
        EMBEDDED_SETTINGS.read_text()
        + "history:\n  database_url: postgresql+psycopg://ops@127.0.0.1:1/opshub\n  database_password_env: OPS_DB_PW\n"
    )
    settings = in_open_folder(load_settings(path, cwd=tmp_path), open_tmp_path)
    monkeypatch.delenv("OPS_DB_PW", raising=False)
    with pytest.raises(SettingsError, match="history.database_password_env: the environment variable OPS_DB_PW"):
        prepare(settings)
    monkeypatch.setenv("OPS_DB_PW", "p@ss:word")
    # nothing answers there: the hub stops at start, naming the setting, the variable and the reason
    with pytest.raises(
        SettingsError, match=r"history.database_url: cannot open .*127.0.0.1:1.* \$OPS_DB_PW\): .*"
    ) as e:
        prepare(settings)
    assert "p@ss:word" not in str(e.value)
    # the service puts it into the URL itself, quoted
    monkeypatch.setenv("OPSHUB_DATABASE_PASSWORD", "p@ss:word")
    assert database_url("postgresql+psycopg://ops@db/opshub") == "postgresql+psycopg://ops:p%40ss%3Aword@db/opshub"


def test_the_hub_starts_when_the_oidc_provider_cannot_be_reached(tmp_path, open_tmp_path, monkeypatch, capsys):
    """A Keycloak restarting when the hub starts: no endpoints yet (the first login reads them), a warning
    naming the issuer, and the rest of the start goes on."""
    import yaml
    from opshub.configure import apply_all
    from traitlets.config import Config

    data = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
    data["auth"] = {
        "provider": "oidc",
        "oidc": {"issuer": "http://127.0.0.1:9/realms/ops", "client_id": "opshub", "client_secret_env": "OIDC_SECRET"},
    }
    (tmp_path / "opshub.yaml").write_text(yaml.safe_dump(data))
    make_work_tree(tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    monkeypatch.setenv("OIDC_SECRET", "s3cret")
    settings = in_open_folder(load_settings(tmp_path / "opshub.yaml", cwd=tmp_path), open_tmp_path)
    runtime = prepare(settings)
    assert runtime.oidc_endpoints == {"authorize_url": "", "token_url": "", "userinfo_url": ""}
    assert runtime.client_secret == "s3cret"
    assert (open_tmp_path / "runbooks.git" / "HEAD").exists()  # the rest of the start went on
    err = capsys.readouterr().err
    assert "could not read the discovery document http://127.0.0.1:9/realms/ops/.well-known" in err
    assert "The hub starts anyway" in err
    c = apply_all(Config(), settings, runtime)
    assert c.JupyterHub.authenticator_class == "opshub.auth.OIDCAuthenticator"
    assert c.OIDCAuthenticator.oidc_issuer == "http://127.0.0.1:9/realms/ops"


def test_peoples_servers_get_the_deployments_id_from_the_state_folder(tmp_path, open_tmp_path, monkeypatch):
    from opshub.configure.spawner import apply_spawner
    from traitlets.config import Config

    settings = in_open_folder(embedded(tmp_path, monkeypatch), open_tmp_path)
    runtime = prepare(settings)
    assert runtime.deployment_id == (tmp_path / "state" / "deployment-id").read_text().strip()
    assert prepare(settings).deployment_id == runtime.deployment_id  # kept
    c = Config()
    apply_spawner(c, settings, runtime)
    assert c.Spawner.environment["OPSHUB_DEPLOYMENT_ID"] == runtime.deployment_id
