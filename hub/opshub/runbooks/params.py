"""A runbook's papermill `parameters` cell (`name = default  # help`), and values written as text.

`declared_parameters` and `cell_parameters` read the cell (every top-level assignment: papermill's own
inspection skips some); `parse_value` reads a value whose type nothing declares, as papermill's CLI does.
What may be set, and to what, is typed_parameters.py's, which builds on these. UsageError: a command
cannot run as asked; nothing is recorded or run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import math
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """The command cannot run as asked (unknown runbook, undeclared parameter...): exit 2, nothing recorded."""


@dataclass(frozen=True)
class DeclaredParameter:
    """A parameter the runbook declares in its `parameters` cell: its default (as source text) and help."""

    name: str
    default: str
    help: str = ""


def declared_parameters(path: Path) -> dict[str, DeclaredParameter]:
    """The parameters the notebook at `path` sets in its `parameters` cell, in order.

    Python notebooks are read by `cell_parameters`; others by papermill's inspection."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    found = cell_parameters(nb)
    if found is not None:
        return found
    import papermill

    with quiet_papermill():
        inspected = papermill.inspect_notebook(str(path))
    return {
        name: DeclaredParameter(name, str(info.get("default", "")), str(info.get("help") or ""))
        for name, info in inspected.items()
    }


def cell_parameters(notebook: Mapping[str, Any]) -> dict[str, DeclaredParameter] | None:
    """The `name = default  # help` lines of a Python notebook's `parameters` cell (a notebook as parsed
    JSON); {} when it has no such cell, None when it is not a Python notebook.

    Every top-level assignment counts, as papermill's injection overrides any of them (papermill's own
    inspection skips values containing '=', such as the patching runbook's `ssh_options`)."""
    metadata = notebook.get("metadata") or {}
    language = (metadata.get("kernelspec") or {}).get("language") or (metadata.get("language_info") or {}).get("name")
    if language not in (None, "python"):
        return None
    for cell in notebook.get("cells") or []:
        if not isinstance(cell, Mapping) or cell.get("cell_type") != "code":
            continue
        if "parameters" not in ((cell.get("metadata") or {}).get("tags") or []):
            continue
        source = cell.get("source") or ""
        source = "".join(source) if isinstance(source, list) else str(source)
        comments = _comments_by_line(source)
        return {
            name: DeclaredParameter(name, default, comments.get(line, ""))
            for name, default, line in python_assignments(source, with_lines=True)
        }
    return {}


def _comments_by_line(source: str) -> dict[int, str]:
    comments = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return comments


def python_assignments(source: str, with_lines: bool = False) -> list[tuple]:
    """(name, value source) of each top-level `name = value` (or `name: type = value`) in Python `source`;
    with_lines: (name, value source, the line the statement ends on)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                segment = ast.get_source_segment(source, value) or ""
                found.append((target.id, segment, node.end_lineno) if with_lines else (target.id, segment))
    return found


def parse_value(text: str) -> Any:
    """A `-p NAME VALUE` value as the runbook receives it.

    Chosen: papermill's own CLI rules (`True`, `False`, `None`, then int, then float, else the text as
    given), plus JSON for values starting with `[`, `{` or `"`, because runbooks take lists
    (`'["web1","web2"]'`) and a JSON string forces text (`'"007"'` stays "007"). Such a value that is not
    valid JSON is refused rather than silently passed as text. `nan` and `inf` stay text: the run
    history stores parameters as JSON, which has no such numbers.
    """
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    if text.lstrip().startswith(("[", "{", '"')):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UsageError(
                f'{text!r} looks like JSON but is not valid JSON ({e}). Write lists as \'["a", "b"]\','
                " with double quotes around strings."
            ) from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


@contextlib.contextmanager
def quiet_papermill():
    """papermill's warnings are about things we handle ourselves (unparsed parameter lines) and its
    info lines would mix with the progress lines; keep errors."""
    papermill_logger = logging.getLogger("papermill")
    level = papermill_logger.level
    papermill_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        papermill_logger.setLevel(level)
