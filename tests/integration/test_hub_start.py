"""Starting the hub: invalid settings stop it with a message that names the key, not a traceback."""

from __future__ import annotations

import os
import subprocess

from opshub.settings import EMBEDDED_SETTINGS, PACKAGE_DIR

from tests.helpers import VENV_BIN


def run(argv, tmp_path, **env):
    return subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False
    )


def bad_settings(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(EMBEDDED_SETTINGS.read_text().replace("kind: local", "kind: locale"))
    return path


def test_opshub_hub_refuses_invalid_settings(tmp_path):
    result = run([str(VENV_BIN / "opshub"), "hub", "--settings", str(bad_settings(tmp_path))], tmp_path)
    assert result.returncode != 0
    assert "spawner.kind: 'locale' is not one of local" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # nothing was started or created


def test_jupyterhub_with_the_glue_config_refuses_invalid_settings(tmp_path):
    """Also when JupyterHub is started directly with opshub's config file (as in the images)."""
    config = PACKAGE_DIR / "jupyterhub_config.py"
    result = run(
        [str(VENV_BIN / "jupyterhub"), "-f", str(config)], tmp_path, OPSHUB_SETTINGS=str(bad_settings(tmp_path))
    )
    assert result.returncode != 0
    assert "spawner.kind: 'locale' is not one of local" in result.stderr


def test_too_short_demo_password_is_refused(tmp_path):
    embedded = tmp_path / "embedded.yaml"  # a copy: its state goes here, not into the checkout
    embedded.write_text(EMBEDDED_SETTINGS.read_text())
    result = run([str(VENV_BIN / "opshub"), "hub", "--settings", str(embedded)], tmp_path, OPSHUB_DEMO_PASSWORD="short")
    assert result.returncode != 0
    assert "OPSHUB_DEMO_PASSWORD: the shared password must be at least 8 characters" in result.stderr
    assert "Traceback" not in result.stderr
