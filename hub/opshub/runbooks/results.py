"""How a run went, read from its cells: the one rule for "did this cell fail", the failing cell, the summary.

Headless runs (`opshub run`, from papermill's executed notebook) and interactive runs (the lab recorder,
from the outputs a kernel broadcasts) both decide with `failure_output`, so the two kinds of runs agree:
an `error` output fails its cell (an exception, `sys.exit(1)`, a bash command's non-zero status), except
`SystemExit` with code 0 or none, which is a runbook stopping on purpose. That exception is papermill's own
rule, so a headless run's status (papermill raises or not) and its failing cell never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The cells papermill adds to a failed run's notebook (a banner at the top, an anchor above the cell).
PAPERMILL_BANNER_TAG = "papermill-error-cell-tag"
LABEL_WIDTH = 70

# What IPython's error output says after `sys.exit(0)` or `sys.exit()` (papermill's list).
CLEAN_EXIT_VALUES = ("", "0")


def is_clean_exit(output: Mapping[str, Any]) -> bool:
    """Whether `output` is the error a kernel reports for `sys.exit(0)` or `sys.exit()`: not a failure."""
    return (
        output.get("output_type") == "error"
        and output.get("ename") == "SystemExit"
        and output.get("evalue") in CLEAN_EXIT_VALUES
    )


def is_failure(output: Mapping[str, Any]) -> bool:
    """Whether `output` makes its cell fail: any `error` output that is not a clean exit."""
    return output.get("output_type") == "error" and not is_clean_exit(output)


def failure_output(cell: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first output of `cell` that makes it fail, or None."""
    return next((output for output in cell.get("outputs", []) or [] if is_failure(output)), None)


def exited_cleanly(cell: Mapping[str, Any]) -> bool:
    """Whether `cell` stopped the runbook on purpose (`sys.exit(0)`): the kernel answered "error", yet
    the cell did not fail."""
    return any(is_clean_exit(output) for output in cell.get("outputs", []) or [])


def failed_cell_index(nb: Mapping[str, Any]) -> int | None:
    """The index in `nb["cells"]` of the cell that failed, or None.

    The first cell with a failure output (`failure_output`), else the first cell papermill marked
    `exception` (an error without output; papermill also marks a clean exit, which is skipped), else a
    cell papermill left `running` (the kernel died under it). Interactive runs have no papermill marks:
    for them only the outputs count.
    """
    cells = nb.get("cells", [])
    for index, cell in enumerate(cells):
        if failure_output(cell) is not None:
            return index
    for key, value in (("exception", True), ("status", "running")):
        for index, cell in enumerate(cells):
            if cell.get("metadata", {}).get("papermill", {}).get(key) == value and not exited_cleanly(cell):
                return index
    return None


def error_summary(nb: Mapping[str, Any], index: int | None) -> str | None:
    """`ename: evalue` of the failure output of cell `index`, or None."""
    if index is None:
        return None
    output = failure_output(nb["cells"][index])
    if output is None:
        return None
    return f"{output.get('ename') or 'Error'}: {output.get('evalue', '')}".rstrip(": ")


def source_text(value: Any) -> str:
    """A cell's source (or an output's text) as one string: notebooks may store it as a list of lines."""
    return "".join(value) if isinstance(value, list) else str(value or "")


def cell_label(cell: Mapping[str, Any], width: int = LABEL_WIDTH) -> str:
    """What a progress line says about a cell: the first line of its source (for markdown, the first heading)."""
    lines = [line.strip() for line in source_text(cell.get("source", "")).splitlines() if line.strip()]
    if cell.get("cell_type") == "markdown":
        lines = [line for line in lines if line.startswith("#")] or lines
    label = lines[0] if lines else "(empty)"
    return label if len(label) <= width else label[: width - 1] + "…"


def is_papermill_banner(cell: Mapping[str, Any]) -> bool:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return isinstance(tags, list) and PAPERMILL_BANNER_TAG in tags


def cell_name(nb: Mapping[str, Any], index: int) -> str:
    """How every page, message and terminal names cell `index` of a recorded notebook: `cell N (heading)`.

    N counts from 1 as `opshub run`'s progress lines counted while the run went (papermill's banner cells,
    added after a failure, are not counted); the heading is the one the cell is under (the nearest markdown
    heading at or above it), else the cell's first line."""
    cells = nb.get("cells", [])
    if not 0 <= index < len(cells):
        return f"cell {index + 1}"
    number = sum(1 for cell in cells[: index + 1] if not is_papermill_banner(cell))
    heading = next(
        (
            cell_label(cell).lstrip("#").strip()
            for cell in reversed(cells[: index + 1])
            if cell.get("cell_type") == "markdown" and not is_papermill_banner(cell) and _has_heading(cell)
        ),
        None,
    )
    return f"cell {number} ({heading or cell_label(cells[index])})"


def _has_heading(cell: Mapping[str, Any]) -> bool:
    return any(line.lstrip().startswith("#") for line in source_text(cell.get("source", "")).splitlines())
