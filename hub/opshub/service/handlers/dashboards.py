"""The dashboards' handlers under /services/opshub/: the API (`api/dashboards`: list, publish, unpublish),
the pages (`dashboards/`: the list with each dashboard's health and, for authors and admins, the publish
form and the unpublish confirm step; a live page from Voila under opshub's header, or the page for
viewers when it is broken or waiting for its files; a snapshot), the relays to the
dashboards server (Voila's assets, a page's own kernel: its model, its shutdown, its websocket through
the message filter of voila.py), and the data API that live dashboards' kernels read run summaries from.

What may be published and who may see it is the registry's business (service/dashboards.py); these
handlers ask it and answer.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re

from jupyterhub.services.auth import HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from ...contract import PUBLISH_SCOPE
from ...dashboards_backend import WAITING
from ..dashboard_health import failed_cell_source, voila_failure
from ..dashboards import Dashboards, PublishError, valid_name
from ..models import Dashboard, Run
from ..voila import UUID, KernelSocketProxy, VoilaBackend
from .base import ApiHandler, BaseHandler, ServiceHandler, is_admin, live_page_csp

log = logging.getLogger("opshub.service.dashboards")

KERNEL_ID = re.compile(rf'"kernelId":\s*"({UUID})"')
# A stylesheet or script from another site (Voila's templates link Font Awesome from a CDN).
EXTERNAL_LINK = re.compile(rb"<link\b[^>]*\bhref=[\"'](?:https?:)?//[^\"']*[\"'][^>]*>\s*", re.I)
# What a live dashboard page may fetch from the backend: Voila's own static files, never notebooks
# (no files, tree, render or contents routes) nor the kernels API.
ASSET = re.compile(r"^voila/(static|templates|labextensions|api/themes)/[A-Za-z0-9_@.+/-]*$")
BODY_TAG = re.compile(rb"<body\b[^>]*>", re.I)


def dashboard_json(dashboard: Dashboard, prefix: str) -> dict:
    return {
        "name": dashboard.name,
        "mode": dashboard.mode,
        "title": dashboard.title,
        "description": dashboard.description,
        "groups": dashboard.groups,
        "owner": dashboard.owner,
        "source": dashboard.source,
        "runbook": dashboard.runbook,
        "commit": dashboard.commit,
        "created_at": dashboard.created_at.isoformat(),
        "updated_at": dashboard.updated_at.isoformat(),
        "url": url_path_join(prefix, "dashboards", dashboard.name) + "/",
    }


class DashboardMixin:
    @property
    def dashboards(self) -> Dashboards:
        return self.settings["opshub_dashboards"]

    def visible_or_error(self, name: str) -> Dashboard:
        if not valid_name(name):
            raise web.HTTPError(404, f"invalid dashboard name {name!r}")
        dashboard = self.dashboards.get(name)
        if dashboard is None:
            raise web.HTTPError(404, f"no dashboard named {name!r}")
        if not self.dashboards.may_view(self.current_user, dashboard):
            raise web.HTTPError(
                403, f"{self.current_user['name']} is not in the groups that may see dashboard {name!r}"
            )
        return dashboard

    def handed_out_kernel(self, kernel_id: str, status: int = 404) -> str:
        """The dashboard whose page this kernel was handed to, if this person may see it."""
        name = self.dashboards.kernels.get(kernel_id)
        if name is None:
            raise web.HTTPError(status, "unknown kernel: it was not handed to a dashboard page")
        self.visible_or_error(name)
        return name

    def visible_run(self, dashboard: Dashboard) -> Run | None:
        """The last good run a snapshot shows, if its runbook's runs are not restricted for this person: a
        snapshot of a restricted runbook is refused whole (even with no good run yet, its page would tell
        that runs failed, and when), unless the run it shows is one this person may see (their own)."""
        if dashboard.mode != "snapshot":
            return None
        run = self.dashboards.health(dashboard).good_run
        visibility = self.visibility()
        if run is not None and visibility.sees(run.runbook, run.user):
            return run
        if run is not None or not visibility.sees_runbook(dashboard.runbook or ""):
            raise web.HTTPError(403, visibility.refusal(dashboard.runbook))
        return None

    def may_change(self, dashboard: Dashboard) -> bool:
        """Whether this person may republish or unpublish it here (the registry's rule, as a question)."""
        user = self.current_user
        if dashboard.source == "git" or not self.dashboards.may_publish(user):
            return False
        return dashboard.owner == user["name"] or is_admin(user)

    def reads_errors(self, dashboard: Dashboard) -> bool:
        """Whether this person reads why it broke: its author, admins, and authors for the repository's."""
        user = self.current_user
        if is_admin(user) or dashboard.owner == user["name"]:
            return True
        return dashboard.source == "git" and self.dashboards.may_publish(user)


class DashboardsApi(DashboardMixin, ApiHandler):
    def call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except PublishError as e:
            raise web.HTTPError(e.status, str(e)) from None


class DashboardsListApi(DashboardsApi):
    @web.authenticated
    def get(self):
        visible = [d for d in self.dashboards.all() if self.dashboards.may_view(self.current_user, d)]
        self.write({"dashboards": [dashboard_json(d, self.prefix) for d in visible]})

    @web.authenticated
    async def post(self):
        user = self.require(PUBLISH_SCOPE)
        dashboard = self.call(self.dashboards.publish, self.body(), owner=user, admin=is_admin(self.current_user))
        if dashboard.mode == "live":
            await self.dashboards.refresh_backend(f"{dashboard.name}.ipynb")
        self.set_status(201)
        self.write(dashboard_json(dashboard, self.prefix))


class DashboardApi(DashboardsApi):
    @web.authenticated
    def get(self, name):
        self.write(dashboard_json(self.visible_or_error(name), self.prefix))

    @web.authenticated
    async def delete(self, name):
        user = self.require(PUBLISH_SCOPE)
        dashboard = self.call(self.dashboards.unpublish, name, user=user, admin=is_admin(self.current_user))
        if dashboard.mode == "live":
            await self.dashboards.refresh_backend(f"{name}.ipynb")
        log.info("%s unpublished dashboard %s", user, name)
        self.set_status(204)


class DashboardPageBase(DashboardMixin, BaseHandler):
    nav = "dashboards"  # error pages lead back to the dashboards


class DashboardsPage(DashboardPageBase):
    """The list, each dashboard with its health; for authors and admins a form to publish (POST)."""

    @web.authenticated
    def get(self):
        rows = []
        visibility = self.visibility()
        for dashboard in self.dashboards.all():
            if not self.dashboards.may_view(self.current_user, dashboard):
                continue
            health = self.dashboards.health(dashboard)
            run = health.good_run
            if run is not None and not visibility.sees(run.runbook, run.user):
                run = None  # restricted by another dashboard of the same runbook
            rows.append((dashboard, health, run, self.may_change(dashboard)))
        publisher = self.dashboards.may_publish(self.current_user)
        repository = self.dashboards.repository
        runbooks = sorted(repository.catalog.names()) if publisher and repository is not None else []
        self.render_page("dashboards.html", nav="dashboards", rows=rows, publisher=publisher, runbooks=runbooks)

    @web.authenticated
    async def post(self):
        """The publish form: a runbook of the repository, as a snapshot or a live copy."""
        user = self.require(PUBLISH_SCOPE)
        groups = [g.strip() for g in self.get_body_argument("groups", "").split(",") if g.strip()]
        body = {
            "name": self.get_body_argument("name", "").strip(),
            "mode": self.get_body_argument("mode", "snapshot"),
            "runbook": self.get_body_argument("runbook", "") or None,
            "groups": groups or None,
        }
        title = self.get_body_argument("title", "").strip()
        if title:
            body["title"] = title
        try:
            dashboard = self.dashboards.publish(body, owner=user, admin=is_admin(self.current_user))
        except PublishError as e:
            raise web.HTTPError(e.status, f"not published: {e}") from None
        if dashboard.mode == "live":
            await self.dashboards.refresh_backend(f"{dashboard.name}.ipynb")
        self.redirect(url_path_join(self.prefix, "dashboards") + f"/#dashboard-{dashboard.name}", status=303)


class UnpublishPage(DashboardPageBase):
    """GET: the confirm step; POST (with confirm=yes): unpublish, for its owner or an admin."""

    def changeable(self, name: str) -> Dashboard:
        self.require(PUBLISH_SCOPE)  # viewers and operators: 403 before anything else
        dashboard = self.visible_or_error(name)
        try:
            self.dashboards.check_may_change(
                dashboard, self.current_user["name"], is_admin(self.current_user), "api", "unpublish"
            )
        except PublishError as e:
            raise web.HTTPError(e.status, str(e)) from None
        return dashboard

    @web.authenticated
    def get(self, name):
        self.render_page("dashboard_unpublish.html", nav="dashboards", dashboard=self.changeable(name))

    @web.authenticated
    async def post(self, name):
        dashboard = self.changeable(name)
        if self.get_body_argument("confirm", "") != "yes":
            raise web.HTTPError(400, "unpublishing needs confirm=yes (the confirm step's button)")
        user = self.current_user["name"]
        try:
            self.dashboards.unpublish(name, user=user, admin=is_admin(self.current_user))
        except PublishError as e:
            raise web.HTTPError(e.status, str(e)) from None
        if dashboard.mode == "live":
            await self.dashboards.refresh_backend(f"{name}.ipynb")
        log.info("%s unpublished dashboard %s from the Dashboards page", user, name)
        self.redirect(url_path_join(self.prefix, "dashboards") + "/", status=303)


class DashboardPage(DashboardPageBase):
    """A dashboard's stable URL: the live page from Voila, or the snapshot of the last good run; a page
    for viewers when it is broken or still waiting for its files."""

    @web.authenticated
    async def get(self, name):
        dashboard = self.visible_or_error(name)
        self.xsrf_token  # noqa: B018 (sets the _xsrf cookie: Voila's page sends it when it stops its kernel)
        if dashboard.mode == "snapshot":
            run = self.visible_run(dashboard)
            health = self.dashboards.health(dashboard)
            self.render_page(
                "dashboard_snapshot.html",
                nav="dashboards",
                dashboard=dashboard,
                run=run,
                health=health,
                reads_errors=self.reads_errors(dashboard),
            )
            return
        await self.live(dashboard)

    async def live(self, dashboard: Dashboard) -> None:
        dashboards = self.dashboards
        try:
            await dashboards.backend.ensure_running()
            await asyncio.wait_for(dashboards.backend.ready.wait(), timeout=60)
        except (RuntimeError, asyncio.TimeoutError):
            raise web.HTTPError(503, "live dashboards are starting or down: try again in a minute") from None
        if not dashboards.files_ready():
            self.waiting(dashboard)
            return
        # The whole page first (preheated: milliseconds), so that a failed cell shows the page for
        # viewers instead of Voila's bare error.
        try:
            response = await dashboards.backend.fetch(
                dashboards.backend.base_url + f"voila/render/{dashboard.name}/{dashboard.name}.ipynb",
                request_timeout=600,
                raise_error=False,
            )
        except OSError as e:
            raise web.HTTPError(502, f"the dashboard backend did not answer: {e}") from None
        if response.code == 599:
            raise web.HTTPError(502, f"the dashboard backend did not answer: {response.error}")
        body = response.body or b""
        if response.code == 503 and WAITING.encode() in body:
            self.waiting(dashboard)
            return
        text = body.decode(errors="replace")
        kernel = KERNEL_ID.search(text)
        failure = voila_failure(text) if response.code == 200 else f"the dashboards server answered {response.code}"
        if failure:
            if kernel:  # the page is not served: its kernel is not needed
                await dashboards.backend.fetch(
                    dashboards.backend.base_url + f"voila/api/shutdown/{kernel.group(1)}",
                    method="POST",
                    body=b"",
                    raise_error=False,
                )
            self.broken(dashboard, failure)
            return
        dashboards.record_view(dashboard.name, None)
        if kernel:
            dashboards.remember_kernel(kernel.group(1), dashboard.name)
        # Voila's template links stylesheets from a public CDN: pages fetch nothing from the internet
        # (air-gapped sites). Then opshub's header, as on every page of the service.
        end = body.find(b"</head>")
        if end >= 0:
            body = EXTERNAL_LINK.sub(b"", body[:end]) + body[end:]
            end = body.find(b"</head>")
            body_tag = BODY_TAG.search(body, end)  # the page's own <body>, after its head's scripts
            if body_tag:
                header = self.page_html("dashboard_header.html", dashboard=dashboard).encode()
                body = body[: body_tag.end()] + header + body[body_tag.end() :]
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", live_page_csp(self.request.host))
        self.finish(body)

    def waiting(self, dashboard: Dashboard) -> None:
        self.set_status(503)
        self.set_header("Retry-After", "5")
        self.set_header("Cache-Control", "no-store")
        self.render_page("dashboard_waiting.html", nav="dashboards", dashboard=dashboard)

    def broken(self, dashboard: Dashboard, failure: str) -> None:
        health = self.dashboards.record_view(dashboard.name, failure)
        reads_errors = self.reads_errors(dashboard)
        self.set_status(503)
        self.set_header("Cache-Control", "no-store")
        self.render_page(
            "dashboard_broken.html",
            nav="dashboards",
            dashboard=dashboard,
            health=health,
            reads_errors=reads_errors,
            cell_source=failed_cell_source(dashboard.notebook, failure) if reads_errors else "",
        )


class SnapshotNotebook(DashboardMixin, BaseHandler):
    """The snapshot's executed notebook, sandboxed like the run pages' (no scripts, own origin)."""

    @web.authenticated
    def get(self, name):
        dashboard = self.visible_or_error(name)
        run = self.visible_run(dashboard)
        if run is None:
            raise web.HTTPError(404, f"dashboard {name!r} has no good snapshot yet: no run of its runbook succeeded")
        if not run.output_notebook:
            raise web.HTTPError(404, f"no recorded output for dashboard {name!r}")
        self.finish_sandboxed(lambda: self.dashboards.snapshot_html(run), f"dashboard {name!r}")


class VoilaAssetProxy(DashboardMixin, BaseHandler):
    @web.authenticated
    async def get(self, path):
        if not ASSET.fullmatch(path) or ".." in path or "//" in path or path.endswith("/"):
            raise web.HTTPError(404, f"not a dashboard asset: {path}")
        backend = self.dashboards.backend
        url = backend.base_url + path + (f"?{self.request.query}" if self.request.query else "")
        response = await backend.fetch(url, raise_error=False, request_timeout=60)
        if response.code == 599:
            raise web.HTTPError(502, "the dashboard backend did not answer")
        if response.code >= 400:
            # Voila answers 500 for some paths it has no file for (template folders): to the page it is all
            # "not found", with the service's own error and headers; the backend's failures go to the log
            if response.code >= 500:
                log.warning("the dashboard backend answered %s for %s", response.code, path)
            raise web.HTTPError(404, f"no dashboard asset at {path}")
        self.set_status(response.code)
        for header in ("Content-Type", "Cache-Control", "Etag", "Last-Modified"):
            if header in response.headers:
                self.set_header(header, response.headers[header])
        self.finish(response.body or b"")


class KernelModelProxy(DashboardMixin, BaseHandler):
    """The page reads its own kernel's model (GET only: no listing, starting or deleting kernels)."""

    api = True

    @web.authenticated
    async def get(self, kernel_id):
        self.handed_out_kernel(kernel_id)
        backend = self.dashboards.backend
        response = await backend.fetch(backend.base_url + f"api/kernels/{kernel_id}", raise_error=False)
        self.set_status(response.code if response.code != 599 else 502)
        self.set_header("Content-Type", "application/json")
        self.finish(response.body or b"{}")


class KernelShutdownProxy(DashboardMixin, BaseHandler):
    """The page asks to stop its kernel when it closes (Voila's shutdown route), for its own kernel only."""

    api = True

    def check_xsrf_cookie(self):
        """Voila's page sends the `_xsrf` cookie's value as a form field (navigator.sendBeacon), read with a
        regular expression ending in \\b that drops a trailing "-": accept the token without it too."""
        if not hasattr(self, "_cached_hub_user"):
            self.current_user  # noqa: B018 (authenticates, token first: see BaseHandler.check_xsrf_cookie)
        if getattr(self, "_token_authenticated", False):
            return None
        sent = (self.get_argument("_xsrf", None) or self.request.headers.get("X-XSRFToken") or "").encode()
        expected = self.xsrf_token
        if not sent or not (hmac.compare_digest(sent, expected) or hmac.compare_digest(sent, expected.rstrip(b"-"))):
            raise web.HTTPError(403, "stopping a dashboard's kernel needs the page's XSRF token (_xsrf)")
        return None

    @web.authenticated
    async def post(self, kernel_id):
        self.handed_out_kernel(kernel_id)
        backend = self.dashboards.backend
        await backend.fetch(
            backend.base_url + f"voila/api/shutdown/{kernel_id}", method="POST", body=b"", raise_error=False
        )
        self.dashboards.kernels.pop(kernel_id, None)
        self.set_status(204)


class KernelSocket(DashboardMixin, HubOAuthenticated, KernelSocketProxy):
    @property
    def backend(self) -> VoilaBackend:
        return self.dashboards.backend

    def authorize(self, kernel_id: str) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "log in to the hub first")
        self.handed_out_kernel(kernel_id, status=403)


class DataRunsHandler(ServiceHandler):
    """Run summaries for live dashboards' kernels, read with the data token in their environment.

    No user identity and no output notebooks: exactly what a dashboard may chart, nothing to act on.
    Each run's artifacts (what its runbook published for dashboards) are outputs: the token is the same
    for every dashboard and knows no viewer, so the artifacts of runbooks restricted to groups (the
    runs their dashboards restrict, Dashboards.hidden_runbooks) are left out (None), for every caller.
    """

    def get(self):
        dashboards = self.settings["opshub_dashboards"]
        self.check_bearer(dashboards.data_token, "send the dashboards' data token")
        runbook = self.get_argument("runbook", None)
        try:
            limit = min(max(int(self.get_argument("limit", "200")), 1), 1000)
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        runs, total = self.settings["opshub_store"].list_runs(runbook=runbook, limit=limit, with_artifacts=True)
        restricted = dashboards.hidden_runbooks(None)  # hidden from someone: from a viewer nobody knows
        # trigger and reporter: a dashboard can tell what a person's server reported from what opshub did
        keys = ("id", "runbook", "user", "trigger", "reported_by", "reported_from", "parameters", "status")
        keys += ("failed_cell", "error_summary")
        self.write(
            {
                "total": total,
                "runs": [
                    {
                        **{key: getattr(run, key) for key in keys},
                        "started_at": run.started_at.isoformat(),
                        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
                        "artifacts": None if run.runbook in restricted else run.artifacts or {},
                    }
                    for run in runs
                ],
            }
        )


def dashboard_handlers(prefix: str) -> list[tuple]:
    """The dashboards' routes under the service's prefix."""
    base = url_path_join(prefix, "dashboards")
    return [
        (url_path_join(prefix, "api/dashboards"), DashboardsListApi),
        (url_path_join(prefix, r"api/dashboards/([^/]+)"), DashboardApi),
        (url_path_join(prefix, "api/dashboard-data/runs"), DataRunsHandler),
        (base + "/", DashboardsPage),
        (base, web.RedirectHandler, {"url": base + "/"}),
        (url_path_join(base, rf"-/(api/kernels/({UUID})/channels)"), KernelSocket),
        (url_path_join(base, rf"-/api/kernels/({UUID})"), KernelModelProxy),
        (url_path_join(base, rf"-/voila/api/shutdown/({UUID})"), KernelShutdownProxy),
        (url_path_join(base, r"-/(.*)"), VoilaAssetProxy),
        (url_path_join(base, r"([^/]+)/"), DashboardPage),
        (url_path_join(base, r"([^/]+)/notebook"), SnapshotNotebook),
        (url_path_join(base, r"([^/]+)/unpublish"), UnpublishPage),
        (url_path_join(base, r"([a-z0-9-]+)"), web.RedirectHandler, {"url": base + "/{0}/"}),
    ]
