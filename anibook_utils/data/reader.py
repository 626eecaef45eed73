"""Reading ANI-1 HDF5 files into padded tensors (chapter 1).

An ANI-1 file nests groups to any depth; every group holding ``species``,
``coordinates`` and ``energies`` is one molecule with many conformations.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .constants import ELEMENTS, PADDING
from .dataset import ANIData, formula
from .errors import (
    EmptySelectionError,
    MalformedGroupError,
    NonFiniteValueError,
    NotHDF5Error,
    UnsupportedElementError,
)
from .registry import DATASETS

REQUIRED = ("species", "coordinates", "energies")


def _decode(symbols: np.ndarray) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in symbols.tolist()]


def _molecule_groups(handle: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and any(k in obj for k in REQUIRED):
            found.append(name)

    handle.visititems(visit)
    return sorted(found)


ANI1X_MARKERS = ("atomic_numbers", "wb97x_dz.energy", "wb97x_tz.energy", "ccsd(t)_cbs.energy")
"""Dataset names of the ANI-1x / ANI-2x layout, which this reader does not read."""


Row = tuple[list[str], np.ndarray, np.ndarray, "np.ndarray | None"]


def _read_forces(group: h5py.Group, name: str, coordinates: np.ndarray) -> np.ndarray | None:
    """The group's ``forces`` (Hartree/Å, minus the gradient), checked like the coordinates; None if absent."""
    if "forces" not in group:
        return None
    forces = np.asarray(group["forces"][()], dtype=np.float32)
    if forces.shape != coordinates.shape:
        raise MalformedGroupError(
            f"Group {name!r}: 'forces' has shape {forces.shape}, expected {coordinates.shape} like its "
            "'coordinates' (one force vector per atom, in Hartree/Å).")
    bad = ~np.isfinite(forces.reshape(forces.shape[0], -1)).all(axis=1)
    if bad.any():
        raise NonFiniteValueError(
            f"Group {name!r}: {int(bad.sum())} conformation(s) have NaN or infinite forces (first at index "
            f"{int(np.argmax(bad))}). Drop them from the file.")
    return forces


def _read_group(group: h5py.Group, name: str) -> Row:
    if any(k in group for k in ANI1X_MARKERS):
        raise MalformedGroupError(
            f"Group {name!r} is in the ANI-1x/ANI-2x layout ('atomic_numbers' and energies under names "
            "such as 'wb97x_dz.energy'), not the ANI-1 layout this reader reads ('species', 'coordinates', "
            "'energies'). Load such files with torchani.datasets.ANIDataset (chapter 10).")
    missing = [k for k in REQUIRED if k not in group]
    if missing:
        raise MalformedGroupError(
            f"Group {name!r} lacks {missing}: each molecule group needs 'species', "
            "'coordinates' and 'energies'. Fix or remove the group in the file."
        )
    raw_species = np.asarray(group["species"][()]).reshape(-1)
    if np.issubdtype(raw_species.dtype, np.number):
        raise UnsupportedElementError(
            f"Group {name!r}: 'species' holds numbers {raw_species[:6].tolist()}, probably atomic numbers; "
            "the ANI-1 layout stores element symbols (b'C', b'H', ...). Write the symbols instead, e.g. "
            "with {1: 'H', 6: 'C', 7: 'N', 8: 'O'}.")
    symbols = _decode(raw_species)
    if not symbols:
        raise MalformedGroupError(
            f"Group {name!r} has an empty 'species': each molecule needs at least one atom. "
            "Remove the group from the file, or write its element symbols.")
    coordinates = _numbers(group, "coordinates", name, np.float32)
    energies = _numbers(group, "energies", name, np.float64)
    if coordinates.ndim >= 1 and coordinates.shape[0] == 0:
        raise MalformedGroupError(
            f"Group {name!r} holds no conformations (its 'coordinates' and 'energies' are empty). "
            "Remove the group from the file, or write its conformations.")
    n_atoms = len(symbols)
    if coordinates.ndim != 3 or coordinates.shape[1:] != (n_atoms, 3):
        raise MalformedGroupError(
            f"Group {name!r}: 'coordinates' has shape {coordinates.shape}, expected "
            f"(conformations, {n_atoms}, 3) for its {n_atoms} species."
        )
    if energies.shape != (coordinates.shape[0],):
        raise MalformedGroupError(
            f"Group {name!r}: 'energies' has shape {energies.shape}, expected "
            f"({coordinates.shape[0]},), one energy per conformation."
        )
    unknown = sorted(set(symbols) - set(ELEMENTS))
    if unknown:
        raise UnsupportedElementError(
            f"Group {name!r} contains {unknown}; the book's models cover only "
            f"{', '.join(ELEMENTS)}. Remove that group or select other molecules."
        )
    for label, values in (("energies", energies), ("coordinates", coordinates)):
        bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
        if bad.any():
            raise NonFiniteValueError(
                f"Group {name!r}: {int(bad.sum())} conformation(s) have NaN or infinite "
                f"{label} (first at index {int(np.argmax(bad))}). Drop them from the file."
            )
    return symbols, coordinates, energies, _read_forces(group, name, coordinates)


def _numbers(group: h5py.Group, key: str, name: str, dtype: type) -> np.ndarray:
    """``group[key]`` as an array of ``dtype``; a :class:`MalformedGroupError` if it holds no numbers."""
    raw = group[key]
    if not isinstance(raw, h5py.Dataset) or not np.issubdtype(raw.dtype, np.number):
        found = type(raw).__name__ if not isinstance(raw, h5py.Dataset) else f"values of type {raw.dtype}"
        raise MalformedGroupError(
            f"Group {name!r}: {key!r} holds {found}, not numbers. Write the {key} as numbers "
            f"({'in Å' if key == 'coordinates' else 'in Hartree'}).")
    return np.asarray(raw[()], dtype=dtype)


def _advice(path: Path) -> str:
    """What to do about an unreadable file: fetch a registered file again, never delete a user's own."""
    if path.name in {info.filename for info in DATASETS.values()}:
        return f"If it is the book's {path.name}, delete it and run `python -m anibook_utils fetch-data` again."
    return "Check how it was written (or copied): the book does not delete or change it."


def read_ani_h5(path: str | os.PathLike, sha256: str = "") -> ANIData:
    """Read every molecule group of an ANI-1 HDF5 file into an :class:`ANIData`."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise NotHDF5Error(
            f"{path.name} is not a readable HDF5 file ({exc}); it may be truncated or not an "
            f"ANI-1 file. {_advice(path)}"
        ) from exc
    rows: list[Row] = []
    names: list[str] = []
    try:
        with handle:
            for name in _molecule_groups(handle):
                rows.append(_read_group(handle[name], name))
                names.append(name)
    except (OSError, KeyError, ValueError) as exc:
        raise NotHDF5Error(
            f"{path.name} could not be read to the end ({exc}); it is probably truncated. {_advice(path)}"
        ) from exc
    if not rows:
        raise EmptySelectionError(
            f"{path.name} holds no molecule groups (groups with 'species', 'coordinates' and "
            "'energies'). Is it an ANI-1 file?"
        )
    return _pad(rows, names, path, sha256)


def _pad(rows: list[Row], names: list[str], path: Path, sha256: str) -> ANIData:
    """Stack the molecules' conformations into padded tensors (forces only when every group has them)."""
    width = max(len(r[0]) for r in rows)
    total = sum(r[1].shape[0] for r in rows)
    with_forces = all(r[3] is not None for r in rows)
    species = np.full((total, width), PADDING, dtype=np.int64)
    coordinates = np.zeros((total, width, 3), dtype=np.float32)
    forces = np.zeros((total, width, 3), dtype=np.float32) if with_forces else None
    energies = np.empty(total, dtype=np.float64)
    molecule_ids = np.empty(total, dtype=np.int64)
    start = 0
    for mol, (symbols, coords, energy, force) in enumerate(rows):
        stop = start + coords.shape[0]
        species[start:stop, : len(symbols)] = [ELEMENTS.index(s) for s in symbols]
        coordinates[start:stop, : len(symbols)] = coords
        if forces is not None:
            forces[start:stop, : len(symbols)] = force
        energies[start:stop] = energy
        molecule_ids[start:stop] = mol
        start = stop
    return ANIData(
        species=torch.from_numpy(species),
        coordinates=torch.from_numpy(coordinates),
        energies=torch.from_numpy(energies),
        molecule_ids=torch.from_numpy(molecule_ids),
        molecule_names=[formula(r[0]) for r in rows],
        groups=names,
        source=str(path),
        source_sha256=sha256,
        forces=None if forces is None else torch.from_numpy(forces),
    )
