"""`hub:` section: where the proxy and the hub listen, and where the hub keeps its state."""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings


def apply_hub(c, settings: Settings, runtime) -> None:
    hub = settings["hub"]
    state = Path(hub["state_dir"])
    c.JupyterHub.bind_url = f"http://{hub['ip']}:{hub['port']}{hub['base_url']}"
    # The hub's own API and the proxy's REST API stay on loopback, next to the public port, so
    # that several hubs (tests, a second `make run`) can share a machine without clashing.
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub['port'] + 1}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub['port'] + 2}"
    c.ConfigurableHTTPProxy.command = list(runtime.proxy_command)
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    # Everything the hub must keep across restarts lives in the state folder.
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    # Stop users' servers with the hub: the embedded default must leave no stray processes.
    c.JupyterHub.cleanup_servers = True
