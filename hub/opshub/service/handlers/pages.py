"""The run history's pages: the list with its filters, a run, a run's executed notebook (sandboxed).

Runs of a runbook whose dashboard is restricted to groups are shown only to those groups, admins and
whoever ran them (hub/docs/dashboards.md).
"""

from __future__ import annotations

import datetime
import json
import zlib
from dataclasses import dataclass
from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from tornado import web

from ...runbooks.results import cell_name, is_papermill_banner
from ..audit import Audit
from ..models import RUNNER_TRIGGERS, STATUSES, TRIGGERS
from ..run_filters import parameter_filter
from .base import BaseHandler, int_argument, parse_time
from .notebook_view import FRAMED_NOTEBOOK_CSP, notebook_html


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


@dataclass(frozen=True)
class OutputFacts:
    """What a run's page says about its recorded notebook (the report above the output)."""

    version: str = ""  # changes when the notebook does: the page then shows the new one in place
    cells_done: int = 0  # code cells that ran to their end
    cells_total: int = 0  # code cells of the runbook (papermill's banners not counted)
    running: str | None = None  # the cell running now, named as everywhere (results.cell_name)
    running_since: datetime.datetime | None = None
    failed: str | None = None  # the failing cell, named likewise

    @classmethod
    def of(cls, run) -> OutputFacts:
        if not run.output_notebook:
            return cls()
        version = f"{zlib.crc32(run.output_notebook.encode()):08x}"
        try:
            cells = json.loads(run.output_notebook).get("cells") or []
            notebook = {"cells": cells}
            code = [(i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code" and not is_papermill_banner(c)]
            status = {i: ((c.get("metadata") or {}).get("papermill") or {}).get("status") for i, c in code}
            running = [i for i, _ in code if status[i] == "running"]
            since = None
            if running and not run.ended_at:
                start = cells[running[-1]]["metadata"]["papermill"].get("start_time")
                since = datetime.datetime.fromisoformat(start) if isinstance(start, str) else None
            failed = run.failed_cell if run.failed_cell is not None and 0 <= run.failed_cell < len(cells) else None
            return cls(
                version,
                # papermill marks the cells it ran; an interactive run's cells ran when they have a count
                cells_done=sum(
                    1
                    for i, c in code
                    if status[i] in ("completed", "failed") or (not status[i] and c.get("execution_count") is not None)
                ),
                cells_total=len(code),
                running=cell_name(notebook, running[-1]) if running and not run.ended_at else None,
                running_since=since,
                failed=cell_name(notebook, failed) if failed is not None else None,
            )
        except (ValueError, AttributeError, TypeError, KeyError, IndexError):  # a notebook not as papermill writes it
            return cls(version)


class RunPage(BaseHandler):
    @web.authenticated
    def get(self, run_id):
        self.render_run(self.run_or_404(run_id))

    def render_run(self, run, **namespace) -> None:
        """The run's page (also as the cancel's question and its refusal: `namespace`)."""
        audit = Audit(self.store)
        self.render_page(
            "run.html",
            run=run,
            has_output=bool(run.output_notebook),
            output=OutputFacts.of(run),
            defaults=RunPage.defaults(self, run),
            events=audit.of_run(run.id),
            notifications=audit.notifications_of(run.id),
            **namespace,
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
        self.set_header("Cache-Control", "no-store")  # a running run's cells change: never an old copy
        self.finish_sandboxed(
            lambda: notebook_html(run.output_notebook, run.failed_cell, framed=True),
            f"run {run_id}",
            FRAMED_NOTEBOOK_CSP,
        )


def page_handlers(prefix: str) -> list[tuple]:
    """The history pages' routes under the service's prefix (the list is the service's front page)."""
    return [
        (prefix, HistoryPage),
        (url_path_join(prefix, r"runs/([^/]+)"), RunPage),
        (url_path_join(prefix, r"runs/([^/]+)/notebook"), RunNotebookPage),
    ]
