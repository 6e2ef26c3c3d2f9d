"""What every handler of the opshub service shares (like jupyterhub/handlers/base.py).

- `ServiceHandler`: the security headers of every response (the one place they and the pages' CSP
  are set), errors that name the problem (JSON for APIs, a page for people, never a traceback), and
  the one bearer-token check (Prometheus' metrics token, the dashboards' data token).
- `BaseHandler`: authenticated by the hub (`jupyterhub.services.auth`): tokens for the API, the
  hub's OAuth cookie for pages; who may see which runs; pages from the service's templates; the one
  sandboxed-HTML helper for executed notebooks (`finish_sandboxed`, `notebook_html`).
- `ApiHandler`: JSON bodies, anonymous callers refused with 403, the store's refusals as HTTP errors.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import logging
import re
import uuid
from pathlib import Path

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, check_scopes
from jupyterhub.utils import url_path_join
from markupsafe import Markup
from tornado import web

from ...contract import DELETE_SCOPE
from .. import outages
from ..models import QUEUED, RUNNER_TRIGGERS, Run
from ..outages import is_database_outage
from ..store import (
    MAX_OFFSET,
    NotRunOwner,
    RecordedByService,
    RunAlreadyFinished,
    RunConflict,
    RunNotFound,
    RunStore,
)
from ..visibility import RunVisibility
from .notebook_view import FAILED_CELL_TAG, NOTEBOOK_CSP, UnreadableNotebook, notebook_html  # noqa: F401 (theirs)

log = logging.getLogger("opshub.service")

# The service's pages: its own files and the hub's stylesheet, inline styles (page.html), nothing from
# elsewhere, framed only by pages of this origin (invariant 9 of THREAT-MODEL.md).
PAGE_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none';"
    " base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")  # a Host header fit for a CSP


def live_page_csp(host: str) -> str:
    """What Voila's page needs: its inline and evaluated scripts (widgets), blob workers, inline styles,
    data: fonts and images, and WebSockets to its own kernel on this host; nothing from elsewhere."""
    sockets = f" ws://{host} wss://{host}" if HOST.fullmatch(host) else ""
    return (
        "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; worker-src 'self' blob:;"
        " style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:;"
        f" connect-src 'self'{sockets}; object-src 'none'; base-uri 'self'; form-action 'self';"
        " frame-ancestors 'self'"
    )


# JSON nesting kept: far deeper than any notebook (notebook, cells, a cell, outputs, an output, its data,
# a mime bundle such as a Plotly or Vega figure, which nests about ten more: under 20 in all), run
# parameters or Alertmanager's webhook, and far below what the json module, nbformat or a database
# would overflow on (a RecursionError, a 500).
MAX_JSON_DEPTH = 64
# Request bodies kept: tornado's own default (so nothing that was accepted before is refused now), or
# twice the output cap when that is larger (a finished run sends its whole notebook; the store caps it).
MAX_BODY_BYTES = 100 * 1024 * 1024
NESTING = f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
NESTED_TOO_DEEPLY = f"the request {NESTING}"


def json_value(text: bytes | str, what: str = "the request body"):
    """Parsed JSON nested at most MAX_JSON_DEPTH levels; 400 naming the problem otherwise."""
    try:
        data = json.loads(text)
    except RecursionError:  # deeper than the interpreter goes: deeper than MAX_JSON_DEPTH too
        raise web.HTTPError(400, f"{what} {NESTING}") from None
    except ValueError:
        raise web.HTTPError(400, f"{what} is not JSON") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise web.HTTPError(400, f"{what} {NESTING}")
    return data


def json_depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in `value` (0 for a scalar), counted without recursion and
    stopping once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_object(body: bytes | None) -> dict:
    """A request's JSON object body ({} when empty); 400 naming the problem otherwise."""
    data = json_value(body or b"{}")
    if not isinstance(data, dict):
        raise web.HTTPError(400, "the request body must be a JSON object")
    return data


def notebook_field(value, what: str = "output_notebook"):
    """A notebook sent in a body as an object or as JSON text: the text parsed under the same bound."""
    return json_value(value, what) if isinstance(value, str) else value


def is_admin(user: dict | None) -> bool:
    """Whether the token's or cookie's user is an admin: JupyterHub's admin flag, JupyterHub's admin role
    (`admin:users`), or opshub's admin role (its scopes hold for every user, not only oneself)."""
    if not user or user.get("kind") != "user":
        return False
    scopes = user.get("scopes", [])
    return bool(user.get("admin")) or bool(check_scopes({"admin:users"}, scopes) | check_scopes({DELETE_SCOPE}, scopes))


def duration(run: Run) -> str:
    """How long a run took, as the pages show it."""
    if not run.ended_at:
        return run.status  # queued or running
    seconds = int((run.ended_at - run.started_at).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def when(value: datetime.datetime | None, exact: bool = False) -> Markup:
    """A time as the pages show it: `<time>` in UTC, which the page's script (static/live.js) shows in the
    viewer's zone, relative ("3 h ago", exact on hover) or, `exact`, as a date and time (relative on hover)."""
    if value is None:
        return Markup("")
    utc = value.astimezone(datetime.UTC) if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    mode = ' data-exact=""' if exact else ""
    return Markup('<time datetime="{}"{}>{} UTC</time>').format(
        utc.isoformat(timespec="seconds").replace("+00:00", "Z"), Markup(mode), utc.strftime("%Y-%m-%d %H:%M:%S")
    )


def started(run: Run) -> str | Markup:
    """When a run started, as the run page shows it: a queued run has not, and an unattended run the
    runner never had (cancelled while queued, a missed or refused fire) never did."""
    if run.status == QUEUED:
        return "not yet"
    if run.trigger in RUNNER_TRIGGERS and run.runner_server is None:
        return "never"
    return when(run.started_at, exact=True)


def parse_time(name: str, value: str) -> datetime.datetime:
    """A query argument's ISO 8601 time, in UTC (naive times are taken as UTC); 400 otherwise."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.astimezone(datetime.timezone.utc)  # overflows here for times at the calendar's edges
    except (ValueError, OverflowError):
        raise web.HTTPError(400, f"{name} must be an ISO 8601 time, not {value!r}") from None


def int_argument(handler: web.RequestHandler, name: str, default: int) -> int:
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


class ServiceHandler(web.RequestHandler):
    """What every response of the service shares: security headers, and errors that name the problem
    (JSON for APIs, a page for people), never a traceback."""

    api = True  # errors as JSON; pages say False

    def set_default_headers(self) -> None:
        # also after an error: tornado's send_error clears the headers back to these
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        self.set_header("X-Content-Type-Options", "nosniff")

    def log_exception(self, typ, value, tb) -> None:
        if is_database_outage(value):  # logged once per outage, not a traceback per request
            outages.database.failed(value)
            return
        if isinstance(value, RecursionError):  # input nested deeper than anything parses: a 400 (write_error)
            log.warning("%s %s: %s", self.request.method, self.request.path, NESTED_TOO_DEEPLY)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, RecursionError):
            # JSON text inside a field (a notebook as a string) nested deeper than the bounded body
            # parser sees: the caller's problem, never a 500
            status_code, exc = 400, web.HTTPError(400, NESTED_TOO_DEEPLY)
            self.set_status(status_code)
        if is_database_outage(exc):
            status_code, exc = 503, web.HTTPError(503, outages.database.message)
            self.set_status(status_code)
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

    def check_bearer(self, token: str, refusal: str) -> None:
        """401 with `refusal` unless the request sends `Authorization: Bearer <token>`, for callers that
        hold a secret rather than a hub identity. An empty token lets nobody in."""
        sent = self.request.headers.get("Authorization", "")
        if not token or not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise web.HTTPError(401, refusal)


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
            duration=duration,
            started=started,
            when=when,
            xsrf_token=self.xsrf_token.decode() if user else "",  # forms that post (requests, cancel)
            outages=self.outages(),
            live_seq=self.settings["opshub_changes"].seq,  # what the page shows: its script asks what changed since
            **namespace,
        )

    def outages(self) -> list[str]:
        """What the service cannot reach now, said on every page (the pages show what it had before)."""
        unattended = self.settings.get("opshub_unattended")
        catalog = unattended.catalog if unattended is not None else None
        found = [outages.database.message] if outages.database.active else []
        return found + ([catalog.unreachable] if catalog is not None and catalog.unreachable else [])

    def finish_sandboxed(self, render, what: str, policy: str = NOTEBOOK_CSP) -> None:
        """Serve an executed notebook's HTML under a sandbox policy of notebook_view (the one place they
        are set)."""
        try:
            html = render()
        except UnreadableNotebook as e:
            raise web.HTTPError(422, f"the recorded notebook of {what} cannot be shown: {e}") from None
        self.set_header("Content-Security-Policy", policy)
        self.finish(html)

    def error_page(self, status_code: int, message: str) -> str:
        try:
            return self.page_html("error.html", status=status_code, message=message, nav=getattr(self, "nav", None))
        except Exception:  # the hub cannot be asked who this is: a page without the name
            log.exception("error page for %s", self.request.path)
            return super().error_page(status_code, message)

    def visibility(self) -> RunVisibility:
        """Which runs this person may see (visibility.py): runbooks of dashboards restricted to groups
        they are not in show only their own runs (Dashboards.hidden_runbooks); nothing hidden without dashboards."""
        dashboards = self.settings.get("opshub_dashboards")
        hidden = dashboards.hidden_runbooks(self.current_user) if dashboards is not None else ()
        return RunVisibility.of(self.current_user["name"], hidden)

    def run_or_404(self, run_id: str) -> Run:
        """The run, if this person may see it: 404 for an unknown or malformed id, 403 for a restricted one."""
        try:
            uuid.UUID(run_id)
        except ValueError:
            raise web.HTTPError(404, f"no run with id {run_id!r}: run ids are UUIDs") from None
        run = self.store.get_run(run_id)
        if run is None:
            raise web.HTTPError(404, f"no run with id {run_id!r}")
        visibility = self.visibility()
        if not visibility.sees(run.runbook, run.user):
            raise web.HTTPError(403, f"run {run_id}: {visibility.refusal(run.runbook)}")
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


class BodyTooLarge(ServiceHandler):
    """The answer to a request whose body is over the limit (app.BoundedBodies routes it here once the
    body has been read and dropped): 413 naming the limit, JSON for the API, a page otherwise."""

    def initialize(self, limit: int, size: int | None) -> None:
        self.limit, self.size = limit, size

    def check_xsrf_cookie(self) -> None:
        return None  # nothing is done with the request: the refusal is the same for everyone

    def prepare(self):
        self.api = self.request.path.startswith(url_path_join(self.settings["opshub_prefix"], "api/"))
        size = f"{self.size:,} bytes" if self.size is not None else f"more than {self.limit:,} bytes"
        raise web.HTTPError(
            413,
            f"the request body is {size}: the opshub service takes at most {self.limit:,} bytes"
            f" ({self.limit // (1024 * 1024)} MiB) in one request",
        )


class ApiHandler(BaseHandler):
    api = True

    def prepare(self):
        # An API answers anonymous callers with 403, not with a redirect to a login page.
        if self.current_user is None:
            raise web.HTTPError(403, "authentication required: send a JupyterHub token (Authorization: token ...)")

    def body(self) -> dict:
        return json_object(self.request.body)

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
        except (NotRunOwner, RecordedByService) as e:
            raise web.HTTPError(403, str(e)) from None
        except (RunAlreadyFinished, RunConflict) as e:
            raise web.HTTPError(409, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None


class OAuthCallbackHandler(HubOAuthCallbackHandler, ServiceHandler):
    """The end of the hub's OAuth login, with the service's headers and error pages."""

    api = False


class PageScript(ServiceHandler):
    """The script of every page (static/live.js: it holds nothing of anyone's)."""

    api = False
    PATH = Path(__file__).resolve().parent.parent / "static" / "live.js"

    def get(self):
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.PATH.read_bytes())


def base_handlers(prefix: str) -> list[tuple]:
    """The end of every page's login (history and dashboards alike), and every page's script."""
    return [
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
        (url_path_join(prefix, "static/live.js"), PageScript),
    ]
