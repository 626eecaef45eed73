"""Writing files all or nothing (every module that writes: caches, checkpoints, data, results).

:func:`atomic_write` hands out a temporary file in the target's folder; when the block ends
without an exception the file is flushed to disk and renamed over the target in one step
(``os.replace``), otherwise it is removed. A crash, Ctrl-C or SIGKILL mid-write therefore
leaves either the old file or the new one, never half of one. Temporary files are named
``.<target>.<random>.tmp``; :func:`remove_stale_temporaries` clears those a killed process
left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write", "remove_stale_temporaries"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    Write to the yielded path with anything that takes a file name (``torch.save``,
    ``h5py.File``, ``Path.write_text``, ``open(..., "wb")``). ``mode`` sets the final file's
    permissions (default: a normal file's, following the umask).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass a file name inside it, e.g. {path / 'model.pt'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes the file private; give it a normal file's mode
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left for ``path`` (a killed writer's);
    return what was removed. Call it only while no other process writes ``path``."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed
