"""The opshub hub service: the run history API at /services/opshub/.

A JupyterHub service authenticated by the hub (`jupyterhub.services.auth`): tokens for the API,
the hub's OAuth cookie for pages. Who records, reads or deletes is always the identity of the
token; RBAC scopes decide what they may do:

- `access:services!service=opshub`: read the history (every role, viewers included)
- `custom:opshub:runs:record`: record one's own runs (operators, authors, admins)
- `custom:opshub:runs:delete`: delete runs (admins)

A person's token reports only `headless` and `interactive` runs, and each record says who reported it
and how it reached the service. Runs of a runbook whose dashboard is restricted to groups are shown
only to those groups, admins and whoever ran them (hub/docs/dashboards.md). Every response carries a
Content-Security-Policy and X-Frame-Options; errors name the problem, as JSON for APIs and as a page
for people, never with a traceback.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import logging
import uuid
from pathlib import Path
from urllib.parse import urlencode

import nbformat
from jinja2 import Environment, FileSystemLoader
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, check_scopes
from jupyterhub.utils import url_path_join
from nbconvert import HTMLExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import web

from .metrics import RunMetrics
from .models import REPORTED_TRIGGERS, STATUSES, TRIGGERS, Run
from .stats import RunStats
from .store import MAX_OFFSET, NotRunOwner, RunAlreadyFinished, RunConflict, RunNotFound, RunStore

log = logging.getLogger("opshub.service")

TEMPLATES = Path(__file__).resolve().parent / "templates"
FAILED_CELL_TAG = "opshub-failed-cell"
RECORD_SCOPE = "custom:opshub:runs:record"
DELETE_SCOPE = "custom:opshub:runs:delete"

# The service's pages: its own files and the hub's stylesheet, inline styles (page.html), nothing from
# elsewhere, framed only by pages of this origin (invariant 9 of THREAT-MODEL.md).
PAGE_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none';"
    " base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
# Executed notebooks hold whatever the runbook printed, HTML included: sandboxed (no scripts, an opaque
# origin of their own, so they can never act as the person viewing them), styles and inline images only.
NOTEBOOK_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def is_admin(user: dict | None) -> bool:
    """Whether the token's or cookie's user is an admin: JupyterHub's admin flag, JupyterHub's admin role
    (`admin:users`), or opshub's admin role (its scopes hold for every user, not only oneself)."""
    if not user or user.get("kind") != "user":
        return False
    scopes = user.get("scopes", [])
    return bool(user.get("admin")) or bool(check_scopes({"admin:users"}, scopes) | check_scopes({DELETE_SCOPE}, scopes))


def run_json(run: Run, prefix: str, with_output: bool = False) -> dict:
    data = {
        "id": run.id,
        "runbook": run.runbook,
        "runbook_commit": run.runbook_commit,
        "drift": run.drift,
        "trigger": run.trigger,
        "user": run.user,
        "parameters": run.parameters,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "last_heartbeat_at": run.last_heartbeat_at.isoformat(),
        "failed_cell": run.failed_cell,
        "error_summary": run.error_summary,
        "output_truncated": run.output_truncated,
        "reported_by": run.reported_by,
        "reported_from": run.reported_from,
        "url": url_path_join(prefix, "runs", run.id),
    }
    if with_output:
        data["output_notebook"] = json.loads(run.output_notebook) if run.output_notebook else None
    return data


class ServiceHandler(web.RequestHandler):
    """What every response of the service shares: security headers, and errors that name the problem
    (JSON for APIs, a page for people), never a traceback."""

    api = True  # errors as JSON; pages say False

    def set_default_headers(self) -> None:
        # also after an error: tornado's send_error clears the headers back to these
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        if self.api:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": status_code, "message": message, "error": message}))
        else:
            self.finish(self.error_page(status_code, message))

    def error_page(self, status_code: int, message: str) -> str:
        template = self.settings["opshub_templates"].get_template("error.html")
        prefix = self.settings["opshub_prefix"]
        return template.render(prefix=prefix, hub_prefix="/hub/", user_name="", status=status_code, message=message)


class BaseHandler(HubOAuthenticated, ServiceHandler):
    api = False

    @property
    def store(self) -> RunStore:
        return self.settings["opshub_store"]

    @property
    def prefix(self) -> str:
        return self.settings["opshub_prefix"]

    def check_xsrf_cookie(self):
        """Skip the XSRF check only when a token authenticated the request.

        Tornado checks before prepare(), when nobody has asked yet who the caller is: ask now. The hub's
        auth tries the Authorization token first (and sets `_token_authenticated` when it holds), then
        the cookie, for which it calls this method again: by then `_cached_hub_user` is set, so the
        cookie gets the real check. A header that authenticates nothing does not switch it off.
        """
        if not hasattr(self, "_cached_hub_user"):
            self.current_user  # noqa: B018 (authenticates, token first)
        if getattr(self, "_token_authenticated", False):
            return None
        return super().check_xsrf_cookie()

    def render_page(self, template: str, **namespace) -> None:
        self.finish(self.page_html(template, **namespace))

    def page_html(self, template: str, **namespace) -> str:
        user = self.current_user
        page = self.settings["opshub_templates"].get_template(template)
        return page.render(
            prefix=self.prefix,
            hub_prefix=self.hub_auth.hub_prefix,
            user_name=user["name"] if user else "",
            duration=_duration,
            **namespace,
        )

    def finish_sandboxed(self, render, what: str) -> None:
        """Serve an executed notebook's HTML under the sandbox policy (the one place it is set)."""
        try:
            html = render()
        except UnreadableNotebook as e:
            raise web.HTTPError(422, f"the recorded notebook of {what} cannot be shown: {e}") from None
        self.set_header("Content-Security-Policy", NOTEBOOK_CSP)
        self.finish(html)

    def error_page(self, status_code: int, message: str) -> str:
        try:
            return self.page_html("error.html", status=status_code, message=message, nav=getattr(self, "nav", None))
        except Exception:  # the hub cannot be asked who this is: a page without the name
            log.exception("error page for %s", self.request.path)
            return super().error_page(status_code, message)

    def hidden_runbooks(self) -> frozenset[str]:
        """Runbooks whose runs this person may not see: those of dashboards restricted to groups they
        are not in (see Dashboards.hidden_runbooks); nothing without dashboards."""
        dashboards = self.settings.get("opshub_dashboards")
        return dashboards.hidden_runbooks(self.current_user) if dashboards is not None else frozenset()

    def run_or_404(self, run_id: str) -> Run:
        """The run, if this person may see it: 404 for an unknown or malformed id, 403 for a restricted one."""
        try:
            uuid.UUID(run_id)
        except ValueError:
            raise web.HTTPError(404, f"no run with id {run_id!r}: run ids are UUIDs") from None
        run = self.store.get_run(run_id)
        if run is None:
            raise web.HTTPError(404, f"no run with id {run_id!r}")
        if run.runbook in self.hidden_runbooks() and run.user != self.current_user["name"]:
            raise web.HTTPError(
                403,
                f"run {run_id} is of {run.runbook}, whose dashboard is restricted to groups"
                f" {self.current_user['name']} is not in",
            )
        return run

    def user_name(self) -> str:
        """The person behind the token. Services' tokens cannot record or delete runs."""
        model = self.current_user
        if model.get("kind") != "user":
            raise web.HTTPError(403, "only people record runs, not services")
        return model["name"]

    def require(self, scope: str) -> str:
        """The user's name, if their token holds `scope` for themselves; 403 otherwise."""
        name = self.user_name()
        if not check_scopes({f"{scope}!user={name}"}, self.current_user.get("scopes", [])):
            raise web.HTTPError(403, f"{name} may not do this: it needs the {scope} permission")
        return name


class NotFoundHandler(BaseHandler):
    """Any path the service does not serve: a 404 with the service's headers and error page."""

    def prepare(self):
        self.api = self.request.path.startswith(url_path_join(self.prefix, "api/"))
        raise web.HTTPError(404, f"nothing at {self.request.path}")


class ApiHandler(BaseHandler):
    api = True

    def prepare(self):
        # An API answers anonymous callers with 403, not with a redirect to a login page.
        if self.current_user is None:
            raise web.HTTPError(403, "authentication required: send a JupyterHub token (Authorization: token ...)")

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def reported_from(self) -> str:
        """How the record reached the service, as far as the service can tell: the kind of credential,
        the address the connection came from and, when that is a proxy (the hub's adds X-Forwarded-For),
        the address it says it forwarded for. Earlier X-Forwarded-For entries are the client's own claims:
        left out."""
        how = "API token" if getattr(self, "_token_authenticated", False) else "browser session"
        peer = self.request.remote_ip
        forwarded = self.request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        try:
            forwarded = str(ipaddress.ip_address(forwarded))
        except ValueError:
            forwarded = ""
        where = f"{forwarded} via {peer}" if forwarded and forwarded != peer else peer
        return f"{how} from {where}"[:255]

    def store_call(self, method, *args, **kwargs):
        """Call the store, turning its refusals into HTTP errors that name the problem."""
        try:
            return method(*args, **kwargs)
        except RunNotFound as e:
            raise web.HTTPError(404, str(e)) from None
        except NotRunOwner as e:
            raise web.HTTPError(403, str(e)) from None
        except (RunAlreadyFinished, RunConflict) as e:
            raise web.HTTPError(409, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None


class RunsHandler(ApiHandler):
    @web.authenticated
    def get(self):
        args = {key: self.get_argument(key, None) for key in ("runbook", "user", "status", "trigger")}
        for key in ("since", "until"):
            value = self.get_argument(key, None)
            args[key] = _parse_time(key, value) if value else None
        args["limit"] = _int_argument(self, "limit", 50)
        args["offset"] = _int_argument(self, "offset", 0)
        hidden = {"hidden_runbooks": self.hidden_runbooks(), "viewer": self.current_user["name"]}
        runs, total = self.store_call(self.store.list_runs, **args, **hidden)
        self.write({"runs": [run_json(r, self.prefix) for r in runs], "total": total})

    @web.authenticated
    def post(self):
        user = self.require(RECORD_SCOPE)
        body = self.body()
        unknown = set(body) - {"id", "runbook", "trigger", "parameters", "runbook_commit", "drift"}
        if unknown:
            raise web.HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))} (the user comes from the token)")
        if not isinstance(body.get("parameters", {}), dict):
            raise web.HTTPError(400, "parameters must be a JSON object")
        trigger = body.get("trigger", "headless")
        if trigger not in REPORTED_TRIGGERS:
            allowed = " or ".join(REPORTED_TRIGGERS)
            if not isinstance(trigger, str) or trigger not in TRIGGERS:
                raise web.HTTPError(400, f"trigger must be one of {', '.join(REPORTED_TRIGGERS)}, not {trigger!r}")
            raise web.HTTPError(
                403,
                f"a person's token reports only {allowed} runs, not {trigger!r}:"
                f" {trigger} runs are recorded by the opshub service itself",
            )
        run = self.store_call(
            self.store.start_run,
            runbook=body.get("runbook"),
            user=user,
            trigger=trigger,
            parameters=body.get("parameters") or {},
            runbook_commit=body.get("runbook_commit"),
            drift=bool(body.get("drift", False)),
            run_id=body.get("id"),
            reported_by=user,
            reported_from=self.reported_from(),
        )
        if run.id in self.settings["opshub_stats"].running or run.finished:
            # the same start sent again by a client that spools runs (its first answer was lost)
            self.write(run_json(run, self.prefix))
            return
        self.settings["opshub_stats"].started(run)
        log.info("run %s of %s started by %s (%s)", run.id, run.runbook, user, run.trigger)
        self.set_status(201)
        self.write(run_json(run, self.prefix))


class RunHandler(ApiHandler):
    @web.authenticated
    def get(self, run_id):
        self.write(run_json(self.run_or_404(run_id), self.prefix, with_output=True))

    @web.authenticated
    def delete(self, run_id):
        user = self.require(DELETE_SCOPE)
        self.run_or_404(run_id)  # admins see every run: this only refuses malformed and unknown ids
        if not self.store.delete_run(run_id):
            raise web.HTTPError(404, f"no run with id {run_id!r}")
        self.settings["opshub_stats"].reload(self.store)
        log.info("run %s deleted by %s", run_id, user)
        self.set_status(204)


class HeartbeatHandler(ApiHandler):
    @web.authenticated
    def post(self, run_id):
        user = self.require(RECORD_SCOPE)
        body = self.body()
        self.run_or_404(run_id)
        self.store_call(self.store.heartbeat, run_id, user, body.get("output_notebook"), body.get("drift") is True)
        self.write(run_json(self.store.get_run(run_id), self.prefix))


class FinishHandler(ApiHandler):
    @web.authenticated
    def post(self, run_id):
        user = self.require(RECORD_SCOPE)
        body = self.body()
        self.run_or_404(run_id)
        run = self.store_call(
            self.store.finish_run,
            run_id,
            user,
            body.get("status"),
            failed_cell=body.get("failed_cell"),
            error_summary=body.get("error_summary"),
            output_notebook=body.get("output_notebook"),
            drift=body.get("drift") is True,
        )
        self.settings["opshub_stats"].ended(run)
        log.info("run %s of %s ended %s", run.id, run.runbook, run.status)
        self.write(run_json(run, self.prefix))


class HistoryPage(BaseHandler):
    """The run history: filters, newest first, PAGE_SIZE runs a page."""

    PAGE_SIZE = 50

    @web.authenticated
    def get(self):
        filters = {key: self.get_argument(key, "") or None for key in ("runbook", "user", "status", "trigger")}
        dates = {key: self.get_argument(key, "") or None for key in ("since", "until")}
        offset = _int_argument(self, "offset", 0)
        hidden = {"hidden_runbooks": self.hidden_runbooks(), "viewer": self.current_user["name"]}
        error = None
        try:
            args = {key: _parse_time(key, value) if value else None for key, value in dates.items()}
            runs, total = self.store.list_runs(**filters, **args, **hidden, limit=self.PAGE_SIZE, offset=offset)
        except (ValueError, web.HTTPError) as e:
            error = getattr(e, "log_message", None) or str(e)
            runs, total = [], 0

        def page_url(new_offset: int) -> str:
            query = {k: v for k, v in {**filters, **dates}.items() if v}
            if new_offset:
                query["offset"] = new_offset
            return self.prefix + ("?" + urlencode(query) if query else "")

        known = sorted(self.settings["opshub_known_runbooks"]())
        self.render_page(
            "runs.html",
            runs=runs,
            total=total,
            offset=offset,
            error=error,
            filters={**filters, **dates},
            selects=[
                ("runbook", "Runbook", known if filters["runbook"] in (None, *known) else [*known, filters["runbook"]]),
                ("status", "Status", STATUSES),
                ("trigger", "Trigger", TRIGGERS),
            ],
            previous_url=page_url(max(offset - self.PAGE_SIZE, 0)) if offset else None,
            next_url=page_url(offset + self.PAGE_SIZE) if offset + self.PAGE_SIZE < total else None,
        )


class RunPage(BaseHandler):
    @web.authenticated
    def get(self, run_id):
        run = self.run_or_404(run_id)
        self.render_page("run.html", run=run, has_output=bool(run.output_notebook))


class RunNotebookPage(BaseHandler):
    """The executed notebook as HTML (nbconvert), with the failing cell highlighted.

    Outputs are whatever the runbook printed, HTML included, so the page is served sandboxed:
    no scripts, and an origin of its own, so it can never act as the person viewing it.
    """

    @web.authenticated
    def get(self, run_id):
        run = self.run_or_404(run_id)
        if not run.output_notebook:
            raise web.HTTPError(404, f"no recorded output for run {run_id!r}")
        self.finish_sandboxed(lambda: notebook_html(run.output_notebook, run.failed_cell), f"run {run_id}")


class UnreadableNotebook(ValueError):
    """A recorded notebook nbconvert cannot render; the message says why."""


def notebook_html(notebook_json: str, failed_cell: int | None) -> str:
    """The executed notebook as HTML, the failing cell tagged (the recorder may have tagged it already)."""
    try:
        notebook = nbformat.reads(notebook_json, as_version=4)
        for cell in notebook.cells:
            # nbformat wants each tag once: a reporter's notebook may repeat them
            tags = cell.metadata.get("tags")
            if isinstance(tags, list):
                cell.metadata["tags"] = list(dict.fromkeys(tag for tag in tags if isinstance(tag, str)))
        if failed_cell is not None and 0 <= failed_cell < len(notebook.cells):
            tags = notebook.cells[failed_cell].metadata.setdefault("tags", [])
            if FAILED_CELL_TAG not in tags:
                tags.append(FAILED_CELL_TAG)
        html, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    except Exception as e:  # whatever a malformed notebook makes nbformat or nbconvert raise
        raise UnreadableNotebook(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    highlight = (
        f"<style>.celltag_{FAILED_CELL_TAG} {{ outline: 3px solid #dc3545; outline-offset: 4px; }}"
        f" .celltag_{FAILED_CELL_TAG}::before {{ content: 'This cell failed'; color: #dc3545; font-weight: bold; }}</style>"
    )
    return html.replace("</head>", highlight + "</head>", 1)


def _duration(run: Run) -> str:
    if not run.ended_at:
        return "running"
    seconds = int((run.ended_at - run.started_at).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class MetricsHandler(ServiceHandler):
    """Prometheus exposition, for whoever holds the metrics bearer token (Prometheus' `authorization`)."""

    def get(self):
        token = self.settings["opshub_metrics_token"]
        sent = self.request.headers.get("Authorization", "")
        if not token or not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="opshub metrics"')
            raise web.HTTPError(401, "send the metrics bearer token")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.settings["opshub_registry"]))


def _parse_time(name: str, value: str) -> datetime.datetime:
    try:
        parsed = datetime.datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.astimezone(datetime.timezone.utc)  # overflows here for times at the calendar's edges
    except (ValueError, OverflowError):
        raise web.HTTPError(400, f"{name} must be an ISO 8601 time, not {value!r}") from None


def _int_argument(handler: web.RequestHandler, name: str, default: int) -> int:
    """A whole number from 0 to what the database can count (offsets, limits)."""
    value = handler.get_argument(name, None)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise web.HTTPError(400, f"{name} must be a whole number, not {value!r}") from None
    if not 0 <= number <= MAX_OFFSET:
        raise web.HTTPError(400, f"{name} must be between 0 and {MAX_OFFSET}, not {value}")
    return number


class OAuthCallbackHandler(HubOAuthCallbackHandler, ServiceHandler):
    """The end of the hub's OAuth login, with the service's headers and error pages."""

    api = False


def make_app(
    store: RunStore,
    prefix: str,
    stats: RunStats | None = None,
    known_runbooks=frozenset,
    metrics_token: str = "",
    extra_handlers: list[tuple] = (),
    **settings,
) -> web.Application:
    """The service's tornado application, serving under `prefix` (/services/opshub/).

    `known_runbooks()` returns the runbooks of the repository (metric labels); `metrics_token` is
    the bearer token Prometheus sends (empty: no metrics); `extra_handlers` and `opshub_dashboards`
    (a dashboards.Dashboards) add the published dashboards' routes and registry (the service's
    __main__ wires them: dashboards.py builds on this module, not the other way round).
    """
    stats = stats if stats is not None else RunStats.from_store(store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunMetrics(stats, known_runbooks))
    handlers = [
        (prefix, HistoryPage),
        (url_path_join(prefix, r"runs/([^/]+)"), RunPage),
        (url_path_join(prefix, r"runs/([^/]+)/notebook"), RunNotebookPage),
        (url_path_join(prefix, "metrics"), MetricsHandler),
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
        (url_path_join(prefix, "api/runs"), RunsHandler),
        (url_path_join(prefix, r"api/runs/([^/]+)"), RunHandler),
        (url_path_join(prefix, r"api/runs/([^/]+)/heartbeat"), HeartbeatHandler),
        (url_path_join(prefix, r"api/runs/([^/]+)/finish"), FinishHandler),
    ]
    handlers += list(extra_handlers)
    return web.Application(
        handlers,
        opshub_store=store,
        opshub_prefix=prefix,
        opshub_registry=registry,
        opshub_stats=stats,
        opshub_metrics_token=metrics_token,
        opshub_known_runbooks=known_runbooks,
        opshub_templates=Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True),
        cookie_secret=settings.pop("cookie_secret"),
        xsrf_cookies=True,
        default_handler_class=NotFoundHandler,
        **settings,
    )


__all__ = ["DELETE_SCOPE", "RECORD_SCOPE", "STATUSES", "TRIGGERS", "is_admin", "make_app", "run_json"]
