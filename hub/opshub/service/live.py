"""Pages that update in place: who waits for a change of runs, woken when one happens.

A page is rendered at a sequence number (`LiveChanges.seq`); its script asks `api/changes?after=<seq>`
(one run's page: `&run=<id>`) and gets an answer as soon as a run it may see changes after that
number, or after `timeout` seconds with nothing new, then fetches the page again and replaces the
parts that changed (`static/live.js`). What changes a run: every `RunChanged` of the store's bus (its
status, whoever wrote it) and every new output a running run sends (its heartbeats).

The numbers live in this process only: after a restart they start again from 0, and a page holding a
larger number is answered at once (it then fetches itself again, and goes on from the new number).
Everything here runs on the service's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from .lifecycle import RunChanged
from .visibility import RunVisibility

DEFAULT_WAIT_SECONDS = 25.0  # under the proxies' and browsers' idle timeouts
MAX_WAIT_SECONDS = 55.0
KEEP_CHANGES = 1000  # recent changes kept, to answer a page that asks about a number already passed


@dataclass(frozen=True)
class Change:
    seq: int
    run_id: str
    runbook: str
    user: str


@dataclass(eq=False)
class _Waiter:
    after: int
    run_id: str | None
    visibility: RunVisibility | None
    woken: asyncio.Future

    def wants(self, change: Change) -> bool:
        if self.run_id is not None:
            return change.run_id == self.run_id
        return self.visibility is None or self.visibility.sees(change.runbook, change.user)


class LiveChanges:
    def __init__(self, keep: int = KEEP_CHANGES):
        self.seq = 0
        self._recent: collections.deque[Change] = collections.deque(maxlen=keep)
        self._waiters: set[_Waiter] = set()

    def run_changed(self, change: RunChanged) -> None:
        """The bus's subscriber: a run's status changed (or it was deleted)."""
        self.changed(change.run.id, change.run.runbook, change.run.user)

    def changed(self, run_id: str, runbook: str, user: str) -> None:
        """Run `run_id` changed: wake whoever waits for it."""
        self.seq += 1
        change = Change(self.seq, run_id, runbook, user)
        self._recent.append(change)
        for waiter in [w for w in self._waiters if w.wants(change)]:
            self._wake(waiter)

    async def wait(
        self,
        after: int,
        run_id: str | None = None,
        visibility: RunVisibility | None = None,
        timeout: float = DEFAULT_WAIT_SECONDS,
    ) -> int:
        """The current number, once a change that `run_id` (else any run `visibility` sees) went
        through after `after`; `after` itself when `timeout` seconds passed without one (changes the
        caller may not see leave its number alone: they tell nothing, not even that they happened)."""
        waiter = _Waiter(after, run_id, visibility, asyncio.get_running_loop().create_future())
        if self._changed_since(waiter):
            return self.seq
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.woken), timeout)
        except TimeoutError:
            return after
        finally:
            self._waiters.discard(waiter)
        return self.seq

    def _changed_since(self, waiter: _Waiter) -> bool:
        if waiter.after > self.seq:  # a number from before this process started: fetch again
            return True
        if waiter.after == self.seq:
            return False
        oldest = self._recent[0].seq if self._recent else self.seq + 1
        if waiter.after < oldest - 1:  # changes the deque no longer holds: maybe one of them
            return True
        return any(change.seq > waiter.after and waiter.wants(change) for change in self._recent)

    @staticmethod
    def _wake(waiter: _Waiter) -> None:
        if not waiter.woken.done():
            waiter.woken.set_result(None)
