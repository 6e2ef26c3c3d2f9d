"""The state folder and the demo password."""

from __future__ import annotations

import stat

from opshub.cli import banner
from opshub.configure.pages import team_roles
from opshub.settings import EMBEDDED_SETTINGS, load_settings
from opshub.startup import DEMO_PASSWORD_FILE, demo_password, prepare

from tests.helpers import make_work_tree


def embedded(tmp_path, monkeypatch):
    make_work_tree(tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    monkeypatch.delenv("OPSHUB_DEMO_PASSWORD", raising=False)
    return load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)


def test_demo_password_is_generated_once_and_kept_private(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    first = prepare(settings).demo_password
    assert len(first) >= 16
    file = tmp_path / "state" / DEMO_PASSWORD_FILE
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert prepare(settings).demo_password == first  # the same one on the next start
    assert demo_password(settings) == (first, str(file))


def test_demo_password_from_the_environment_wins(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "from-the-env")
    assert prepare(settings).demo_password == "from-the-env"
    assert not (tmp_path / "state" / DEMO_PASSWORD_FILE).exists()


def test_prepare_state_mirrors_the_runbooks(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    prepare(settings)
    assert (tmp_path / "state" / "runbooks.git" / "HEAD").exists()
    assert (tmp_path / "state" / "homes").is_dir()


def test_banner_says_where_and_how_to_log_in(tmp_path, monkeypatch):
    settings = embedded(tmp_path, monkeypatch)
    assert team_roles(settings) == {"alice": ["admin", "author"], "bob": ["operator"], "carol": ["viewer"]}
    text = banner(settings, "pw-123456", "generated")
    assert "http://127.0.0.1:8000/" in text
    assert "alice (admin, author), bob (operator), carol (viewer)" in text
    assert "pw-123456" in text and "TRYING OPSHUB OUT ONLY" in text


def test_database_password_comes_from_the_named_variable(tmp_path, monkeypatch):
    import pytest
    from opshub.service.__main__ import database_url
    from opshub.settings import SettingsError

    make_work_tree(tmp_path / "shared-notebooks", {"a.ipynb": "{}"})
    path = tmp_path / "s.yaml"
    path.write_text(
        EMBEDDED_SETTINGS.read_text()
        + "history:\n  database_url: postgresql+psycopg://ops@db/opshub\n  database_password_env: OPS_DB_PW\n"
    )
    settings = load_settings(path, cwd=tmp_path)
    monkeypatch.delenv("OPS_DB_PW", raising=False)
    with pytest.raises(SettingsError, match="history.database_password_env: the environment variable OPS_DB_PW"):
        prepare(settings)
    monkeypatch.setenv("OPS_DB_PW", "p@ss:word")
    assert prepare(settings).database_password == "p@ss:word"
    # the service puts it into the URL itself, quoted
    monkeypatch.setenv("OPSHUB_DATABASE_PASSWORD", "p@ss:word")
    assert database_url("postgresql+psycopg://ops@db/opshub") == "postgresql+psycopg://ops:p%40ss%3Aword@db/opshub"
