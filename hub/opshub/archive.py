"""The runbooks repository's files as the execution plane receives them: a tar from `git archive`,
unpacked safely (the dashboards server and the runner)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path


def extract_runbooks(archive: bytes, dest: Path) -> None:
    """The repository's files (a tar from `git archive`) in `dest`, replacing what was there: only
    plain files and folders, never a link or a path out of `dest`."""
    fresh = dest.with_name(dest.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if _plain_member(m)]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (Debian bookworm's 3.11.2 lacks it)
            tar.extractall(fresh, members=members, filter="data")
        else:
            tar.extractall(fresh, members=members)  # noqa: S202 (members checked by _plain_member)
    shutil.rmtree(dest, ignore_errors=True)
    fresh.rename(dest)


def _plain_member(member: tarfile.TarInfo) -> bool:
    parts = Path(member.name).parts
    return (member.isfile() or member.isdir()) and not Path(member.name).is_absolute() and ".." not in parts
