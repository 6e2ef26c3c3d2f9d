"""Services the hub starts and supervises next to itself."""

from __future__ import annotations

from ..settings import Settings


def apply_services(c, settings: Settings, runtime) -> None:
    services = []
    runbooks = settings["runbooks"]
    if runbooks["mirror_from"]:
        # Embedded mode: keep the local runbooks repository in step with the committed
        # content of a folder (this project's shared-notebooks/) while the hub runs.
        services.append(
            {
                "name": "runbooks-mirror",
                "display": False,
                "command": [
                    runtime.python, "-m", "opshub.runbooks.mirror",
                    "--source", runbooks["mirror_from"],
                    "--dest", runbooks["repository"],
                    "--branch", runbooks["branch"],
                    "--interval", str(runbooks["mirror_interval"]),
                ],
            }
        )  # fmt: skip
    c.JupyterHub.services = services
