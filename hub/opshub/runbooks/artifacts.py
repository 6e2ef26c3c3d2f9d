"""Run artifacts: data a runbook publishes for dashboards, as AWX's `set_stats` does for its jobs.

    from opshub.runbooks.artifacts import publish
    publish("patched-hosts", [{"host": "web-1.fleet", "package": "fleet-base", "version": "1.1"}])

`publish` displays the data in the notebook with the mime type ARTIFACT_MIME_TYPE (plus a readable
text and, for a list of flat rows, an HTML table). The service finds those outputs in the recorded
notebook, which is masked like every output, and keeps them on the run (service/run_artifacts.py):
`GET api/runs/<id>` and the dashboards' `api/dashboard-data/runs` give them back as `artifacts`.
A later publish of the same name replaces the earlier one: the notebook keeps one current copy.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any

ARTIFACT_MIME_TYPE = "application/vnd.opshub.artifact+json"
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MAX_ARTIFACTS = 64  # per run: the service keeps no more
MAX_ARTIFACT_BYTES = 256 * 1024  # of JSON per run, all artifacts together
TEXT_LIMIT = 4000  # characters of the readable text/plain copy


@dataclass
class _Shown:
    """Where an artifact is displayed: its display handle, and the cell and request that displayed it."""

    handle: Any
    cell: str | None
    request: str | None


# name -> where it is shown, so a later publish updates that output in place
_displays: dict[str, _Shown] = {}


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact JSON, as the service counts them against MAX_ARTIFACT_BYTES."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def checked(name: Any, data: Any) -> Any:
    """`data` as JSON gives it back (tuples become lists), or ValueError naming the problem."""
    if not valid_name(name):
        raise ValueError(
            f"artifact name {name!r} is not valid: 1 to 64 characters, lowercase letters, digits, '_' and '-',"
            " starting with a letter"
        )
    try:
        data = json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact {name!r}: the data must be JSON-serialisable ({e})") from None
    size = encoded_size({name: data})
    if size > MAX_ARTIFACT_BYTES:
        raise ValueError(
            f"artifact {name!r} is {size:,} bytes of JSON, more than the {MAX_ARTIFACT_BYTES:,} bytes a run keeps"
        )
    return data


def publish(name: str, data: Any, *, display_html: bool = True) -> None:
    """Publish `data` (anything JSON can hold) as the run's artifact `name`, replacing an earlier one.

    `display_html`: show a list of flat rows (dicts of numbers, text, booleans) as an HTML table too.
    """
    from IPython.display import display  # only where a kernel runs it: the service imports the constants

    data = checked(name, data)
    bundle = {ARTIFACT_MIME_TYPE: {"name": name, "data": data}, "text/plain": _text(name, data)}
    if display_html and _rows(data):
        bundle["text/html"] = _html_table(name, data)
    cell, request = _current_request()
    shown = _displays.get(name)
    # The cell that shows it run again (in JupyterLab) cleared that output: show it there anew.
    if shown is None or (cell is not None and cell == shown.cell and request != shown.request):
        _displays[name] = _Shown(display(bundle, raw=True, display_id=True), cell, request)
    else:
        shown.handle.update(bundle, raw=True)


def _current_request() -> tuple[str | None, str | None]:
    """The cell being run (its id, which JupyterLab sends and headless runs do not) and the request's id."""
    try:
        from IPython import get_ipython

        parent = get_ipython().kernel.get_parent() or {}
    except Exception:  # no kernel around (a plain IPython shell): nothing to tell cells apart
        return None, None
    return (parent.get("metadata") or {}).get("cellId"), (parent.get("header") or {}).get("msg_id")


def _rows(data: Any) -> bool:
    """Whether `data` is a non-empty list of flat dicts: a table."""
    scalar = (str, int, float, bool, type(None))
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(row, dict) and all(isinstance(v, scalar) for v in row.values()) for row in data)
    )


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _cell(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _text(name: str, data: Any) -> str:
    if _rows(data):
        columns = _columns(data)
        table = [columns] + [[_cell(row.get(c)) for c in columns] for row in data]
        widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
        lines = [
            "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip() for line in table
        ]
        body = "\n".join(lines)
    else:
        body = json.dumps(data, indent=2, ensure_ascii=False)
    if len(body) > TEXT_LIMIT:
        body = body[:TEXT_LIMIT] + "\n... (shortened here; the artifact keeps it all)"
    return f"artifact {name}:\n{body}"


def _html_table(name: str, rows: list[dict]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    caption = f"<caption>artifact <code>{html.escape(name)}</code></caption>"
    return f'<table class="opshub-artifact">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
