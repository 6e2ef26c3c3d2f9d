"""The size cap of executed notebooks in the run history: a notebook too big keeps its cells and loses
outputs (from the last cell back) until it fits, with a marker saying so. Used by the store (people's
runs) and the queue (the runner's)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIN_OUTPUT_CAP = 10_000  # room for the truncation marker and a useful part of the notebook
TRUNCATION_MARKER_ID = "opshub-output-truncated"


@dataclass(frozen=True)
class StoredOutput:
    """An executed notebook as it is stored: JSON text within the size cap."""

    text: str
    truncated: bool


def _dumps(value: Any) -> str:
    # Compact separators: the stored text is for machines, and every byte counts against the cap.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(value: Any) -> int:
    return len(_dumps(value).encode())


def cap_notebook(notebook: Mapping[str, Any] | str, cap: int) -> StoredOutput:
    """The notebook as JSON text of at most `cap` bytes.

    A notebook too big keeps its cells but loses outputs, from the last cell backwards, until it fits
    (the first cells usually say what the run was about); if the sources alone are too big, cells
    are dropped from the end. A markdown cell appended at the end (so cell indexes such as
    `failed_cell` stay right) and `metadata.opshub.output_truncated` say so and give the original size.
    """
    if isinstance(notebook, str):
        try:
            notebook = json.loads(notebook)
        except ValueError as e:
            raise ValueError(f"output_notebook is not valid JSON: {e}") from e
    if not isinstance(notebook, Mapping) or not isinstance(notebook.get("cells"), list):
        raise ValueError("output_notebook must be a notebook: a JSON object with a list of cells")
    text = _dumps(notebook)
    original_size = len(text.encode())
    if original_size <= cap:
        return StoredOutput(text, truncated=False)

    truncated = copy.deepcopy(dict(notebook))
    cells = truncated["cells"]
    cells.append(_truncation_marker(original_size, cap))
    truncated.setdefault("metadata", {}).setdefault("opshub", {})["output_truncated"] = {
        "original_size": original_size,
        "cap": cap,
    }
    # Track the size by difference rather than serialising the whole notebook after every change:
    # compact JSON of a list is the JSON of its items joined by commas, so the arithmetic is exact.
    size = _size(truncated)
    for cell in reversed(cells[:-1]):
        if size <= cap:
            break
        if cell.get("outputs"):
            size -= _size(cell["outputs"]) - _size([])
            cell["outputs"] = []
    while size > cap and len(cells) > 1:
        size -= _size(cells[-2]) + len(",")
        del cells[-2]
    text = _dumps(truncated)
    if len(text.encode()) > cap:  # only with a cap smaller than MIN_OUTPUT_CAP and a huge marker
        raise ValueError(f"cannot fit even the truncation marker in {cap} bytes")
    return StoredOutput(text, truncated=True)


def _truncation_marker(original_size: int, cap: int) -> dict[str, Any]:
    return {
        "cell_type": "markdown",
        "id": TRUNCATION_MARKER_ID,
        "metadata": {"tags": [TRUNCATION_MARKER_ID]},
        "source": (
            f"**Output truncated by opshub.** The executed notebook was {original_size:,} bytes, more than the"
            f" {cap:,} bytes kept per run. Outputs were removed starting from the last cell (and, if that was"
            " not enough, the last cells themselves) until it fitted."
        ),
    }
