"""Opening a runbook does not change it: save hooks keep a runbook as committed while its content is.

When a notebook's kernel starts, JupyterLab writes the kernel's full `metadata.language_info` into it
(version, codemirror mode, lexer...), and its next save (by hand, or JupyterLab's autosave) wrote that
into `~/runbooks`: `git diff` showed a change nobody made, nbgitpuller committed it as a local edit on
the next pull, and a newer Python on the server changed it again. That metadata describes the kernel
that happened to run, not the runbook. And JupyterLab writes a notebook in nbformat's layout (keys
sorted, one-space indent): a runbook committed in another layout (written by a script) changed on its
first save even when nothing else did.

For the notebooks in the runbooks folder, two contents manager hooks:

- before a save, `language_info` is kept as the runbook's commit has it (for a runbook the commit does
  not have yet, as the file on disk has it), unless the language changed (a kernel of another language,
  chosen on purpose, is a real change);
- after a save, a notebook equal to its committed version as JSON gets the committed file's bytes back
  (its modification time kept as saved, so JupyterLab does not think someone else changed it).

Git failing, or no git checkout, leaves the file on disk as the reference; nothing here fails a save.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..runbooks.gitstate import base_commit, committed_text

log = logging.getLogger(__name__)


class RunbookSaves:
    """The hooks, for the notebooks in `runbooks_dir`: `register(contents_manager)` installs both."""

    def __init__(self, runbooks_dir: Path):
        self.runbooks_dir = Path(runbooks_dir)

    def register(self, contents_manager: Any) -> None:
        contents_manager.register_pre_save_hook(self.pre_save)
        contents_manager.register_post_save_hook(self.post_save)

    def pre_save(self, model: dict, path: str, contents_manager: Any, **kwargs: Any) -> None:
        """Keep the reference's `language_info` when the language is the same."""
        if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
            return
        metadata = model["content"].get("metadata")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("language_info"), dict):
            return
        file = self.runbook_file(contents_manager._get_os_path(path))
        if file is None:
            return
        kept = language_info(committed(file)) or language_info(on_disk(file))
        if kept is not None and kept.get("name") == metadata["language_info"].get("name"):
            metadata["language_info"] = kept

    def post_save(self, model: dict, os_path: str, contents_manager: Any, **kwargs: Any) -> None:
        """A saved runbook equal to its committed version as JSON: the committed bytes, not a new layout."""
        if model.get("type") != "notebook":
            return
        file = self.runbook_file(os_path)
        if file is None:
            return
        reference, saved = committed(file), on_disk(file)
        if reference is None or saved is None or saved == reference:
            return
        if as_json(saved) is None or as_json(saved) != as_json(reference):
            return  # changed: saved as JupyterLab wrote it
        written = file.stat()
        # beside the file, then renamed over it: never a half-written runbook
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(reference)
            os.chmod(temporary, written.st_mode & 0o7777)
            os.utime(temporary, ns=(written.st_atime_ns, written.st_mtime_ns))
            os.replace(temporary, file)
        except OSError as e:
            log.warning("opshub: could not keep %s as committed: %s", file, e)
            Path(temporary).unlink(missing_ok=True)

    def runbook_file(self, os_path: str) -> Path | None:
        """The file, if it is in the runbooks folder."""
        file = Path(os_path).resolve()
        return file if file.is_relative_to(self.runbooks_dir.resolve()) else None


def committed(file: Path) -> str | None:
    """The file as the commit its checkout is based on has it (None: no commit, or not in it)."""
    try:
        commit = base_commit(file.parent)
        return committed_text(file.parent, commit, file.name) if commit else None
    except (OSError, subprocess.SubprocessError) as e:  # git failing: the file on disk decides
        log.debug("opshub: no committed version of %s: %s", file, e)
        return None


def on_disk(file: Path) -> str | None:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def as_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def language_info(text: str | None) -> dict | None:
    notebook = as_json(text)
    found = notebook.get("metadata", {}).get("language_info") if isinstance(notebook, dict) else None
    return found if isinstance(found, dict) else None
