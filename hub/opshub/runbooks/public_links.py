"""The service's links as a person's browser reaches them, for what prints them in a terminal.

The service answers a run's `url` as a path (`/services/opshub/runs/<id>`): right for its own pages,
not clickable in a terminal. A person's server knows the hub's public address when JupyterHub does
(`JupyterHub.public_url` set: JupyterHub hands every server `JUPYTERHUB_PUBLIC_HUB_URL` and
`JUPYTERHUB_PUBLIC_URL`), or when opshub hands it `OPSHUB_PUBLIC_URL`. Without any of them (or with an
address no browser can open, such as 0.0.0.0), the path is printed as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..contract import PUBLIC_URL_ENV

# in the order they are read; the first usable one wins
PUBLIC_URL_ENVS = ("JUPYTERHUB_PUBLIC_HUB_URL", "JUPYTERHUB_PUBLIC_URL", PUBLIC_URL_ENV)
UNREACHABLE_HOSTS = {"", "0.0.0.0", "::"}  # addresses a hub listens on, not ones a browser opens


def public_origin(environ: Mapping[str, str] | None = None) -> str | None:
    """`https://ops.example.com` (scheme and host, no path) from the environment, or None."""
    environ = os.environ if environ is None else environ
    for name in PUBLIC_URL_ENVS:
        value = (environ.get(name) or "").strip()
        if not value:
            continue
        try:
            parts = urlsplit(value)
            host = parts.hostname or ""
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and host not in UNREACHABLE_HOSTS:
            return f"{parts.scheme}://{parts.netloc}"
    return None


def absolute_url(url: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The service's `url` (a path under the hub's base URL) made absolute when the public address is
    known; anything else (already absolute, empty, or no address known) as it is."""
    if not url or not url.startswith("/") or url.startswith("//"):
        return url
    origin = public_origin(environ)
    return origin + url if origin else url
