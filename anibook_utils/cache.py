"""A small on-disk cache of named arrays, keyed by content hashes (chapter 1).

Unlike a pickle cache, entries are plain ``.npz`` arrays (loading one runs no code),
and the key includes the SHA-256 of the source file, so an edited or replaced data
file can never be served stale results. Writes are atomic: a temporary file is
renamed into place, so an interrupted write leaves no half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_DIR_ENV = "ANIBOOK_CACHE_DIR"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The cache folder: ``ANIBOOK_CACHE_DIR`` or ``~/.cache/anibook``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "anibook")


def cache_key(*parts: object) -> str:
    """A short stable key from the given parts (source hashes, parameters, versions)."""
    text = "|".join(str(p) for p in (FORMAT_VERSION, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_arrays(
    kind: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return the arrays stored under ``kind``/``key``, building and storing them if absent.

    A corrupt or unreadable entry is removed and rebuilt (with a warning).
    """
    path = cache_dir() / f"{kind}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            warnings.warn(f"Cache entry {path} was unreadable ({exc}); rebuilding it.")
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:  # a read-only home must not stop the book
        warnings.warn(f"Could not write cache entry {path} ({exc}); continuing without it.")
    return arrays
