"""What happened to runs, for other tools and for admins: the events lifecycle.py records with every
change of a run's status (and the cancels people ask for).

- `GET api/events?after=<event id>&limit=<n>[&run=<run id>]`: the feed, oldest first, for anyone who
  may read the history, with the history's own rule (a runbook a dashboard keeps for some groups shows
  only one's own runs). Poll with `after` = the last id seen (`next_after` in the answer).
- `GET api/changes?after=<n>[&run=<run id>][&timeout=<seconds>]`: a long poll for pages that update in
  place (live.py): answered `{"seq": <n>}` once a run the caller may see (or that run) changed after
  `after`, or after `timeout` seconds (25 by default) with the same number.
- `GET api/events.jsonl`: every event as JSON lines, for admins (the audit trail's export). Nobody
  deletes events through the service; retention removes those older than `history.retention_days`.
"""

from __future__ import annotations

import json

from jupyterhub.utils import url_path_join
from tornado import web

from ..audit import MAX_FEED_PAGE, Audit, event_json
from ..live import DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS
from .base import ApiHandler, int_argument, is_admin

EXPORT_PAGE = 1000


class EventsApi(ApiHandler):
    @web.authenticated
    def get(self):
        after = int_argument(self, "after", 0)
        limit = int_argument(self, "limit", 100)
        if not 1 <= limit <= MAX_FEED_PAGE:
            raise web.HTTPError(400, f"limit must be between 1 and {MAX_FEED_PAGE}, not {limit}")
        audit = Audit(self.store)
        run_id = self.get_argument("run", None)
        if run_id is not None:
            self.run_or_404(run_id)  # who may see the run may see its trail
            events = [e for e in audit.of_run(run_id) if e.id > after][:limit]
        else:
            events = audit.feed(after, limit, self.visibility())
        self.write({"events": [event_json(e) for e in events], "next_after": events[-1].id if events else after})


class ChangesApi(ApiHandler):
    @web.authenticated
    async def get(self):
        after = int_argument(self, "after", 0)
        timeout = float(int_argument(self, "timeout", int(DEFAULT_WAIT_SECONDS)))
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise web.HTTPError(400, f"timeout must be between 0 and {MAX_WAIT_SECONDS:.0f} seconds, not {timeout:.0f}")
        run_id = self.get_argument("run", None)
        if run_id is not None:
            self.run_or_404(run_id)  # a run one may not see: no waiting on it either
        changes = self.settings["opshub_changes"]
        seq = await changes.wait(after, run_id, None if run_id else self.visibility(), timeout)
        self.write({"seq": seq})


class EventsExport(ApiHandler):
    @web.authenticated
    async def get(self):
        if not is_admin(self.current_user):
            raise web.HTTPError(403, "only admins export the audit trail")
        self.set_header("Content-Type", "application/x-ndjson; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="opshub-events.jsonl"')
        audit, after = Audit(self.store), 0
        while True:
            events = audit.feed(after, EXPORT_PAGE)
            for event in events:
                self.write(json.dumps(event_json(event)) + "\n")
            if len(events) < EXPORT_PAGE:
                return
            after = events[-1].id
            await self.flush()


def event_handlers(prefix: str) -> list[tuple]:
    return [
        (url_path_join(prefix, r"api/events\.jsonl"), EventsExport),
        (url_path_join(prefix, "api/events"), EventsApi),
        (url_path_join(prefix, "api/changes"), ChangesApi),
    ]
