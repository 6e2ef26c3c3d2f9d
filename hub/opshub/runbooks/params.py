"""A runbook's declared parameters, and the `-p NAME VALUE` values given to it: parsing and checking.

A runbook declares its parameters in its papermill `parameters` cell (`name = default  # help`).
`declared_parameters` reads them as papermill does (plus what papermill's inspection skips),
`parse_parameters` turns the command line's text into values, and `check_parameters` refuses a name the
runbook does not declare, listing the ones it does. Refusals raise UsageError: nothing is recorded or run.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
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
    """The parameters `path` declares, in order, as papermill's inspection finds them.

    papermill skips assignments whose value contains '=' (it warns "Unable to parse line": the shipped
    patch-server-stack's `ssh_options = "-o BatchMode=yes ..."`), so for Python notebooks the names
    assigned at the top level of the parameters cell are added from Python's own parser.
    """
    import nbformat
    import papermill

    with quiet_papermill():
        inspected = papermill.inspect_notebook(str(path))
    declared = {
        name: DeclaredParameter(name, str(info.get("default", "")), str(info.get("help") or ""))
        for name, info in inspected.items()
    }
    nb = nbformat.read(str(path), as_version=4)
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")
    if language == "python":
        for cell in nb.cells:
            if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
                for name, default in python_assignments(cell.source):
                    declared.setdefault(name, DeclaredParameter(name, default))
                break
    return declared


def python_assignments(source: str) -> list[tuple[str, str]]:
    """(name, value source) of each top-level `name = value` (or `name: type = value`) in Python `source`."""
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
                found.append((target.id, ast.get_source_segment(source, value) or ""))
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


def parse_parameters(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """`-p NAME VALUE` pairs as a dict of parsed values (a name given twice: the last one wins, as in papermill)."""
    parameters = {}
    for name, value in pairs:
        try:
            parameters[name] = parse_value(value)
        except UsageError as e:
            raise UsageError(f"parameter {name}: {e}") from None
    return parameters


def check_parameters(runbook: str, names: Iterable[str], declared: Mapping[str, DeclaredParameter]) -> None:
    """Raise UsageError, listing the declared parameters with their defaults, if a name is not declared."""
    unknown = [name for name in names if name not in declared]
    if not unknown:
        return
    listed = ", ".join(unknown)
    message = f"{runbook} does not declare the parameter{'s' if len(unknown) > 1 else ''} {listed}."
    raise UsageError(f"{message}\n{describe_parameters(runbook, declared)}")


def describe_parameters(runbook: str, declared: Mapping[str, DeclaredParameter]) -> str:
    """The declared parameters as the runbook's parameters cell shows them: `name = default  # help`."""
    if not declared:
        return f"{runbook} declares no parameters (it has no papermill `parameters` cell)."
    width = max(len(f"{p.name} = {p.default}") for p in declared.values())
    lines = [f"{runbook} declares these parameters (set them with -p NAME VALUE):"]
    for p in declared.values():
        line = f"{p.name} = {p.default}"
        lines.append(f"  {line:<{width}}  # {p.help}" if p.help else f"  {line}")
    return "\n".join(lines)


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
