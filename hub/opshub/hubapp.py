"""`python -m opshub.hubapp`: JupyterHub, stopped the way an ops team needs (`opshub hub` starts it).

- **Ctrl-C (SIGINT)** stops everything the hub started, as `make run` promises. Unattended runs go
  first, while the opshub service can still record their end: each is stopped through the hub, its
  job records it `interrupted` with its output so far, and the hub says which runs it interrupted.
- **SIGTERM** is a restart (an upgrade, `systemctl restart`, `docker compose restart`): the hub and its
  services stop, every server keeps running, and the next start takes them over (JupyterHub polls
  each recorded server and keeps those still up). A patching run does not stop mid-host because the
  hub was upgraded: it records its end once the service is back (its job retries for 10 minutes).
  Under systemd, give the unit `KillMode=mixed` so SIGTERM reaches the hub alone.
"""

from __future__ import annotations

import asyncio
import json
import signal

from jupyterhub.app import JupyterHub
from tornado import httpclient
from traitlets import Bool

from .contract import RUNNER_ACCOUNT
from .deployments import keep_claim_at_exit

STOP_RUNS_SECONDS = 30  # how long Ctrl-C waits for the runs it interrupts to record their end


class OpsHubApp(JupyterHub):
    keep_servers_on_sigterm = Bool(
        True,
        config=True,
        help="""Leave every server (unattended runs, the dashboards server, people's JupyterLabs) running
        when the hub gets SIGTERM, for the next start to take over; SIGINT (Ctrl-C) still stops them all.""",
    )

    async def shutdown_cancel_tasks(self, sig=None):
        if sig == signal.SIGTERM and self.keep_servers_on_sigterm:
            self.cleanup_servers = False
            keep_claim_at_exit()  # they still use the machine's system accounts
            self.log.warning("SIGTERM: the hub stops; servers and unattended runs go on for its next start")
        await super().shutdown_cancel_tasks(sig)

    async def cleanup(self):
        if self.cleanup_servers:
            await self.stop_runs()
        await super().cleanup()

    async def stop_runs(self) -> None:
        """Stop the runner's servers before the services, so that each run records its end, and say which."""
        runner = self.users.get(RUNNER_ACCOUNT) if self.users else None
        active = [(name, spawner) for name, spawner in (runner.spawners.items() if runner else []) if spawner.active]
        if not active:
            return
        runs = await asyncio.gather(*(self._run_of(spawner) for _, spawner in active))
        self.log.warning("Stopping %d unattended run(s), recorded as interrupted: %s", len(active), ", ".join(runs))
        print(f"opshub: interrupting unattended run(s) {', '.join(runs)}", flush=True)
        stops = [asyncio.ensure_future(runner.stop(name)) for name, _ in active]
        done, pending = await asyncio.wait(stops, timeout=STOP_RUNS_SECONDS)
        for task in done:
            if task.exception():
                self.log.error("Failed to stop a runner's server: %s", task.exception())
        if pending:
            self.log.error("%d runner server(s) did not stop within %ss", len(pending), STOP_RUNS_SECONDS)

    async def _run_of(self, spawner) -> str:
        """The run a runner's server executes, as its status page says (its server's name otherwise)."""
        try:
            url = spawner.server.url.rstrip("/") + "/api"
            response = await httpclient.AsyncHTTPClient().fetch(url, request_timeout=3)
            return json.loads(response.body)["run"] or spawner.name
        except Exception:  # a server that does not answer: its name will do
            return spawner.name


main = OpsHubApp.launch_instance

if __name__ == "__main__":
    main()
