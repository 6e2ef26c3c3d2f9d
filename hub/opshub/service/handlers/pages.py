"""The run history's pages: the list with its filters, a run, a run's executed notebook (sandboxed).

Runs of a runbook whose dashboard is restricted to groups are shown only to those groups, admins and
whoever ran them (hub/docs/dashboards.md).
"""

from __future__ import annotations

from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from tornado import web

from ..audit import Audit
from ..models import RUNNER_TRIGGERS, STATUSES, TRIGGERS
from ..run_filters import parameter_filter
from .base import BaseHandler, int_argument, notebook_html, parse_time


class HistoryPage(BaseHandler):
    """The run history: filters, newest first, PAGE_SIZE runs a page."""

    PAGE_SIZE = 50

    @web.authenticated
    def get(self):
        filters = {key: self.get_argument(key, "") or None for key in ("runbook", "status", "trigger")}
        # `user` is part of a name (any case); `param` is NAME=VALUE (stack=web, dry_run=false)
        searches = {key: self.get_argument(key, "").strip() or None for key in ("user", "param")}
        dates = {key: self.get_argument(key, "") or None for key in ("since", "until")}
        offset = int_argument(self, "offset", 0)
        hidden = {"visible_to": self.visibility()}
        error = None
        try:
            args = {key: parse_time(key, value) if value else None for key, value in dates.items()}
            args |= {"user_contains": searches["user"], "parameter": parameter_filter(searches["param"])}
            runs, total = self.store.list_runs(**filters, **args, **hidden, limit=self.PAGE_SIZE, offset=offset)
        except (ValueError, web.HTTPError) as e:
            error = getattr(e, "log_message", None) or str(e)
            runs, total = [], 0

        def page_url(new_offset: int) -> str:
            query = {k: v for k, v in {**filters, **searches, **dates}.items() if v}
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
            filters={**filters, **searches, **dates},
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
        audit = Audit(self.store)
        self.render_page(
            "run.html",
            run=run,
            has_output=bool(run.output_notebook),
            defaults=self.defaults(run),
            events=audit.of_run(run.id),
            notifications=audit.notifications_of(run.id),
        )

    def defaults(self, run) -> dict[str, str]:
        """The defaults that applied to an unattended run recorded with only the values given (before runs
        recorded every value): read from the runbook at the run's commit. None for people's runs."""
        unattended = self.settings.get("opshub_unattended")
        if unattended is None or run.trigger not in RUNNER_TRIGGERS or not run.runbook_commit:
            return {}
        try:
            parameters = unattended.runbook(run.runbook, run.runbook_commit).parameters
        except ValueError:  # the commit or runbook is gone from the repository
            return {}
        return {name: p.default_text for name, p in parameters.items() if name not in run.parameters}


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


def page_handlers(prefix: str) -> list[tuple]:
    """The history pages' routes under the service's prefix (the list is the service's front page)."""
    return [
        (prefix, HistoryPage),
        (url_path_join(prefix, r"runs/([^/]+)"), RunPage),
        (url_path_join(prefix, r"runs/([^/]+)/notebook"), RunNotebookPage),
    ]
