"""Talk to the opshub service's run API from a user's server, as that user.

The identity is the user's JupyterHub token (JUPYTERHUB_API_TOKEN in every single-user server);
the service takes who records from the token, never from the request body.

API (JSON, under the service's URL, `Authorization: token <token>`): the records and paths of
`opshub.run_record`, which the service accepts exactly (an unknown field is a 400 naming it):
    POST   api/runs                     a RunStart -> 201 run (an `id` already recorded for the same
                                        run answers 200: a retry)
    POST   api/runs/<id>/heartbeat      a Heartbeat (progress so far)                              -> 200 run
    POST   api/runs/<id>/finish         a RunEnd                                                   -> 200 run
    GET    api/runs?runbook=&user=&status=&trigger=&since=&until=&limit=&offset=      -> 200 {runs, total}
    GET    api/runs/<id>                                                               -> 200 run
    DELETE api/runs/<id>                (admins)                                       -> 204
Errors come back as {"message": "..."} with a 4xx status.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from ..contract import SERVICE_URL_ENV
from ..run_record import RUN, RUN_FINISH, RUN_HEARTBEAT, RUNS, Heartbeat, RunEnd, RunStart, path

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
LOCK_HELD = "lock held"  # how a 409 refusing a start for a lock begins: the run waits, then starts
TIMEOUT = 30  # seconds per request


class ServiceError(Exception):
    """The service refused or could not be reached. `status` is the HTTP status, 0 if unreachable."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"opshub service: {message}" + (f" (HTTP {status})" if status else ""))

    @property
    def lock_held(self) -> bool:
        """The start was refused because another run holds one of the runbook's locks."""
        return self.status == 409 and self.message.startswith(LOCK_HELD)


class ServiceClient:
    auth_scheme = "token"  # JupyterHub's; the runner's run token is sent as "Bearer"

    def __init__(self, url: str | None = None, token: str | None = None):
        url = url or os.environ.get(SERVICE_URL_ENV, "")
        token = token or os.environ.get(TOKEN_ENV, "")
        if not url:
            raise ServiceError(0, f"no service URL: ${SERVICE_URL_ENV} is not set")
        if not token:
            raise ServiceError(0, f"no token: ${TOKEN_ENV} is not set")
        self.url = url if url.endswith("/") else url + "/"
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"{self.auth_scheme} {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            raise ServiceError(e.code, _message(e.read()) or e.reason) from None
        except (urllib.error.URLError, OSError) as e:
            raise ServiceError(0, f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None
        return json.loads(text) if text else None

    # The recorder `opshub run` and the interactive runs' spool use (runbooks/headless.py): records in,
    # the service's answer (the run as JSON) out.

    def start_run(self, start: RunStart) -> dict:
        return self.request("POST", RUNS, start.to_json())

    def heartbeat(self, run_id: str, beat: Heartbeat | None = None) -> dict:
        return self.request("POST", path(RUN_HEARTBEAT, run_id), (beat or Heartbeat()).to_json())

    def finish_run(self, run_id: str, end: RunEnd) -> dict:
        return self.request("POST", path(RUN_FINISH, run_id), end.to_json())

    def get_run(self, run_id: str) -> dict:
        return self.request("GET", path(RUN, run_id))


def _message(body: bytes) -> str:
    try:
        return json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]
