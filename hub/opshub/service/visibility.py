"""Who may see a run: the one rule every page, API, list and feed of the service applies.

Everyone who may read the history sees every run, except the runs of a runbook whose dashboard is
restricted to groups they are not in (`Dashboards.hidden_runbooks`): of those they see only their
own. Admins see everything (nothing is hidden from them).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, or_


@dataclass(frozen=True)
class RunVisibility:
    viewer: str
    hidden_runbooks: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, viewer: str, hidden_runbooks: Collection[str] = ()) -> RunVisibility:
        return cls(viewer, frozenset(hidden_runbooks))

    def sees(self, runbook: str, user: str) -> bool:
        """Whether the viewer may see a run of `runbook` that `user` started."""
        return runbook not in self.hidden_runbooks or user == self.viewer

    def sees_runbook(self, runbook: str) -> bool:
        """Whether the viewer may see the runbook's runs in general (its page, its schedules)."""
        return runbook not in self.hidden_runbooks

    def condition(self, runbook: ColumnElement, user: ColumnElement) -> ColumnElement[bool] | None:
        """The rule as SQL over a table's runbook and user columns (None: nothing is hidden)."""
        if not self.hidden_runbooks:
            return None
        return or_(runbook.not_in(sorted(self.hidden_runbooks)), user == self.viewer)

    def refusal(self, runbook: str) -> str:
        """What a 403 says when the viewer asks for a run they may not see."""
        return f"the runs of {runbook} are restricted to the groups of its dashboard, which {self.viewer} is not in"
