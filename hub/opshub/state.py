"""Prepare the hub's state folder before JupyterHub starts (the only side effects of start-up)."""

from __future__ import annotations

import os
import secrets

from .runbooks.mirror import MirrorError, mirror
from .settings import Settings, SettingsError

DEMO_PASSWORD_FILE = "demo-password"
MIN_PASSWORD_LENGTH = 8  # what JupyterHub's SharedPasswordAuthenticator requires


def demo_password(settings: Settings) -> tuple[str, str]:
    """The shared demo password and where it came from (the environment, or a file generated once)."""
    variable = settings["auth"]["shared_password"]["password_env"]
    value = os.environ.get(variable)
    if value:
        if len(value) < MIN_PASSWORD_LENGTH:
            raise SettingsError(
                f"${variable}",
                [
                    f"{variable}: the shared password must be at least {MIN_PASSWORD_LENGTH} characters, not {len(value)}"
                ],
            )
        return value, f"${variable}"
    file = settings.state_dir / DEMO_PASSWORD_FILE
    if not file.exists():
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(12) + "\n")
    return file.read_text().strip(), str(file)


def prepare_state(settings: Settings) -> str | None:
    """Create the state folder and what the hub needs in it; return the demo password if any."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # holds the database, cookie secret and demo password
    if settings["spawner"]["kind"] == "local":
        (state / "homes").mkdir(exist_ok=True)
    password = demo_password(settings)[0] if settings["auth"]["provider"] == "shared-password" else None
    runbooks = settings["runbooks"]
    if runbooks["mirror_from"]:
        try:
            mirror(runbooks["mirror_from"], runbooks["repository"], runbooks["branch"])
        except MirrorError as e:
            raise SettingsError(settings.source, [f"runbooks.mirror_from: {e}"]) from None
    return password
