"""Training data read from disk batch by batch, so memory does not grow with the data (chapter 10).

The in-memory path (:class:`~anibook_utils.data.ANIData`, AEVs precomputed) holds every
conformation and, worse, 384 float32 AEV numbers per atom: about 1.5 kB an atom, hundreds of
GB for all of ANI-1. :class:`H5Stream` instead keeps only an index of the files' molecule
groups (one entry per group, never per conformation) and reads *chunks* of consecutive
conformations with h5py when a batch needs them; the engine computes the AEVs of each batch on
the training device (``feed="in_step"``), so energies and forces train the same way.

- Shuffling is by chunk: each epoch draws a new order of the chunks (``chunk`` conformations
  of one molecule each) and fills batches from consecutive chunks of that order, so a batch
  mixes molecules and a file is read in contiguous slices.
- Splits are by a hash of (group, row): conformation ``i`` of a group belongs to part ``k`` of
  ``fractions`` whatever the order of reading, with no per-conformation table in memory.
- With several processes, rank ``r`` reads chunks ``r, r + N, ...`` of every epoch's order: each
  reads its own shard, and together they read every conformation of the part once per epoch.
  Every rank must take the same number of steps, so an epoch has as many steps as the rank with
  the fewest batches (the few rows left over on the others are skipped that epoch; the next
  epoch's order differs), and never more than the first epoch's (the learning-rate schedule's
  length).
- Self energies come from per-group sums (one pass over the energies), fitted exactly as
  :func:`~anibook_utils.self_energy.fit_self_energies` fits in-memory data.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch import Tensor

from .data import ELEMENTS, PADDING, BOOK_SPLIT, EmptySelectionError, MalformedGroupError, sha256_of

__all__ = ["H5Stream", "StreamBatch"]


@dataclass(frozen=True)
class _Group:
    path: str
    name: str
    species: tuple[int, ...]
    count: int
    has_forces: bool


@dataclass
class StreamBatch:
    """One batch read from disk: padded ``species`` (b, A), ``coordinates`` (b, A, 3) Å,
    ``energies`` (b,) Hartree float64, ``forces`` (b, A, 3) Hartree/Å or None."""

    species: Tensor
    coordinates: Tensor
    energies: Tensor
    forces: Tensor | None

    def __len__(self) -> int:
        return int(self.energies.shape[0])


def _index(paths: Sequence[str | os.PathLike]) -> list[_Group]:
    """One entry per molecule group of ANI-1-layout files (species, coordinates, energies)."""
    groups: list[_Group] = []
    for path in paths:
        with h5py.File(path, "r") as handle:
            found: list[str] = []
            handle.visititems(lambda name, obj: found.append(name)
                              if isinstance(obj, h5py.Group) and "energies" in obj else None)
            for name in sorted(found):
                g = handle[name]
                symbols = [s.decode() if isinstance(s, bytes) else str(s) for s in g["species"][()].tolist()]
                unknown = sorted(set(symbols) - set(ELEMENTS))
                if unknown or "coordinates" not in g:
                    raise MalformedGroupError(
                        f"{Path(path).name}:{name} is not an ANI-1 molecule group of {ELEMENTS} "
                        f"({'unknown elements ' + str(unknown) if unknown else 'no coordinates'}).")
                groups.append(_Group(str(path), name, tuple(ELEMENTS.index(s) for s in symbols),
                                     int(g["energies"].shape[0]), "forces" in g))
    if not groups:
        raise EmptySelectionError(f"No molecule groups in {[Path(p).name for p in paths]}.")
    return groups


class H5Stream:
    """Conformations of ANI-1-layout HDF5 files, read from disk one chunk at a time.

    ``part`` selects one part of ``fractions`` (see :meth:`split`); ``chunk`` is how many
    consecutive conformations of one molecule are read at once.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], chunk: int = 32,
                 fractions: Sequence[float] = BOOK_SPLIT, part: int | None = None, seed: int = 0) -> None:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk}.")
        self.paths = [str(p) for p in paths]
        self.groups = _index(self.paths)
        self.chunk, self.fractions, self.part, self.seed = chunk, tuple(fractions), part, seed
        self._counts: np.ndarray | None = None
        self.width = max(len(g.species) for g in self.groups)
        self.has_forces = all(g.has_forces for g in self.groups)

    # --- parts -------------------------------------------------------------------------------
    def split(self, fractions: Sequence[float] = BOOK_SPLIT, seed: int = 0) -> tuple["H5Stream", ...]:
        """Views of each part of ``fractions`` (e.g. training, validation, test): no data is read."""
        if abs(sum(fractions) - 1) > 1e-9 or any(f <= 0 for f in fractions):
            raise ValueError(f"fractions must be positive and add up to 1, got {tuple(fractions)}.")
        views = []
        for k in range(len(fractions)):
            view = object.__new__(H5Stream)
            view.__dict__.update(self.__dict__)
            view.fractions, view.part, view.seed, view._counts = tuple(fractions), k, seed, None
            view.__dict__.pop("_handles", None)
            views.append(view)
        return tuple(views)

    def _members(self, group: _Group, start: int, stop: int) -> np.ndarray:
        """Which rows ``start:stop`` of ``group`` belong to this view's part (a stable hash)."""
        rows = np.arange(start, stop, dtype=np.uint64)
        if self.part is None:
            return np.ones(len(rows), bool)
        salt = np.uint64(zlib.crc32(f"{Path(group.path).name}:{group.name}:{self.seed}".encode()) << 32)
        position = (_splitmix64(rows + salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        edges = np.cumsum((0.0, *self.fractions))
        return (position >= edges[self.part]) & (position < edges[self.part + 1])

    def counts(self) -> np.ndarray:
        """Conformations of this view in each group (computed once, from the row hashes)."""
        if self._counts is None:
            self._counts = np.array([int(self._members(g, 0, g.count).sum()) for g in self.groups])
        return self._counts

    def __len__(self) -> int:
        return int(self.counts().sum())

    def fingerprint(self) -> str:
        """What checkpoints record: the files' SHA-256, the part and the chunking."""
        digest = hashlib.sha256(repr((self.fractions, self.part, self.seed)).encode())
        for path in self.paths:
            digest.update(sha256_of(path).encode())
        return digest.hexdigest()[:24]

    # --- reading ---------------------------------------------------------------------------
    def chunks(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's chunks of an epoch, as rows ``(group, start, stop)`` in reading order."""
        spans = [(k, s, min(s + self.chunk, g.count)) for k, g in enumerate(self.groups)
                 for s in range(0, g.count, self.chunk)]
        table = np.array(spans, dtype=np.int64).reshape(-1, 3)
        order = np.random.default_rng([seed, epoch]).permutation(len(table))
        return table[order][rank::world_size]

    def read(self, group: int, start: int, stop: int) -> StreamBatch:
        """Rows ``start:stop`` of group ``group`` that belong to this view (unpadded)."""
        g = self.groups[group]
        keep = self._members(g, start, stop)
        data = self._file(g.path)[g.name]
        coordinates = np.asarray(data["coordinates"][start:stop], dtype=np.float32)[keep]
        energies = np.asarray(data["energies"][start:stop], dtype=np.float64)[keep]
        forces = np.asarray(data["forces"][start:stop], dtype=np.float32)[keep] if self.has_forces else None
        species = np.broadcast_to(np.array(g.species, dtype=np.int64), (len(energies), len(g.species)))
        return StreamBatch(torch.from_numpy(species.copy()), torch.from_numpy(coordinates),
                           torch.from_numpy(energies), None if forces is None else torch.from_numpy(forces))

    def count_batches(self, batch_size: int, epoch: int = 0, seed: int = 0, rank: int = 0,
                      world_size: int = 1) -> int:
        """How many batches :meth:`batches` yields, without reading any data (from the row hashes)."""
        count, size = 0, 0
        for group, start, stop in self.chunks(epoch, seed, rank, world_size):
            size += int(self._members(self.groups[int(group)], int(start), int(stop)).sum())
            if size >= batch_size:
                count, size = count + 1, 0
        return count + (size > 0)

    def _file(self, path: str) -> h5py.File:
        """The open file (opened once per process and view, read-only)."""
        handles = self.__dict__.setdefault("_handles", {})
        if path not in handles or not handles[path].id.valid:
            handles[path] = h5py.File(path, "r")
        return handles[path]

    def close(self) -> None:
        """Close the files this view opened."""
        for handle in self.__dict__.pop("_handles", {}).values():
            handle.close()

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, rank: int = 0,
                world_size: int = 1, limit: int | None = None) -> Iterator[StreamBatch]:
        """Padded batches of at least ``batch_size`` conformations (the last may be smaller) from
        this rank's chunks of the epoch; at most ``limit`` of them."""
        pending: list[StreamBatch] = []
        size, yielded = 0, 0
        for group, start, stop in self.chunks(epoch, seed, rank, world_size):
            if limit is not None and yielded >= limit:
                return
            piece = self.read(int(group), int(start), int(stop))
            if len(piece):
                pending.append(piece)
                size += len(piece)
            if size >= batch_size:
                yield _pad(pending, self.width)
                pending, size, yielded = [], 0, yielded + 1
        if pending and (limit is None or yielded < limit):
            yield _pad(pending, self.width)

    def energy_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per group: element counts (G, 4), conformations, sum and sum of squares of the
        energies, in one pass (what the self-energy fit and the target scale need)."""
        composition = np.array([[g.species.count(i) for i in range(len(ELEMENTS))] for g in self.groups], float)
        counts, sums, squares = (np.zeros(len(self.groups)) for _ in range(3))
        for k, g in enumerate(self.groups):
            for start in range(0, g.count, 4096):
                stop = min(start + 4096, g.count)
                with h5py.File(g.path, "r") as handle:
                    energies = np.asarray(handle[g.name]["energies"][start:stop], dtype=np.float64)
                energies = energies[self._members(g, start, stop)]
                counts[k] += len(energies)
                sums[k] += energies.sum()
                squares[k] += np.square(energies).sum()
        return composition, counts, sums, squares

    def __repr__(self) -> str:
        part = "all" if self.part is None else f"part {self.part} of {self.fractions}"
        return f"H5Stream({len(self.groups)} groups in {len(self.paths)} file(s), {part}, chunk {self.chunk})"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each entry (SplitMix64's finaliser): nearby rows land far apart."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pad(pieces: list[StreamBatch], width: int) -> StreamBatch:
    n = sum(len(p) for p in pieces)
    species = torch.full((n, width), PADDING, dtype=torch.long)
    coordinates = torch.zeros(n, width, 3)
    forces = torch.zeros(n, width, 3) if pieces[0].forces is not None else None
    row = 0
    for p in pieces:
        a = p.species.shape[1]
        species[row:row + len(p), :a] = p.species
        coordinates[row:row + len(p), :a] = p.coordinates
        if forces is not None:
            forces[row:row + len(p), :a] = p.forces
        row += len(p)
    return StreamBatch(species, coordinates, torch.cat([p.energies for p in pieces]), forces)


def stream_self_energies(stream: H5Stream) -> Tensor:
    """Per-element self energies (Hartree) fitted to the stream's energies, as in memory
    (weighted least squares on per-group mean energies, one pass over the file)."""
    from .self_energy import fit_self_energies

    composition, counts, sums, _ = stream.energy_sums()
    used = counts > 0
    species = np.full((int(used.sum()), stream.width), PADDING, dtype=np.int64)
    for row, group in enumerate(g for g, u in zip(stream.groups, used) if u):
        species[row, :len(group.species)] = group.species
    fit = fit_self_energies(species, sums[used] / counts[used], weights=counts[used], warn=False)
    return fit.as_tensor()


def stream_target_scale(stream: H5Stream, self_energies: Tensor) -> float:
    """The standard deviation of the stream's energies minus their self energies (Hartree)."""
    composition, counts, sums, squares = stream.energy_sums()
    shift = composition @ self_energies.double().numpy()  # per group, Hartree
    n = counts.sum()
    total = np.sum(sums - counts * shift)
    total_sq = np.sum(squares - 2 * shift * sums + counts * shift**2)
    return float(np.sqrt(max(total_sq / n - (total / n) ** 2, 0.0)))


class StreamFeeder:
    """Batches of an :class:`H5Stream` for the training engine, on the training device: the
    targets (energies minus self energies), the reference forces, and the model's energies
    (and forces) from AEVs computed in the step."""

    def __init__(self, model: torch.nn.Module, stream: H5Stream, self_energies: Tensor, device: torch.device,
                 aev_constants) -> None:
        from .aev import aev_computer

        self.model, self.stream, self.device = model, stream, device
        self.forward = model  # the engine puts a DistributedDataParallel wrapper here for several processes
        self.computer = aev_computer(aev_constants, device=device)
        self.table = torch.cat([self_energies.double(), torch.zeros(1, dtype=torch.float64)]).to(device)
        self.n = len(stream)

    def batches(self, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                limit: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """``(species, coordinates, targets, forces)`` on the device, an epoch's worth for this rank
        (at most ``limit`` batches)."""
        for batch in self.stream.batches(batch_size, epoch, seed, rank, world_size, limit):
            species = batch.species.to(self.device)
            targets = batch.energies.to(self.device) - self.table[species].sum(dim=1)
            forces = batch.forces.to(self.device) if batch.forces is not None else None
            yield species, batch.coordinates.to(self.device), targets.float(), forces

    def predict(self, species: Tensor, coordinates: Tensor, with_forces: bool,
                create_graph: bool = False) -> tuple[Tensor, Tensor | None]:
        """Energies (and forces ``-dE/dx``) of one batch."""
        if not with_forces:
            with torch.no_grad():
                aevs = self.computer(species, coordinates)
            return self.forward(species, aevs), None
        coordinates = coordinates.requires_grad_(True)
        with torch.enable_grad():
            energies = self.forward(species, self.computer(species, coordinates))
            (gradient,) = torch.autograd.grad(energies.sum(), coordinates, create_graph=create_graph)
        return energies, -gradient

    def error_sums(self, batch_size: int, with_forces: bool, rank: int = 0, world_size: int = 1) -> Tensor:
        """Sums over this rank's share of the stream (eval mode): squared and absolute energy
        errors, squared and absolute force-component errors, conformations, components (Hartree)."""
        was_training, forward = self.model.training, self.forward
        self.model.eval()
        self.forward = self.model
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        try:
            for species, coordinates, targets, forces in self.batches(batch_size, 0, 0, rank, world_size):
                energies, predicted = self.predict(species, coordinates, with_forces)
                e = (energies.detach().double() - targets.double())
                sums[:2] += torch.stack([e.pow(2).sum(), e.abs().sum()])
                sums[4] += len(e)
                if with_forces:
                    real = (species >= 0).unsqueeze(-1).expand_as(forces)
                    f = (predicted.detach().double() - forces.double())[real]
                    sums[2:4] += torch.stack([f.pow(2).sum(), f.abs().sum()])
                    sums[5] += f.numel()
        finally:
            self.model.train(was_training)
            self.forward = forward
        return sums
