"""The book's data layer (chapter 1): find, verify, read, split and batch ANI-1 data.

>>> from anibook_utils.data import load_dataset, split_dataset, iterate_batches
>>> data = load_dataset()                      # ani_gdb_s01, found or downloaded
>>> train, val = split_dataset(data, 0.8, seed=0)
>>> for batch in iterate_batches(train, 256, shuffle=True, seed=0): ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_key, cached_arrays
from .batching import Batch, iterate_batches
from .dataset import ELEMENTS, PADDING, ANIData, formula
from .errors import (
    ChecksumMismatchError,
    DataError,
    DataFileNotFoundError,
    DownloadError,
    EmptySelectionError,
    MalformedGroupError,
    NonFiniteValueError,
    NotHDF5Error,
    UnknownDatasetError,
    UnsupportedElementError,
)
from .files import DATA_DIR_ENV, FallbackDataWarning, fetch_dataset, locate_dataset, sha256_of
from .reader import read_ani_h5
from .registry import DATASETS, DEFAULT_DATASET, FALLBACK_DATASET, DatasetInfo, dataset_info
from .split import split_dataset, split_indices

__all__ = [
    "ANIData", "Batch", "DATASETS", "DATA_DIR_ENV", "DEFAULT_DATASET", "DatasetInfo", "ELEMENTS",
    "PADDING", "ChecksumMismatchError", "DataError", "DataFileNotFoundError", "DownloadError",
    "EmptySelectionError", "FALLBACK_DATASET", "FallbackDataWarning", "MalformedGroupError", "NonFiniteValueError", "NotHDF5Error",
    "UnknownDatasetError", "UnsupportedElementError", "dataset_info", "fetch_dataset", "formula",
    "iterate_batches", "load_dataset", "locate_dataset", "read_ani_h5", "sha256_of",
    "split_dataset", "split_indices",
]

_FIELDS = ("species", "coordinates", "energies", "molecule_ids")


def load_dataset(
    name: str = DEFAULT_DATASET,
    path: str | os.PathLike | None = None,
    download: bool | None = None,
    use_cache: bool = True,
    verbose: bool = False,
    fallback: bool = True,
) -> ANIData:
    """Locate (see :func:`locate_dataset`), verify and read a data set, through the cache.

    By default ANI-1 that can be neither found nor downloaded is replaced by the bundled
    data set (with a :class:`FallbackDataWarning`); ``fallback=False`` raises instead.
    ``verbose`` prints which data set is used, from where.
    """
    file = locate_dataset(name, path=path, download=download, fallback=fallback)
    digest = sha256_of(file)
    used = next((n for n, i in DATASETS.items() if i.sha256 == digest), None)
    label = used or (name if path is None else Path(file).stem)

    def build() -> dict[str, np.ndarray]:
        data = read_ani_h5(file)
        arrays = {f: getattr(data, f).numpy() for f in _FIELDS}
        arrays["molecule_names"] = np.array(data.molecule_names)
        arrays["groups"] = np.array(data.groups)
        return arrays

    arrays = cached_arrays("ani", cache_key(digest, ELEMENTS), build) if use_cache else build()
    data = ANIData(
        *(torch.from_numpy(np.ascontiguousarray(arrays[f])) for f in _FIELDS),
        molecule_names=[str(s) for s in arrays["molecule_names"]],
        groups=[str(s) for s in arrays["groups"]],
        source=str(file),
        source_sha256=digest,
        name=label,
    )
    if verbose:
        note = ""
        if used == FALLBACK_DATASET and name != FALLBACK_DATASET:
            note = f" — ANI-1 was not available, so this is the book's own bundled set, not {name}"
        print(f"Data set: {label} ({len(data):,} conformations) from {file}{note}")
    return data
