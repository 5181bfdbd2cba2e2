"""Writing a file or a folder so that it appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(dest: Path, last: str | None = None) -> Iterator[Path]:
    """A hidden path beside `dest` to write a file or a folder at, put in place when the
    block ends and removed when it raises: an interrupted run never leaves a half-written
    `dest` that a later run would take for a finished one.

    A folder is renamed to `dest`; when `dest` is already a folder with files (another run
    finished first, or it holds other files), the staged files are moved into it one by
    one, `last` at the end: the file whose presence says the folder is complete.

        with staged(folder, last="config.json") as staging:
            model.save_pretrained(staging)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield staging
        try:
            os.replace(staging, dest)  # also replaces an empty `dest` folder
        except OSError:
            if not (staging.is_dir() and dest.is_dir()):
                raise
            for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
                os.replace(path, dest / path.name)
    finally:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists() or staging.is_symlink():
            staging.unlink()
