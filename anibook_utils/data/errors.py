"""Exceptions raised by the data layer (chapter 1).

Every error says what went wrong and how to fix it; all derive from :class:`DataError`.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class of every data-layer error."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The data file is nowhere the data layer looks."""


class NotHDF5Error(DataError):
    """The file exists but is not a readable HDF5 file (wrong format or truncated)."""


class ChecksumMismatchError(DataError):
    """The file's SHA-256 differs from the registry's."""


class MalformedGroupError(DataError):
    """An HDF5 group lacks ``species``/``coordinates``/``energies`` or their shapes disagree."""


class UnsupportedElementError(DataError):
    """A molecule holds an element the book's models do not cover."""


class NonFiniteValueError(DataError):
    """Energies or coordinates contain NaN or infinity."""


class EmptySelectionError(DataError):
    """A selection (molecules, indices, a split) holds no conformations."""


class DownloadError(DataError):
    """A download failed; nothing was left behind."""


class UnknownDatasetError(DataError, KeyError):
    """The name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
