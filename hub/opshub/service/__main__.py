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

from ..contract import DASHBOARDS_ACCOUNT, server_prefix
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m opshub.service", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True, help="SQLAlchemy URL of the run history database")
    # the defaults are the settings schema's, declared there once (the hub always passes all of them)
    history, runbooks = schema_default("history"), schema_default("runbooks")
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=history["heartbeat_timeout"],
        help="seconds of silence before a run is interrupted",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=history["retention_days"],
        help="delete finished runs older than this (0: never)",
    )
    p.add_argument(
        "--output-cap", type=int, default=history["output_cap_bytes"], help="largest executed notebook kept, in bytes"
    )
    p.add_argument("--runbooks-repository", required=True, help="git URL of the runbooks (metric labels)")
    p.add_argument("--runbooks-branch", default=runbooks["branch"])
    p.add_argument("--cache-dir", required=True, help="folder for the service's copy of the runbooks repository")
    p.add_argument("--metrics-token-env", default="OPSHUB_METRICS_TOKEN", help="variable holding the metrics token")
    p.add_argument("--dashboards-dir", help="folder for the published dashboards' copies (none: no dashboards)")
    p.add_argument("--dashboards-settings", default="{}", help="the `dashboards:` settings section, as JSON")
    p.add_argument(
        "--proxy-url", default="http://127.0.0.1:8000", help="the hub's proxy as this service reaches it (no base URL)"
    )
    runner = schema_default("runner")
    p.add_argument("--max-concurrent", type=int, default=runner["max_concurrent"], help="unattended runs at once")
    p.add_argument(
        "--runner-start-timeout", type=int, default=runner["start_timeout"], help="seconds a runner's server may take"
    )
    p.add_argument(
        "--catch-up-minutes", type=int, default=runner["catch_up_minutes"], help="how late a missed fire may still run"
    )
    p.add_argument("--alerts-token-env", default="OPSHUB_ALERTS_TOKEN", help="variable holding the alerts token")
    p.add_argument("--notifications-settings", default="{}", help="the `notifications:` settings section, as JSON")
    p.add_argument("--public-url", default="http://127.0.0.1:8000/", help="the hub's URL for browsers (in messages)")
    return p.parse_args(argv)


def database_url(url: str) -> str:
    """The URL with the password from $OPSHUB_DATABASE_PASSWORD (set by the hub from
    `history.database_password_env`), so that it stays out of the command line and the settings."""
    password = os.environ.get("OPSHUB_DATABASE_PASSWORD")
    if not password:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


async def serve(args) -> None:
    store = RunStore(database_url(args.database_url), output_cap=args.output_cap)
    outages.database.what = f"the run history's database ({store.engine.url.render_as_string(hide_password=True)})"
    store.upgrade()
    timeout = datetime.timedelta(seconds=args.heartbeat_timeout)
    retention = datetime.timedelta(days=args.retention_days) if args.retention_days else None
    stats = RunStats.from_store(store)
    queue = RunQueue(store)
    registry = CollectorRegistry(auto_describe=False)
    events = RunEvents(stats, registry, queue.queued_count)
    # every change of a run's status, whoever writes it, reaches the metrics and (once it exists) the runner
    store.bus.subscribe(events.changed)
    # notifications: the events are stored with the changes (the outbox); the bus only wakes the notifier
    notifier = Notifier(store, json.loads(args.notifications_settings), args.public_url, registry=registry)
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

    def apply_retention():
        if retention:
            deleted = store.apply_retention(max_age=retention)
            if deleted:
                log.info("retention: deleted %d run(s) older than %s", deleted, retention)

    catalog = RunbookCatalog(args.runbooks_repository, args.runbooks_branch, args.cache_dir)
    catalog.refresh()

    async def refresh_catalog():
        await asyncio.get_running_loop().run_in_executor(None, catalog.refresh)

    PeriodicCallback(sweep, max(timeout.total_seconds() / 4, 5) * 1000).start()
    # schedules and alerts are read from the catalog: as often as the repository is looked at for dashboards
    sync_seconds = json.loads(args.dashboards_settings).get("git_sync_interval") or 60
    PeriodicCallback(refresh_catalog, sync_seconds * 1000).start()
    PeriodicCallback(apply_retention, 3600 * 1000).start()
    apply_retention()

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/opshub/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    hub_api = HubApi(os.environ.get("JUPYTERHUB_API_URL", ""), os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    runner = Runner(
        queue,
        hub_api,
        proxy_url=args.proxy_url,
        hub_base_url=os.environ.get("JUPYTERHUB_BASE_URL", "/"),
        archive=catalog.archive,
        max_concurrent=args.max_concurrent,
        start_timeout=args.runner_start_timeout,
        on_lock_wait=events.lock_wait,
    )
    events.runner = runner
    unattended = Unattended(queue, catalog, wake=runner.wake)
    scheduler = Scheduler(unattended, queue, events, datetime.timedelta(minutes=args.catch_up_minutes))

    async def fire_schedules():
        try:
            await asyncio.get_running_loop().run_in_executor(None, scheduler.tick)
        except Exception as e:  # a database or repository hiccup: the next second tries again
            if is_database_outage(e):
                outages.database.failed(e)
            else:
                log.exception("firing schedules")

    alerts_token = os.environ.get(args.alerts_token_env, "")
    if not alerts_token:
        log.warning("$%s is not set: the alerts receiver answers 401 to everyone", args.alerts_token_env)
    # A per-process secret for the service's own OAuth state cookies: after a restart people are
    # sent through the hub's OAuth again, without noticing.
    metrics_token = os.environ.get(args.metrics_token_env, "")
    if not metrics_token:
        log.warning("$%s is not set: /metrics answers 401 to everyone", args.metrics_token_env)
    dashboards = None
    if args.dashboards_dir:
        # The dashboards server: a system account's server, started through the hub, reached through the proxy.
        backend = VoilaBackend(
            hub_api_url=os.environ.get("JUPYTERHUB_API_URL", ""),
            api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            proxy_url=args.proxy_url,
            server_prefix=server_prefix(os.environ.get("JUPYTERHUB_BASE_URL", "/"), DASHBOARDS_ACCOUNT),
            base_url=url_path_join(prefix, "dashboards", "-") + "/",
            account=DASHBOARDS_ACCOUNT,
        )
        settings = json.loads(args.dashboards_settings)
        dashboards = Dashboards(store, args.dashboards_dir, prefix, backend, catalog, settings, stats)
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
