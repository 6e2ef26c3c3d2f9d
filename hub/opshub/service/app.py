"""The opshub hub service's tornado application at /services/opshub/: run history (API and pages),
/metrics, and the published dashboards.

A JupyterHub service authenticated by the hub (`jupyterhub.services.auth`): tokens for the API,
the hub's OAuth cookie for pages. Who records, reads or deletes is always the identity of the
token; RBAC scopes decide what they may do:

- `access:services!service=opshub`: read the history (every role, viewers included)
- `custom:opshub:runs:record`: record one's own runs (operators, authors, admins)
- `custom:opshub:runs:delete`: delete runs (admins)
- `custom:opshub:dashboards:publish`: publish dashboards (authors, admins)
- `custom:opshub:runs:request`: request unattended runs, cancel one's own (operators, authors, admins)

The runner's reports and Alertmanager's webhook authenticate with bearer secrets instead
(handlers/runner.py): a token per run, and the alerts token.

The handlers are in handlers/, one module per resource (like JupyterHub's); this module composes
them. Every response carries a Content-Security-Policy and X-Frame-Options; errors name the problem,
as JSON for APIs and as a page for people, never with a traceback (handlers/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from prometheus_client import CollectorRegistry
from tornado import httputil, web

from .dashboards import Dashboards
from .events import RunEvents
from .handlers.base import MAX_BODY_BYTES, BodyTooLarge, NotFoundHandler, base_handlers
from .handlers.dashboards import dashboard_handlers
from .handlers.events import event_handlers
from .handlers.metrics import metrics_handlers
from .handlers.pages import page_handlers
from .handlers.requests import request_handlers
from .handlers.runner import runner_handlers
from .handlers.runs import run_handlers
from .handlers.schedules import schedule_handlers
from .live import LiveChanges
from .metrics import RunMetrics
from .queue import RunQueue
from .runner import Runner
from .scheduler import Scheduler
from .stats import RunStats
from .store import RunStore
from .unattended import Unattended


@dataclass(frozen=True)
class UnattendedRuns:
    """The parts of unattended runs the handlers use (service/__main__.py makes them)."""

    queue: RunQueue
    unattended: Unattended
    runner: Runner
    scheduler: Scheduler
    events: RunEvents
    alerts_token: str  # the bearer token Alertmanager sends (empty: the receiver answers 401)


TEMPLATES = Path(__file__).resolve().parent / "templates"
DRAIN_FACTOR = 10  # bodies up to this many times the limit are read (and dropped) before the 413


class ServiceApplication(web.Application):
    """The service's application: every request's body is bounded (BoundedBodies)."""

    def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
        return BoundedBodies(self, server_conn, request_conn, super().start_request(server_conn, request_conn))


class BoundedBodies(httputil.HTTPMessageDelegate):
    """A body over `opshub_max_body` bytes is never buffered and never reaches a handler: it is read and
    dropped, then answered 413 naming the limit (handlers.base.BodyTooLarge).

    Tornado's own limit (max_body_size) hangs up instead, mid-upload: the hub's proxy, still sending,
    then answers 503. Reading the rest first keeps the connection, and the proxy relays the 413. Only a
    body declared over DRAIN_FACTOR times the limit is answered at once, unread (the proxy may then
    say 503: it was still sending); a chunked one that grows past it is cut off by tornado.
    """

    def __init__(self, application: ServiceApplication, server_conn, request_conn, routed):
        self.application, self.server_conn, self.connection = application, server_conn, request_conn
        self.routed = routed  # the application's own routing of the request
        self.limit: int = application.settings["opshub_max_body"]
        self.received = 0
        self.too_large = False
        self.declared: int | None = None
        self.start_line = self.headers = None

    def headers_received(self, start_line, headers):
        self.start_line, self.headers = start_line, headers
        declared = headers.get("Content-Length", "")
        self.declared = int(declared) if declared.isdigit() else None
        drain = self.limit * DRAIN_FACTOR
        if hasattr(self.connection, "set_max_body_size"):
            # tornado's own limit above ours, so that it reads what is over ours rather than hang up
            self.connection.set_max_body_size(max(drain, self.declared or 0))
        if self.declared is not None and self.declared > self.limit:
            self.too_large = True
            if self.declared > drain:
                self.refuse()  # at once: tornado hangs up once the answer is out
            return None
        return self.routed.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        if self.too_large:
            return None
        self.received += len(chunk)
        if self.received > self.limit:  # a chunked body (no Content-Length) grown past the limit
            self.too_large = True
            self.routed.on_connection_close()  # the handler gets none of it
            return None
        return self.routed.data_received(chunk)

    def finish(self) -> None:
        if not self.too_large:
            self.routed.finish()
        elif self.declared is None or self.declared <= self.limit * DRAIN_FACTOR:
            self.refuse()  # the whole body read and dropped: the connection stays up for the answer

    def on_connection_close(self) -> None:
        if not self.too_large:
            self.routed.on_connection_close()

    def refuse(self) -> None:
        request = httputil.HTTPServerRequest(
            connection=self.connection,
            server_connection=self.server_conn,
            start_line=self.start_line,
            headers=self.headers,
        )
        size = self.declared if self.declared is not None and self.declared > self.limit else None
        self.application.get_handler_delegate(request, BodyTooLarge, {"limit": self.limit, "size": size}).finish()


def make_app(
    store: RunStore,
    prefix: str,
    stats: RunStats | None = None,
    known_runbooks=frozenset,
    metrics_token: str = "",
    dashboards: Dashboards | None = None,
    unattended: UnattendedRuns | None = None,
    registry: CollectorRegistry | None = None,
    **settings,
) -> web.Application:
    """The service's tornado application, serving under `prefix` (/services/opshub/).

    `known_runbooks()` returns the runbooks of the repository (metric labels); `metrics_token` is
    the bearer token Prometheus sends (empty: no metrics); `dashboards` is the registry of published
    dashboards (none: no dashboards' routes, and no runs hidden by a dashboard's groups);
    `unattended` the runner's parts (none: no requests, schedules or alerts); `registry` the
    Prometheus registry other parts have registered their metrics in.
    """
    stats = stats if stats is not None else RunStats.from_store(store)
    registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
    registry.register(RunMetrics(stats, known_runbooks))
    # pages that update in place wait on this (api/changes): every change of a run's status reaches it
    changes = LiveChanges()
    store.bus.subscribe(changes.run_changed)
    handlers = page_handlers(prefix) + metrics_handlers(prefix) + base_handlers(prefix) + run_handlers(prefix)
    handlers += event_handlers(prefix)
    if dashboards is not None:
        handlers += dashboard_handlers(prefix)
    if unattended is not None:
        handlers += request_handlers(prefix) + runner_handlers(prefix)
        handlers += schedule_handlers(prefix)
        settings.update(
            opshub_queue=unattended.queue,
            opshub_unattended=unattended.unattended,
            opshub_runner=unattended.runner,
            opshub_scheduler=unattended.scheduler,
            opshub_run_events=unattended.events,
            opshub_alerts_token=unattended.alerts_token,
        )
    return ServiceApplication(
        handlers,
        opshub_store=store,
        opshub_prefix=prefix,
        opshub_registry=registry,
        opshub_stats=stats,
        opshub_changes=changes,
        opshub_metrics_token=metrics_token,
        opshub_known_runbooks=known_runbooks,
        opshub_dashboards=dashboards,
        opshub_templates=Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True),
        # a finished run sends its whole notebook (the store caps what it keeps): room for twice the cap
        opshub_max_body=max(MAX_BODY_BYTES, 2 * store.output_cap),
        cookie_secret=settings.pop("cookie_secret"),
        xsrf_cookies=True,
        default_handler_class=NotFoundHandler,
        **settings,
    )
