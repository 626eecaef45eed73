"""Finding, verifying and downloading data files (chapter 1; recorded digests, chapter 10).

Resolution order for a data set: an explicit path, then the directory named by the
``ANIBOOK_DATA_DIR`` environment variable, then ``data/`` in the repository, then a
download from the official ANI-1 release archive.

A registered file is checked against the registry's SHA-256. Where none was ever published
(ANI-1's subsets s02 to s08), the first download records its digest in a small JSON file next
to the data (``ani_gdb_s02.h5.sha256.json``), says so with a :class:`DigestRecordedWarning`,
and every later use is verified against that record; a file found on disk without a record
is recorded the same way ("trust on first use").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from ..atomic import atomic_write
from .errors import ChecksumMismatchError, DataFileNotFoundError, DownloadError
from .registry import DEFAULT_DATASET, FALLBACK_DATASET, DatasetInfo, dataset_info

DATA_DIR_ENV = "ANIBOOK_DATA_DIR"
OFFLINE_ENV = "ANIBOOK_OFFLINE"
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_DATA_DIR = REPO_ROOT / "data"
_CHUNK = 1 << 20
DIGEST_SUFFIX = ".sha256.json"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks.

    Remembered per (path, size, modification time) within a process, so locating and then
    loading a file hashes it once; any change to the file gives a new key.
    """
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


class DigestRecordedWarning(UserWarning):
    """A data file with no published checksum had its SHA-256 recorded (first download or first use)."""


def digest_record(path: str | os.PathLike) -> Path:
    """The JSON file that holds the recorded SHA-256 of ``path``: ``<file>.sha256.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def recorded_digest(path: str | os.PathLike) -> str | None:
    """The SHA-256 recorded for ``path`` (None when there is no record); a damaged record is an error."""
    record = digest_record(path)
    if not record.is_file():
        return None
    try:
        digest = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ChecksumMismatchError(
            f"{record.name} (the recorded digest of {Path(path).name}) is damaged ({exc!r}). Delete it and "
            f"{Path(path).name}, then fetch the file again.") from None
    if not (isinstance(digest, str) and len(digest) == 64):
        raise ChecksumMismatchError(f"{record.name} holds no SHA-256 digest; delete it and {Path(path).name}, "
                                    "then fetch the file again.")
    return digest


def record_digest(path: str | os.PathLike, info: DatasetInfo, source: str, digest: str | None = None,
                  measured: str | os.PathLike | None = None) -> str:
    """Record the SHA-256 of ``path`` beside it and return it; ``digest`` and ``measured`` (the
    file it was computed from, e.g. a download not yet renamed into place) default to ``path``'s."""
    path = Path(path)
    measured = Path(measured) if measured is not None else path
    digest = digest or sha256_of(measured)
    payload = {"name": info.name, "filename": info.filename, "sha256": digest, "size": measured.stat().st_size,
               "recorded": time.strftime("%Y-%m-%d %H:%M:%S %z"), "source": source,
               "note": "No checksum was published for this file; this digest was recorded when it was first "
                       "downloaded (or first found), and later uses are verified against it."}
    with atomic_write(digest_record(path)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return digest


def _fix(info: DatasetInfo) -> str:
    if info.bundled:
        return "restore the repository's copy with `git checkout -- data/`"
    record = "" if info.published_digest else f" and its {info.filename}{DIGEST_SUFFIX}"
    return (f"delete it{record} and run `python -m anibook_utils fetch-data --name {info.name}` to "
            "download a fresh copy")


def verify_checksum(path: str | os.PathLike, info: DatasetInfo) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` has the registry's SHA-256, or, for a
    file with no published checksum, the one recorded beside it (recorded now, with a
    :class:`DigestRecordedWarning`, if there is no record yet)."""
    actual = sha256_of(path)
    expected, where = info.sha256, "the registry expects"
    if not info.published_digest:
        expected, where = recorded_digest(path), f"{info.filename}{DIGEST_SUFFIX} (recorded at first download) holds"
        if expected is None:
            record_digest(path, info, source="found on disk", digest=actual)
            warnings.warn(f"{info.filename} has no published checksum and no recorded one: its SHA-256 {actual} "
                          f"was recorded now in {info.filename}{DIGEST_SUFFIX}; later uses are verified against it.",
                          DigestRecordedWarning, stacklevel=2)
            return
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path} is not the expected {info.filename}: its SHA-256 is {actual}, {where} {expected}. "
            f"The file is corrupt, truncated or a different version: {_fix(info)}."
        )


def candidate_dirs() -> list[Path]:
    """Directories searched for data files, in order."""
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    dirs.append(REPO_DATA_DIR)
    return dirs


def download_dir() -> Path:
    """Where a download goes: ``ANIBOOK_DATA_DIR`` if set, else the repository's ``data/``."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return REPO_DATA_DIR


def offline() -> bool:
    """True when ``ANIBOOK_OFFLINE`` forbids downloads (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class FallbackDataWarning(UserWarning):
    """ANI-1 could not be found or downloaded: the bundled data set is used instead."""


def locate_dataset(
    name: str = DEFAULT_DATASET,
    path: str | os.PathLike | None = None,
    download: bool | None = None,
    fallback: bool = False,
) -> Path:
    """Return the path of a verified copy of data set ``name``.

    ``path`` (a file) wins when given and is read as it is. Otherwise the search
    directories are tried, and as a last resort the file is downloaded, unless
    ``download`` is False or ``ANIBOOK_OFFLINE=1``. With ``fallback=True``, a default data
    set that cannot be had this way is replaced by the bundled :data:`FALLBACK_DATASET`,
    with a :class:`FallbackDataWarning` that says why.
    """
    if fallback and path is None and name == DEFAULT_DATASET:
        try:
            return locate_dataset(name, download=download)
        except (DataFileNotFoundError, DownloadError) as exc:
            bundled = locate_dataset(FALLBACK_DATASET, download=False)
            warnings.warn(
                f"{name} is not available ({exc}) Using the data set that ships with the book "
                f"instead: {FALLBACK_DATASET} ({bundled}). Numbers will differ from the ANI-1 ones.",
                FallbackDataWarning, stacklevel=2,
            )
            return bundled
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file name (a str or pathlib.Path), got {type(path).__name__}: "
                            f"{path!r}. To load a registered data set by name, pass name=... instead.")
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataFileNotFoundError(
                f"No data file at {path}. Check the path, or leave it out to use the "
                f"registered data set (set {DATA_DIR_ENV} to the folder that holds it, "
                "or run `python -m anibook_utils fetch-data` to download it)."
            )
        return path
    info = dataset_info(name)
    if info.bundled:
        candidate = REPO_DATA_DIR / info.filename
        if not candidate.is_file():
            raise DataFileNotFoundError(
                f"{info.filename} ships with the book's repository but is missing from {REPO_DATA_DIR}: "
                "restore it with `git checkout -- data/`."
            )
        verify_checksum(candidate, info)
        return candidate
    for folder in candidate_dirs():
        candidate = folder / info.filename
        if candidate.is_file():
            verify_checksum(candidate, info)
            return candidate
    if download is None:
        download = not offline()
    searched = ", ".join(str(d) for d in candidate_dirs())
    if not download:
        raise DataFileNotFoundError(
            f"{info.filename} was not found (searched: {searched}). Run `python -m "
            f"anibook_utils fetch-data --name {name}` to download it, or set "
            f"{DATA_DIR_ENV} to the folder that already holds it."
        )
    return fetch_dataset(name, download_dir())


class _CountingReader:
    """A file-like wrapper that reports bytes read to a progress bar."""

    def __init__(self, raw: BinaryIO, progress: tqdm) -> None:
        self._raw = raw
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self._progress.update(len(chunk))
        return chunk


def fetch_dataset(
    name: str = DEFAULT_DATASET,
    dest_dir: str | os.PathLike | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download data set ``name`` into ``dest_dir`` and return its path.

    The release archive is streamed: only the wanted member is extracted, to a
    temporary file that is checksum-verified before it is renamed into place (against the
    registry's SHA-256; for a file with none published, against the digest recorded at its
    first download, or, at the first download, recorded now with a
    :class:`DigestRecordedWarning`). A verified file already in ``dest_dir`` is reused
    without any network access.
    """
    info = dataset_info(name)
    dest = Path(dest_dir) if dest_dir is not None else download_dir()
    target = dest / info.filename
    if target.is_file():
        verify_checksum(target, info)
        return target
    if info.archive_member is None:
        raise DownloadError(f"{info.name} has no download source; it ships with the repository.")
    if offline():
        raise DownloadError(
            f"{info.filename} is not in {dest.name}/ and {OFFLINE_ENV}={os.environ[OFFLINE_ENV]} forbids downloads. Unset "
            f"{OFFLINE_ENV} to download it, or set {DATA_DIR_ENV} to the folder that already holds it.")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Cannot create {dest} to download {info.filename} into ({exc}). "
            f"Set {DATA_DIR_ENV} to a writable folder."
        ) from exc
    url = url or info.source_url
    try:
        with atomic_write(target) as tmp:
            with open(tmp, "wb") as out:
                _stream_member(url, info.archive_member, out, timeout, progress)
            _check_download(tmp, target, info, url)
    except ChecksumMismatchError as exc:
        raise DownloadError(
            f"The download of {info.filename} from {url} did not match its checksum "
            f"(the transfer was corrupted or cut short); nothing was kept. Try again. {exc}"
        ) from exc
    return target


def _check_download(tmp: Path, target: Path, info: DatasetInfo, url: str) -> None:
    """Verify a finished download (in ``tmp``) before it becomes ``target``: against the registry's
    digest, else against a digest recorded at an earlier download, else record it now."""
    if info.published_digest:
        verify_checksum(tmp, info)
        return
    import h5py

    if not h5py.is_hdf5(tmp):
        raise DownloadError(f"The member {info.archive_member} of {url} is not an HDF5 file; nothing was kept.")
    actual, earlier = sha256_of(tmp), recorded_digest(target)
    if earlier is not None and actual != earlier:
        raise DownloadError(
            f"The download of {info.filename} from {url} has SHA-256 {actual}, but the first download recorded "
            f"{earlier} in {target.name}{DIGEST_SUFFIX}: the transfer was corrupted or the archive changed; "
            f"nothing was kept. Try again; to accept the new file, delete {target.name}{DIGEST_SUFFIX} first.")
    if earlier is None:
        record_digest(target, info, source=url, digest=actual, measured=tmp)
        warnings.warn(f"{info.filename} has no published checksum: the SHA-256 of this first download, {actual}, "
                      f"was recorded in {target.name}{DIGEST_SUFFIX}; later uses are verified against it.",
                      DigestRecordedWarning, stacklevel=3)


def _stream_member(url: str, member: str, out: BinaryIO, timeout: float, progress: bool) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except ValueError as exc:  # not a URL at all
        raise DownloadError(f"{url!r} is not a URL ({exc}): pass an http(s):// address, or leave --url out "
                            "to use the official ANI-1 release.") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"Could not reach {url} ({exc}). Check your internet connection, or download "
            f"the ANI-1 release by hand and set {DATA_DIR_ENV} to the folder holding the file."
        ) from exc
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="ANI-1 archive",
                  disable=not progress) as bar:
            try:
                with tarfile.open(fileobj=_CountingReader(response, bar), mode="r|gz") as archive:
                    for entry in archive:
                        if entry.name.lstrip("./") == member and entry.isfile():
                            source = archive.extractfile(entry)
                            assert source is not None
                            shutil.copyfileobj(source, out, _CHUNK)
                            return
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DownloadError(
                    f"The archive from {url} is corrupt or was cut short ({exc}); nothing was "
                    "kept. Try again."
                ) from exc
    raise DownloadError(f"The archive from {url} holds no member {member!r}; nothing was kept.")
