"""Model folders that commands write (`convert`, `init-draft`): always a new (or empty) folder, written under a
hidden temporary name beside it and renamed into place, so a failed or killed write leaves nothing behind and no
command replaces another model's files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError


def check_new_folder(out: str, label: str, writer: str) -> Path:
    """`out` as a Path, if it is a new folder (or an empty one) whose parent exists; else a UserError naming
    `label` (e.g. "--out x") and `writer` (the command, for the message)."""
    path = Path(out).expanduser()
    if path.is_file():
        raise UserError(f"{label}: is a file; give a new folder for the model {writer} writes")
    if path.is_dir() and any(path.iterdir()):
        held = "a model (config.json)" if (path / "config.json").exists() else "files"
        raise UserError(f"{label}: the folder already holds {held}; {writer} writes a new folder and never "
                        f"overwrites one: give a new (or empty) folder")
    if not path.parent.is_dir():
        raise UserError(f"{label}: the folder {path.parent} does not exist; create it first")
    return path


@contextlib.contextmanager
def new_folder(path: Path):
    """Yield a hidden temporary folder beside `path` to write into; on success it replaces `path` (absent or
    empty, see check_new_folder), on any error it is removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.replace(tmp, path)  # an empty folder at `path` is replaced atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
