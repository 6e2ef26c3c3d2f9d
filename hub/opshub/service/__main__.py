"""Start the opshub service: `python -m opshub.service --database-url URL ...`.

JupyterHub starts it as a managed service (see opshub.configure.services) and hands it its URL,
prefix and OAuth client in JUPYTERHUB_SERVICE_* variables; in other modes it runs as its own
process or container with the same variables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import signal
import time
from urllib.parse import urlparse

from jupyterhub.utils import url_path_join
from prometheus_client import CollectorRegistry
from tornado.ioloop import PeriodicCallback

from ..contract import DASHBOARDS_ACCOUNT, SERVICE_SETTINGS_SECTIONS, server_prefix
from ..hardening import die_with_parent
from ..runbooks.catalog import RunbookCatalog
from ..settings import schema_default
from . import outages
from .app import UnattendedRuns, make_app
from .dashboards import Dashboards
from .events import RunEvents
from .hub_api import HubApi
from .notifier import Notifier
from .outages import is_database_outage
from .queue import RunQueue
from .runner import Runner
from .scheduler import Scheduler
from .stats import RunStats
from .store import RunStore
from .unattended import Unattended
from .voila import VoilaBackend

log = logging.getLogger("opshub.service")


# The settings sections the service reads (contract.py), handed over by the hub as one JSON document
# (configure/services.py `service_settings`): a new setting is its schema and the code that reads it.
SECTIONS = SERVICE_SETTINGS_SECTIONS
# `service`: where things are, derived by the hub from the settings (paths, URLs, variable names).
PLACES = {
    "database_url": None,  # SQLAlchemy URL of the run history (its password in $OPSHUB_DATABASE_PASSWORD)
    "runbooks_repository": None,  # git URL of the runbooks
    "cache_dir": None,  # the service's copy of the runbooks repository
    "dashboards_dir": "",  # the published dashboards' copies (empty: no dashboards)
    "proxy_url": "http://127.0.0.1:8000",  # the hub's proxy as this service reaches it (no base URL)
    "public_url": "http://127.0.0.1:8000/",  # the hub's URL for browsers (links in notifications)
    "metrics_token_env": "OPSHUB_METRICS_TOKEN",  # variables holding the tokens Prometheus and
    "alerts_token_env": "OPSHUB_ALERTS_TOKEN",  # Alertmanager send
}


class SettingsDocumentError(ValueError):
    """The settings document is not what the service needs; the message names the problem."""


def parse_args(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m opshub.service", description=__doc__.splitlines()[0])
    p.add_argument(
        "--settings",
        required=True,
        help="the settings the service reads, as one JSON document: the validated sections"
        f" {', '.join(SECTIONS)} of the settings file, and `service` ({', '.join(PLACES)})",
    )
    args = p.parse_args(argv)
    try:
        return read_settings(args.settings)
    except SettingsDocumentError as e:
        p.error(str(e))


def read_settings(document: str) -> dict:
    """The settings document, each section completed with the schema's defaults (the hub hands over
    whole validated sections; a document written by hand may leave settings out)."""
    try:
        given = json.loads(document)
    except ValueError as e:
        raise SettingsDocumentError(f"--settings is not JSON: {e}") from None
    if not isinstance(given, dict):
        raise SettingsDocumentError("--settings must be a JSON object")
    unknown = sorted(set(given) - {*SECTIONS, "service"})
    if unknown:
        raise SettingsDocumentError(f"--settings: unknown section(s) {', '.join(unknown)}")
    settings = {section: {**schema_default(section), **(given.get(section) or {})} for section in SECTIONS}
    settings["service"] = {**PLACES, **(given.get("service") or {})}
    missing = [name for name, value in settings["service"].items() if value is None]
    if missing:
        raise SettingsDocumentError(f"--settings: service.{missing[0]} is required")
    return settings


def database_url(url: str) -> str:
    """The URL with the password from $OPSHUB_DATABASE_PASSWORD (set by the hub from
    `history.database_password_env`), so that it stays out of the command line and the settings."""
    password = os.environ.get("OPSHUB_DATABASE_PASSWORD")
    if not password:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


async def serve(settings: dict) -> None:
    history, runner_settings, place = settings["history"], settings["runner"], settings["service"]
    store = RunStore(database_url(place["database_url"]), output_cap=history["output_cap_bytes"])
    outages.database.what = f"the run history's database ({store.engine.url.render_as_string(hide_password=True)})"
    store.upgrade()
    timeout = datetime.timedelta(seconds=history["heartbeat_timeout"])
    days = history["retention_days"]
    retention = datetime.timedelta(days=days) if days else None
    stats = RunStats.from_store(store)
    queue = RunQueue(store)
    registry = CollectorRegistry(auto_describe=False)
    events = RunEvents(stats, registry, queue.queued_count)
    # every change of a run's status, whoever writes it, reaches the metrics (and, below, the runner)
    store.bus.subscribe(events.changed)
    # notifications: the events are stored with the changes (the outbox); the bus only wakes the notifier
    notifier = Notifier(store, settings["notifications"], place["public_url"], registry=registry)
    store.bus.subscribe(notifier.changed)
    store.bus.attach(asyncio.get_running_loop())

    # Runs left `running` by a crash or restart get no heartbeat any more: the sweep ends them. Not
    # before this service has listened for a whole window: while it was down nobody could reach it,
    # and a run's client (a runner whose hub restarted) may be about to send its end.
    listening_since = time.monotonic()

    def sweep():
        nonlocal listening_since
        if outages.database.active:  # heartbeats are refused meanwhile: a whole window again afterwards
            listening_since = time.monotonic()
            return
        if time.monotonic() - listening_since < timeout.total_seconds():
            return
        try:
            stale = store.interrupt_stale_runs(timeout)
        except Exception as e:
            if not is_database_outage(e):
                raise
            outages.database.failed(e)
            return
        for run_id in stale:
            log.warning("run %s interrupted: no heartbeat for %s", run_id, timeout)

    async def apply_retention():
        if retention:  # off the event loop: a first pass over a long history deletes many runs
            deleted = await asyncio.get_running_loop().run_in_executor(None, store.apply_retention, retention)
            if deleted:
                log.info("retention: deleted %d run(s) older than %s", deleted, retention)

    catalog = RunbookCatalog(place["runbooks_repository"], settings["runbooks"]["branch"], place["cache_dir"])
    catalog.refresh()

    async def refresh_catalog():
        await asyncio.get_running_loop().run_in_executor(None, catalog.refresh)

    PeriodicCallback(sweep, max(timeout.total_seconds() / 4, 5) * 1000).start()
    # schedules and alerts are read from the catalog: as often as the repository is looked at for dashboards
    sync_seconds = settings["dashboards"]["git_sync_interval"] or 60
    PeriodicCallback(refresh_catalog, sync_seconds * 1000).start()
    PeriodicCallback(apply_retention, 3600 * 1000).start()
    await apply_retention()

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/opshub/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    hub_api = HubApi(os.environ.get("JUPYTERHUB_API_URL", ""), os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    runner = Runner(
        queue,
        hub_api,
        proxy_url=place["proxy_url"],
        hub_base_url=os.environ.get("JUPYTERHUB_BASE_URL", "/"),
        archive=catalog.archive,
        max_concurrent=runner_settings["max_concurrent"],
        start_timeout=runner_settings["start_timeout"],
        on_lock_wait=events.lock_wait,
    )
    store.bus.subscribe(runner.changed)  # a finished run's server goes; a queued run is looked at now
    unattended = Unattended(queue, catalog)
    scheduler = Scheduler(unattended, queue, events, datetime.timedelta(minutes=runner_settings["catch_up_minutes"]))

    async def fire_schedules():
        try:
            await asyncio.get_running_loop().run_in_executor(None, scheduler.tick)
        except Exception as e:  # a database or repository hiccup: the next second tries again
            if is_database_outage(e):
                outages.database.failed(e)
            else:
                log.exception("firing schedules")

    alerts_token = os.environ.get(place["alerts_token_env"], "")
    if not alerts_token:
        log.warning("$%s is not set: the alerts receiver answers 401 to everyone", place["alerts_token_env"])
    # A per-process secret for the service's own OAuth state cookies: after a restart people are
    # sent through the hub's OAuth again, without noticing.
    metrics_token = os.environ.get(place["metrics_token_env"], "")
    if not metrics_token:
        log.warning("$%s is not set: /metrics answers 401 to everyone", place["metrics_token_env"])
    dashboards = None
    if place["dashboards_dir"]:
        # The dashboards server: a system account's server, started through the hub, reached through the proxy.
        backend = VoilaBackend(
            hub_api_url=os.environ.get("JUPYTERHUB_API_URL", ""),
            api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            proxy_url=place["proxy_url"],
            server_prefix=server_prefix(os.environ.get("JUPYTERHUB_BASE_URL", "/"), DASHBOARDS_ACCOUNT),
            base_url=url_path_join(prefix, "dashboards", "-") + "/",
            account=DASHBOARDS_ACCOUNT,
        )
        dashboards = Dashboards(store, place["dashboards_dir"], prefix, backend, catalog, settings["dashboards"], stats)
    app = make_app(
        store,
        prefix,
        stats=stats,
        known_runbooks=catalog.names,
        metrics_token=metrics_token,
        cookie_secret=os.urandom(32),
        dashboards=dashboards,
        unattended=UnattendedRuns(queue, unattended, runner, scheduler, events, alerts_token),
        registry=registry,
    )
    app.listen(url.port, address=url.hostname)
    runner.start()
    notifier.start()
    PeriodicCallback(fire_schedules, 1000).start()
    if dashboards is not None:
        await dashboards.start()
    log.info("opshub service at %s%s, history in %s", url.geturl().rstrip("/"), prefix, store.engine.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if dashboards is not None:
        dashboards.stop()
    runner.stop()
    notifier.stop()
    store.close()


def main(argv=None) -> None:
    die_with_parent()  # the hub's managed service: never outlives a hub killed with SIGKILL
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
