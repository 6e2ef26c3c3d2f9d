"""The hub's REST API as the opshub service uses it: the servers of its system accounts (the
dashboards server, the runner's servers), with the service's own token. The service's role allows
exactly that (configure/roles.py `execution_plane_roles`)."""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado import httpclient


class HubApi:
    def __init__(self, hub_api_url: str, api_token: str, client: httpclient.AsyncHTTPClient | None = None):
        self.hub_api_url = hub_api_url.rstrip("/")
        self.api_token = api_token
        self.client = client or httpclient.AsyncHTTPClient(force_instance=True, max_clients=100)

    async def call(self, method: str, path: str, body: dict | None = None) -> httpclient.HTTPResponse:
        """One request; the response whatever its status (connection errors raise OSError)."""
        return await self.client.fetch(
            f"{self.hub_api_url}/{path}",
            method=method,
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            headers={"Authorization": f"token {self.api_token}", "Content-Type": "application/json"},
            raise_error=False,
            request_timeout=30,
            allow_nonstandard_methods=True,  # DELETE with a body ({"remove": true})
        )

    async def servers(self, account: str) -> dict[str, dict]:
        """The servers of `account` by name ("" is the default server); {} if the hub does not answer 200."""
        response = await self.call("GET", f"users/{quote(account)}")
        if response.code != 200:
            raise httpclient.HTTPClientError(
                response.code, f"the hub answered {response.code}: {response.body[:300]!r}"
            )
        return json.loads(response.body).get("servers", {})

    async def start_server(
        self, account: str, name: str = "", user_options: dict | None = None
    ) -> httpclient.HTTPResponse:
        """Start a server; `user_options` (the JSON body) become the spawner's `user_options`: a runner's
        server is told its run's runbook, `{"runbook": path}`, so the hub's spawner mounts only the
        credentials granted to it (configure/spawner.py `SystemServers`)."""
        path = f"users/{quote(account)}/servers/{quote(name)}" if name else f"users/{quote(account)}/server"
        return await self.call("POST", path, user_options or {})

    async def remove_server(self, account: str, name: str) -> httpclient.HTTPResponse:
        """Stop a named server and forget it (its record in the hub goes too)."""
        return await self.call("DELETE", f"users/{quote(account)}/servers/{quote(name)}", {"remove": True})
