"""An executed notebook as HTML, and the policies it is served under (`BaseHandler.finish_sandboxed`).

Executed notebooks hold whatever the runbook printed, HTML included: they are served sandboxed, in an
opaque origin of their own, so they can never act as the person viewing them, with styles and inline
images only. A run's page frames its notebook (`framed=True`): that page also runs one script of
ours, allowed by its hash (`FRAME_SCRIPT`), which tells the run's page how tall the notebook is and
where its failing cell is (so the page shows the notebook whole, keeps the reader's place as cells
arrive, and its link lands on the failing cell). The runbook's own scripts still run nowhere.
"""

from __future__ import annotations

import base64
import hashlib

import nbformat
from nbconvert import HTMLExporter

from ...runbooks.results import is_papermill_banner

FAILED_CELL_TAG = "opshub-failed-cell"
RUNNING_CELL_TAG = "opshub-running-cell"

NOTEBOOK_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"

FRAME_SCRIPT = """(function () {
  function report() {
    var failed = document.querySelector(".celltag_opshub-failed-cell");
    parent.postMessage({opshubFrame: {
      height: Math.ceil(document.documentElement.scrollHeight),
      failedTop: failed ? Math.floor(failed.getBoundingClientRect().top + window.scrollY) : null
    }}, "*");
  }
  if (window.ResizeObserver) { new ResizeObserver(report).observe(document.body); }
  window.addEventListener("load", report);
  report();
})();"""
_FRAME_SCRIPT_HASH = base64.b64encode(hashlib.sha256(FRAME_SCRIPT.encode()).digest()).decode()
# sandbox allow-scripts without allow-same-origin: an opaque origin, whose one script is ours
FRAMED_NOTEBOOK_CSP = (
    f"sandbox allow-scripts; default-src 'none'; script-src 'sha256-{_FRAME_SCRIPT_HASH}';"
    " style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
)

_HIGHLIGHT = (
    f"<style>.celltag_{FAILED_CELL_TAG} {{ outline: 3px solid #dc3545; outline-offset: 4px; }}"
    f" .celltag_{FAILED_CELL_TAG}::before {{ content: 'This cell failed'; color: #dc3545; font-weight: bold; }}"
    f" .celltag_{RUNNING_CELL_TAG} {{ outline: 2px dashed #0d6efd; outline-offset: 4px; }}"
    f" .celltag_{RUNNING_CELL_TAG}::before {{ content: 'Running now'; color: #0d6efd; font-weight: bold; }}</style>"
)


class UnreadableNotebook(ValueError):
    """A recorded notebook nbconvert cannot render; the message says why."""


def notebook_html(notebook_json: str, failed_cell: int | None, framed: bool = False) -> str:
    """The executed notebook as HTML, the failing cell tagged (the recorder may have tagged it already).
    `framed`: for the run's page (papermill's banner cells left out, the running cell marked, the
    frame's script in): serve it with FRAMED_NOTEBOOK_CSP, else with NOTEBOOK_CSP."""
    try:
        notebook = nbformat.reads(notebook_json, as_version=4)
        for cell in notebook.cells:
            # nbformat wants each tag once: a reporter's notebook may repeat them
            tags = cell.metadata.get("tags")
            if isinstance(tags, list):
                cell.metadata["tags"] = list(dict.fromkeys(tag for tag in tags if isinstance(tag, str)))
        _tag(notebook, failed_cell, FAILED_CELL_TAG)
        if framed:
            running = [i for i, cell in enumerate(notebook.cells) if _papermill_status(cell) == "running"]
            if failed_cell is None and running:
                _tag(notebook, running[-1], RUNNING_CELL_TAG)
            # the run's page names the failing cell itself: not papermill's "In [3]" banners as well
            notebook.cells = [cell for cell in notebook.cells if not is_papermill_banner(cell)]
        html, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    except Exception as e:  # whatever a malformed notebook makes nbformat or nbconvert raise
        raise UnreadableNotebook(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    html = html.replace("</head>", _HIGHLIGHT + "</head>", 1)
    if framed:
        head, end, tail = html.rpartition("</body>")  # the document's own end (a cell's HTML may hold one too)
        html = f"{head}<script>{FRAME_SCRIPT}</script>{end}{tail}"
    return html


def _tag(notebook, index: int | None, tag: str) -> None:
    if index is not None and 0 <= index < len(notebook.cells):
        tags = notebook.cells[index].metadata.setdefault("tags", [])
        if tag not in tags:
            tags.append(tag)


def _papermill_status(cell) -> str | None:
    papermill = cell.metadata.get("papermill")
    return papermill.get("status") if isinstance(papermill, dict) else None
