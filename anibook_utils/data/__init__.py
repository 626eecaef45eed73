"""The book's data layer (chapter 1): find, verify, read, split and batch ANI-1 data.

>>> from anibook_utils.data import load_dataset, split_dataset, iterate_batches
>>> data = load_dataset()                      # ani_gdb_s01, found or downloaded
>>> train, val, test = split_dataset(data, BOOK_SPLIT, seed=0)   # 80/10/10
>>> for batch in iterate_batches(train, 256, shuffle=True, seed=0): ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_key, cached_arrays
from .batching import Batch, iterate_batches
from .constants import ATOMIC_NUMBERS, COVALENT_RADII, ELEMENTS, HARTREE_TO_KCAL, PADDING
from .dataset import ANIData, formula
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
from .split import BOOK_SPLIT, COURSE_SPLIT, split_dataset, split_indices

__all__ = [
    "ANIData", "ATOMIC_NUMBERS", "BOOK_SPLIT", "COURSE_SPLIT", "Batch", "COVALENT_RADII", "DATASETS", "DATA_DIR_ENV", "DEFAULT_DATASET",
    "DatasetInfo", "ELEMENTS", "HARTREE_TO_KCAL", "PADDING", "ChecksumMismatchError", "DataError", "DataFileNotFoundError", "DownloadError",
    "EmptySelectionError", "FALLBACK_DATASET", "FallbackDataWarning", "MalformedGroupError", "NonFiniteValueError", "NotHDF5Error",
    "UnknownDatasetError", "UnsupportedElementError", "dataset_info", "fetch_dataset", "formula",
    "iterate_batches", "load_dataset", "locate_dataset", "read_ani_h5", "sha256_of",
    "split_dataset", "split_indices",
]

_FIELDS = ("species", "coordinates", "energies", "molecule_ids")


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError/KeyError unless cached arrays form a data set the reader could have returned:
    the same kinds and shapes, indices in range, real atoms before padding, finite values."""
    species, coordinates, energies, ids = (arrays[f] for f in _FIELDS)
    names, groups = arrays["molecule_names"], arrays["groups"]
    kinds = {"species": (species, np.int64), "coordinates": (coordinates, np.float32),
             "energies": (energies, np.float64), "molecule_ids": (ids, np.int64)}
    wrong = [f"{name} {array.dtype}" for name, (array, dtype) in kinds.items() if array.dtype != dtype]
    wrong += [f"{name} {array.dtype}" for name, array in (("molecule_names", names), ("groups", groups))
              if array.dtype.kind != "U" or array.ndim != 1]
    if wrong:
        raise ValueError(f"arrays of the wrong kind ({', '.join(wrong)})")
    n = len(energies)
    if (species.ndim != 2 or species.shape[0] != n or coordinates.shape != (*species.shape, 3)
            or energies.shape != (n,) or ids.shape != (n,)):
        raise ValueError(f"inconsistent shapes {species.shape}, {coordinates.shape}, {energies.shape}, {ids.shape}")
    if n == 0 or len(names) != len(groups) or ids.min() < 0 or ids.max() >= len(names):
        raise ValueError("molecule ids and names disagree")
    if species.min() < PADDING or species.max() >= len(ELEMENTS):
        raise ValueError("species indices out of range")
    real = species != PADDING
    if not real[:, 0].all() or (~real[:, :-1] & real[:, 1:]).any():
        raise ValueError("padding before real atoms")
    if not (np.isfinite(energies).all() and np.isfinite(coordinates).all()):
        raise ValueError("non-finite values")
    if "forces" in arrays and (arrays["forces"].shape != coordinates.shape or not np.isfinite(arrays["forces"]).all()):
        raise ValueError("forces inconsistent with the coordinates")


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
        if data.forces is not None:
            arrays["forces"] = data.forces.numpy()
        return arrays

    arrays = cached_arrays("ani", cache_key(digest, ELEMENTS), build, _check_arrays) if use_cache else build()
    data = ANIData(
        *(torch.from_numpy(np.ascontiguousarray(arrays[f])) for f in _FIELDS),
        molecule_names=[str(s) for s in arrays["molecule_names"]],
        groups=[str(s) for s in arrays["groups"]],
        source=str(file),
        source_sha256=digest,
        name=label,
        forces=torch.from_numpy(np.ascontiguousarray(arrays["forces"])) if "forces" in arrays else None,
    )
    if verbose:
        note = ""
        if used == FALLBACK_DATASET and name != FALLBACK_DATASET:
            note = f" — ANI-1 was not available, so this is the book's own bundled set, not {name}"
        print(f"Data set: {label} ({len(data):,} conformations) from {Path(file).name}{note}")
    return data
