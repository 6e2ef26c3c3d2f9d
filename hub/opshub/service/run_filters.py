"""Filters of the run history that the two databases spell differently: a run's parameter value.

`parameter_equals(dialect, "stack", "web")` holds for runs whose parameters say `"stack": "web"`; a value
written as text also finds numbers (`wait_timeout=900`) and booleans (`dry_run=false`). Lists are not
searched item by item.
"""

from __future__ import annotations

from sqlalchemy import String, and_, cast, func, or_
from sqlalchemy.sql.elements import ColumnElement

from .models import Run


def parameter_equals(dialect: str, name: str, text: str) -> ColumnElement[bool]:
    if dialect == "sqlite":  # json_extract gives SQL values: 900, and 1 for true; json_type tells them apart
        path = '$."' + name.replace('"', "") + '"'
        kind, value = func.json_type(Run.parameters, path), func.json_extract(Run.parameters, path)
        return or_(
            and_(kind == "text", value == text),
            and_(kind.in_(["integer", "real"]), cast(value, String) == text),
            and_(kind.in_(["true", "false"]), kind == text.lower()),
        )
    # PostgreSQL's ->> gives every scalar as text: web, 900, true
    return Run.parameters[name].as_string() == (text.lower() if text.lower() in ("true", "false") else text)


def parameter_filter(text: str | None) -> tuple[str, str] | None:
    """`stack=web` as ("stack", "web"); ValueError saying how to write it otherwise."""
    if not text:
        return None
    name, equals, value = text.partition("=")
    if not equals or not name.strip().isidentifier():
        raise ValueError(f"write the parameter filter as NAME=VALUE (stack=web, dry_run=false), not {text!r}")
    return name.strip(), value.strip()
