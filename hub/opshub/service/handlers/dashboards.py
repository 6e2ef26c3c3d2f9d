"""The dashboards' handlers under /services/opshub/: the API (`api/dashboards`: list, publish, unpublish),
the pages (`dashboards/`: the list, a live page streamed from Voila, a snapshot), the relays to the
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
        """The latest finished run a snapshot shows, if its runbook's runs are not restricted for this person."""
        run = self.dashboards.latest_run(dashboard.runbook) if dashboard.mode == "snapshot" else None
        visibility = self.visibility()
        if run is not None and not visibility.sees(run.runbook, run.user):
            raise web.HTTPError(403, visibility.refusal(dashboard.runbook))
        return run


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
    @web.authenticated
    def get(self):
        rows = []
        visibility = self.visibility()
        for dashboard in self.dashboards.all():
            if not self.dashboards.may_view(self.current_user, dashboard):
                continue
            run = self.dashboards.latest_run(dashboard.runbook) if dashboard.mode == "snapshot" else None
            if run is not None and not visibility.sees(run.runbook, run.user):
                run = None  # restricted by another dashboard of the same runbook
            rows.append((dashboard, run))
        self.render_page("dashboards.html", nav="dashboards", rows=rows)


class DashboardPage(DashboardPageBase):
    """A dashboard's stable URL: the live page from Voila, or the snapshot of the latest run."""

    @web.authenticated
    async def get(self, name):
        dashboard = self.visible_or_error(name)
        self.xsrf_token  # noqa: B018 (sets the _xsrf cookie: Voila's page sends it when it stops its kernel)
        if dashboard.mode == "snapshot":
            run = self.visible_run(dashboard)
            self.render_page("dashboard_snapshot.html", nav="dashboards", dashboard=dashboard, run=run)
            return
        await self.live(dashboard)

    async def live(self, dashboard: Dashboard) -> None:
        dashboards = self.dashboards
        try:
            await dashboards.backend.ensure_running()
            await asyncio.wait_for(dashboards.backend.ready.wait(), timeout=60)
        except (RuntimeError, asyncio.TimeoutError):
            raise web.HTTPError(503, "live dashboards are starting or down: try again in a minute") from None
        pending = {"text": "", "found": False}

        def on_headers(line: str) -> None:
            if line.startswith("HTTP/"):
                self.set_status(int(line.split()[1]))

        head = {"buffer": b"", "done": False}

        def on_chunk(chunk: bytes) -> None:
            if not pending["found"]:
                pending["text"] += chunk.decode(errors="ignore")
                match = KERNEL_ID.search(pending["text"])
                if match:
                    dashboards.remember_kernel(match.group(1), dashboard.name)
                    pending.update(found=True, text="")
            if not head["done"]:
                # Voila's template links stylesheets from a public CDN: pages fetch nothing from the
                # internet (air-gapped sites), so the head goes out without them
                head["buffer"] += chunk
                end = head["buffer"].find(b"</head>")
                if end < 0:
                    return
                chunk = EXTERNAL_LINK.sub(b"", head["buffer"][:end]) + head["buffer"][end:]
                head["done"] = True
            self.write(chunk)
            self.flush()

        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", live_page_csp(self.request.host))
        try:
            response = await dashboards.backend.fetch(
                dashboards.backend.base_url + f"voila/render/{dashboard.name}/{dashboard.name}.ipynb",
                header_callback=on_headers,
                streaming_callback=on_chunk,
                request_timeout=600,
                raise_error=False,
            )
        except OSError as e:
            raise web.HTTPError(502, f"the dashboard backend did not answer: {e}") from None
        if response.code == 599 and not self._headers_written:
            raise web.HTTPError(502, f"the dashboard backend did not answer: {response.error}")
        if not head["done"]:
            self.write(EXTERNAL_LINK.sub(b"", head["buffer"]))
        self.finish()


class SnapshotNotebook(DashboardMixin, BaseHandler):
    """The snapshot's executed notebook, sandboxed like the run pages' (no scripts, own origin)."""

    @web.authenticated
    def get(self, name):
        dashboard = self.visible_or_error(name)
        run = self.visible_run(dashboard)
        if run is None or not run.output_notebook:
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
    """

    def get(self):
        self.check_bearer(self.settings["opshub_dashboards"].data_token, "send the dashboards' data token")
        runbook = self.get_argument("runbook", None)
        try:
            limit = min(max(int(self.get_argument("limit", "200")), 1), 1000)
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        runs, total = self.settings["opshub_store"].list_runs(runbook=runbook, limit=limit)
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
        (url_path_join(base, r"([a-z0-9-]+)"), web.RedirectHandler, {"url": base + "/{0}/"}),
    ]
