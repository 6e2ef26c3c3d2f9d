"""opshub inside each user's JupyterLab: a Jupyter server extension and a JupyterLab extension.

The server extension records interactive runs of runbooks (`recorder.py`), answers the JupyterLab
extension (`handlers.py`), confines nbgitpuller's pull links to the runbooks folder (`pull_guard.py`)
and keeps a runbook as committed when JupyterLab saves it unchanged (`save_hook.py`). The
JupyterLab extension (TypeScript in hub/labextension/, built into `jupyter_data/labextensions/`) adds
"Run as recorded run" and "Publish as dashboard" (notebook toolbar, File and Run menus, command
palette), the drift warning, and the run history and dashboards to the launcher.

`opshub.singleuser` puts `jupyter_config/` and `jupyter_data/` on the server's Jupyter paths, which
enables both extensions (and turns off JupyterLab's news prompt) in every deployment mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from tornado.ioloop import IOLoop, PeriodicCallback

HERE = Path(__file__).resolve().parent
CONFIG_DIR = HERE / "jupyter_config"  # on JUPYTER_CONFIG_PATH: enables the server extension, page config
DATA_DIR = HERE / "jupyter_data"  # on JUPYTER_PATH: the built JupyterLab extension
TERMINAL_RC = HERE / "terminal-rc.sh"  # the terminals' bash set-up: opshub's commands on PATH
SPOOL_DIR = Path("~/.local/share/opshub/interactive-runs")

log = logging.getLogger("opshub.lab")


def _jupyter_server_extension_points():
    return [{"module": "opshub.lab"}]


def show_our_logs_in(server_log: logging.Logger) -> None:
    """Our modules log under `opshub.*`; Jupyter Server configures only its own logger, so without
    this only warnings reached the output (through Python's last-resort handler)."""
    ours = logging.getLogger("opshub")
    ours.setLevel(server_log.getEffectiveLevel())
    for handler in server_log.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.propagate = not ours.handlers


def guard_pull_links(serverapp) -> None:
    """nbgitpuller's links may pull only the allowed repositories into the runbooks folder."""
    from .pull_guard import PullPolicy, install

    policy = PullPolicy.from_environment()
    replaced = install(serverapp, policy)
    serverapp.log.info("opshub: pull links guarded (%d nbgitpuller handlers replaced): %s", replaced, policy.allowed())


def _load_jupyter_server_extension(serverapp) -> None:
    from ..contract import DEPLOYMENT_ID_ENV
    from ..run_record import RunEnd
    from ..runbooks.client import SERVICE_URL_ENV, ServiceClient
    from .handlers import default_runbooks_dir, handlers, service_prefix
    from .recorder import IDLE_MINUTES_ENV, KERNEL_ACTIONS, RECORD_OUTSIDE_ENV, Deliverer, Recorder, Spool, spooled_end
    from .save_hook import RunbookSaves
    from .spool import deployment_folder

    show_our_logs_in(serverapp.log)
    guard_pull_links(serverapp)  # first: whatever fails later, pull links stay confined
    runbooks_dir = default_runbooks_dir()
    serverapp.web_app.settings.update(
        opshub_runbooks_dir=runbooks_dir,
        opshub_jobs={},
        opshub_service_prefix=service_prefix(),
    )
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.base_url))
    # opening a runbook starts a kernel, whose language_info JupyterLab writes in: not a change of the runbook
    RunbookSaves(runbooks_dir).register(serverapp.contents_manager)

    if not os.environ.get(SERVICE_URL_ENV):
        serverapp.log.info("opshub: no %s, interactive runs are not recorded", SERVICE_URL_ENV)
        return
    spool = Spool(deployment_folder(SPOOL_DIR.expanduser(), os.environ.get(DEPLOYMENT_ID_ENV)))  # this deployment's
    for record in spool.records():
        if record.get("end") is None:  # left open by a server that stopped before its kernels ended
            summary = "Interactive session ended: the Jupyter server stopped."
            record["end"] = spooled_end(RunEnd("interrupted", error_summary=summary))
            record["version"] += 1
            spool.write(record)
    deliverer = Deliverer(spool, ServiceClient)
    recorder = Recorder(
        serverapp,
        runbooks_dir,
        spool,
        record_outside=os.environ.get(RECORD_OUTSIDE_ENV, "").lower() in ("1", "true", "yes"),
        idle_minutes=float(os.environ.get(IDLE_MINUTES_ENV) or 60),
        secret_names=[n for n in os.environ.get("OPSHUB_SECRET_NAMES", "").split(",") if n],
        on_change=deliverer.wake.set,
    )
    recorder.attach(serverapp.kernel_manager)  # kernel starts answer once the recorder hears the kernel
    serverapp.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=recorder.on_kernel_action)
    PeriodicCallback(recorder.check, 5000).start()
    IOLoop.current().add_callback(lambda: asyncio.ensure_future(deliverer.run_forever()))
    serverapp.web_app.settings["opshub_recorder"] = recorder
    serverapp.log.info("opshub: recording interactive runs of the runbooks in %s", runbooks_dir)
