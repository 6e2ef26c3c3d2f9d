"""The artifacts of a run (runbooks/artifacts.py publishes them), found in its recorded notebook.

Every code cell output that can carry a mime bundle (display_data, execute_result,
update_display_data) with ARTIFACT_MIME_TYPE is one; of a name, the last in the notebook wins. The
notebook is the one the run's reporter sent, already masked (runbooks/masking.py masks every string
of every mime bundle), and read before the output cap trims outputs: artifacts have caps of their own.
Beyond those caps nothing of the excess is kept and REFUSED says what was left out; malformed bundles
(not an object, a name that is not one) are skipped: a runbook's odd output never fails a record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..runbooks.artifacts import ARTIFACT_MIME_TYPE, MAX_ARTIFACT_BYTES, MAX_ARTIFACTS, encoded_size, valid_name

REFUSED = "_refused"  # not a name publish() accepts, so it never hides a published artifact
OUTPUT_TYPES = {"display_data", "execute_result", "update_display_data"}
LISTED_REFUSALS = 64  # names listed in REFUSED; a count says how many in all


def artifacts_of(notebook: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """The artifacts in `notebook` (a notebook or its JSON text) as {name: data}, within the caps; None
    when it has none (or is no notebook at all: the store refuses those itself)."""
    found = _published(notebook)
    if not found:
        return None
    kept: dict[str, Any] = {}
    refused: list[str] = []
    size = 2  # the braces of the JSON object
    for name, data in found.items():
        entry = encoded_size({name: data}) - 2 + (1 if kept else 0)  # "name":data and its comma
        if len(kept) >= MAX_ARTIFACTS or size + entry > MAX_ARTIFACT_BYTES:
            refused.append(name)
            continue
        kept[name] = data
        size += entry
    if refused:
        kept[REFUSED] = {
            "reason": (
                f"a run keeps at most {MAX_ARTIFACTS} artifacts and {MAX_ARTIFACT_BYTES:,} bytes of their JSON;"
                f" {len(refused)} more were published and not kept"
            ),
            "names": refused[:LISTED_REFUSALS],
            "count": len(refused),
        }
    return kept


def _published(notebook: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """{name: data} of every well-formed artifact output, in the order names first appear, the last
    data of each name."""
    if isinstance(notebook, str):
        try:
            notebook = json.loads(notebook)
        except ValueError:
            return {}
    if not isinstance(notebook, Mapping) or not isinstance(notebook.get("cells"), list):
        return {}
    found: dict[str, Any] = {}
    for cell in notebook["cells"]:
        if (
            not isinstance(cell, Mapping)
            or cell.get("cell_type") != "code"
            or not isinstance(cell.get("outputs"), list)
        ):
            continue
        for output in cell["outputs"]:
            if not isinstance(output, Mapping) or output.get("output_type") not in OUTPUT_TYPES:
                continue
            data = output.get("data")
            bundle = data.get(ARTIFACT_MIME_TYPE) if isinstance(data, Mapping) else None
            if (
                isinstance(bundle, Mapping)
                and valid_name(bundle.get("name"))
                and "data" in bundle
                and _json(bundle["data"])
            ):
                found[bundle["name"]] = bundle["data"]
    return found


def _json(data: Any) -> bool:
    """Whether every database stores `data` as JSON (no NaN or infinity, which Python's parser lets in)."""
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
