"""Apply opshub settings to JupyterHub's traitlets config.

Each section of the settings file has one pure function here: it reads settings, sets traits
on the given `Config` and touches nothing else (no files, no environment, no appending to
traits another function owns). `apply_all` calls them in order; the hub's config file
(`opshub/jupyterhub_config.py`) is glue around it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from traitlets.config import Config

from ..settings import PACKAGE_DIR, Settings
from .auth import apply_auth
from .hub import apply_hub
from .pages import apply_pages
from .roles import apply_roles
from .services import apply_services
from .spawner import apply_spawner


@dataclass(frozen=True)
class Runtime:
    """Facts about the machine the hub runs on, found by the glue so the apply functions stay pure."""

    python: str  # interpreter of the opshub environment (single-user servers, helper services)
    proxy_command: list[str]  # how to start configurable-http-proxy
    demo_password: str | None = None  # the shared password, for the shared-password provider
    client_secret: str | None = None  # the OAuth client secret, for github, gitlab and oidc
    oidc_endpoints: dict[str, str] = field(default_factory=dict)  # authorize_url, token_url, userinfo_url
    metrics_token: str | None = None  # the bearer token Prometheus sends to the opshub service
    alerts_token: str | None = None  # the bearer token Alertmanager sends to the opshub service
    database_password: str | None = None  # the run history database's password, if it needs one
    as_root: bool = False  # the hub runs as root: it can give each person a system account
    path: str = os.defpath  # the hub's $PATH, which servers on this machine extend
    deployment_id: str = ""  # this deployment's id (its state folder's), for what people's servers keep per deployment

    @classmethod
    def of_this_machine(cls, **found) -> Runtime:
        # configurable-http-proxy: the project-local node_modules (`make run` installs it there)
        # first, else whatever is on PATH (as in the hub image).
        local = PACKAGE_DIR.parent / "node_modules" / ".bin" / "configurable-http-proxy"
        proxy = [str(local)] if local.exists() else ["configurable-http-proxy"]
        return cls(
            python=sys.executable,
            proxy_command=proxy,
            as_root=os.geteuid() == 0,
            path=os.environ.get("PATH", os.defpath),
            **found,
        )


def apply_all(c: Config, settings: Settings, runtime: Runtime) -> Config:
    apply_hub(c, settings, runtime)
    apply_auth(c, settings, runtime)
    apply_roles(c, settings)
    apply_spawner(c, settings, runtime)
    apply_pages(c, settings, runtime)
    apply_services(c, settings, runtime)
    return c


__all__ = [
    "Runtime",
    "apply_all",
    "apply_auth",
    "apply_hub",
    "apply_pages",
    "apply_roles",
    "apply_services",
    "apply_spawner",
]
