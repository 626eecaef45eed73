"""Training data read from disk batch by batch, so memory does not grow with the data (chapter 10).

The in-memory path (:class:`~anibook_utils.data.ANIData`, AEVs precomputed) holds every
conformation and, worse, 384 float32 AEV numbers per atom: about 1.5 kB an atom, hundreds of
GB for all of ANI-1. :class:`H5Stream` instead keeps only an index of the files' molecule
groups and of their *chunks* (runs of ``chunk`` consecutive conformations of one molecule, a
few bytes each, never a per-conformation table) and reads chunks with h5py when a batch needs
them; the engine computes the AEVs of each batch on the training device (``feed="in_step"``),
so energies and forces train the same way.

- Shuffling is by chunk: each epoch draws a new order of the chunks, and the conformations
  read in that order are cut into batches of exactly ``batch_size`` (the last one smaller),
  as in memory: an epoch has ``ceil(n / batch_size)`` steps whatever the order, so a per-step
  schedule can be planned. A batch mixes molecules; a file is read in contiguous slices.
- Splits are by a hash of (file, group, row): conformation ``i`` of a group belongs to part
  ``k`` of ``fractions`` whatever the order of reading, with no per-conformation table in memory.
- With several processes every rank draws the same order and takes its contiguous share of
  every global batch (``rank * b / N`` to ``(rank + 1) * b / N``), reading only the chunks that
  share touches: together the ranks take exactly the batches one process would, and every
  conformation once per epoch. A rank whose share of a (last, small) batch is empty takes one
  placeholder row of weight 0, so every rank takes the same steps (DDP needs that).
- Self energies come from per-group sums (one pass over the energies), fitted exactly as
  :func:`~anibook_utils.self_energy.fit_self_energies` fits in-memory data.
- :func:`convert_torchani` writes TorchANI's data sets (ANI-1x, ANI-2x, through
  ``torchani.datasets``) in the ANI-1 layout this reader reads, chunk by chunk.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write
from .data import (ATOMIC_NUMBERS, BOOK_SPLIT, ELEMENTS, HARTREE_TO_KCAL, PADDING, EmptySelectionError,
                   MalformedGroupError, UnsupportedElementError, sha256_of)

__all__ = ["H5Stream", "StreamBatch", "StreamFeeder", "convert_torchani", "evaluate_stream", "fetch_torchani",
           "stream_self_energies", "stream_target_scale"]


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
    ``energies`` (b,) Hartree float64, ``forces`` (b, A, 3) Hartree/Å or None. ``total`` is the
    number of conformations in the whole (global) batch this rank's rows belong to: 0 marks a
    placeholder that must weigh nothing."""

    species: Tensor
    coordinates: Tensor
    energies: Tensor
    forces: Tensor | None
    total: int = -1

    def __len__(self) -> int:
        return int(self.energies.shape[0])


def _symbols(group: h5py.Group) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in group["species"][()].tolist()]


def _index(paths: Sequence[str]) -> list[_Group]:
    """One entry per molecule group of ANI-1-layout files (species, coordinates, energies)."""
    groups: list[_Group] = []
    for path in paths:
        with h5py.File(path, "r") as handle:
            found: list[str] = []
            handle.visititems(lambda name, obj: found.append(name)
                              if isinstance(obj, h5py.Group) and "energies" in obj else None)
            for name in sorted(found):
                g = handle[name]
                if "species" not in g or g["species"].ndim != 1:
                    raise MalformedGroupError(
                        f"{Path(path).name}:{name} is not in the ANI-1 layout (one species list per group). "
                        "Files in TorchANI's layout (ANI-1x, ANI-2x) can be converted: "
                        "anibook_utils.streaming.convert_torchani(...).")
                symbols = _symbols(g)
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


@dataclass(frozen=True)
class EpochPlan:
    """An epoch's reading order: the chunks, shuffled, with the conformations each holds for the
    view (``rows``) and where they start in the epoch (``starts``); ``n`` conformations in all."""

    chunks: np.ndarray  # (C, 3) group, start, stop
    rows: np.ndarray  # (C,) conformations of the view in each chunk
    starts: np.ndarray  # (C,) first position of each chunk in the epoch
    n: int

    def pieces(self, low: int, high: int) -> list[tuple[int, int, int, int, int]]:
        """The chunks covering positions ``low:high`` of the epoch, as ``(group, start, stop,
        skip, take)``: read rows ``start:stop``, keep the view's, then ``take`` of them after ``skip``."""
        ends = self.starts + self.rows
        first = int(np.searchsorted(ends, low, side="right"))
        last = int(np.searchsorted(self.starts, high, side="left"))
        out = []
        for i in range(first, last):
            skip = max(low - int(self.starts[i]), 0)
            take = min(high, int(ends[i])) - int(self.starts[i]) - skip
            if take > 0:
                group, start, stop = (int(v) for v in self.chunks[i])
                out.append((group, start, stop, skip, take))
        return out


def share(low: int, high: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of positions ``low:high`` (shares differ by at most one)."""
    size = high - low
    return low + size * rank // world_size, low + size * (rank + 1) // world_size


class H5Stream:
    """Conformations of ANI-1-layout HDF5 files, read from disk one chunk at a time.

    ``part`` selects one part of ``fractions`` (see :meth:`split`); ``chunk`` is how many
    consecutive conformations of one molecule are read at once.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], chunk: int = 32,
                 fractions: Sequence[float] = BOOK_SPLIT, part: int | None = None, seed: int = 0) -> None:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"No data file at {missing}: check the path(s).")
        self.paths = [str(p) for p in paths]
        self.groups = _index(self.paths)
        self.chunk, self.fractions, self.part, self.seed = chunk, tuple(fractions), part, seed
        self._table: tuple[np.ndarray, np.ndarray] | None = None
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
            view.fractions, view.part, view.seed, view._table = tuple(fractions), k, seed, None
            view.__dict__.pop("_handles", None)
            view.__dict__.pop("_sets", None)
            view.__dict__.pop("_salts", None)
            views.append(view)
        return tuple(views)

    def _members(self, group: _Group, start: int, stop: int) -> np.ndarray:
        """Which rows ``start:stop`` of ``group`` belong to this view's part (a stable hash)."""
        rows = np.arange(start, stop, dtype=np.uint64)
        if self.part is None:
            return np.ones(len(rows), bool)
        salts = self.__dict__.setdefault("_salts", {})
        if group not in salts:
            salts[group] = np.uint64(zlib.crc32(f"{Path(group.path).name}:{group.name}:{self.seed}".encode()) << 32)
        salt = salts[group]
        position = (_splitmix64(rows + salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        edges = np.cumsum((0.0, *self.fractions))
        return (position >= edges[self.part]) & (position < edges[self.part + 1])

    def chunk_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk holding conformations of this view, ``(group, start, stop)`` rows, and how
        many each holds (computed once, from the row hashes; 32 bytes a chunk)."""
        if self._table is None:
            spans, counts = [], []
            for k, g in enumerate(self.groups):
                starts = np.arange(0, g.count, self.chunk)
                members = np.add.reduceat(self._members(g, 0, g.count).astype(np.int64), starts)
                keep = members > 0
                stops = np.minimum(starts + self.chunk, g.count)
                spans.append(np.stack([np.full(int(keep.sum()), k), starts[keep], stops[keep]], 1))
                counts.append(members[keep])
            self._table = (np.concatenate(spans).astype(np.int64), np.concatenate(counts))
        return self._table

    def counts(self) -> np.ndarray:
        """Conformations of this view in each group."""
        chunks, rows = self.chunk_table()
        return np.bincount(chunks[:, 0], weights=rows, minlength=len(self.groups)).astype(np.int64)

    def __len__(self) -> int:
        return int(self.chunk_table()[1].sum())

    def fingerprint(self) -> str:
        """What checkpoints record: the files' SHA-256 and the part."""
        digest = hashlib.sha256(repr((self.fractions, self.part, self.seed)).encode())
        for path in self.paths:
            digest.update(sha256_of(path).encode())
        return digest.hexdigest()[:24]

    # --- reading ---------------------------------------------------------------------------
    def plan(self, epoch: int, seed: int) -> EpochPlan:
        """The epoch's order of chunks (the same on every rank: it depends on ``seed`` and ``epoch`` only)."""
        chunks, rows = self.chunk_table()
        order = np.random.default_rng([seed, epoch]).permutation(len(chunks))
        rows = rows[order]
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        return EpochPlan(chunks[order], rows, starts, int(rows.sum()))

    def steps(self, batch_size: int) -> int:
        """Batches in an epoch: ``ceil(len / batch_size)``, whatever the epoch and the ranks."""
        return math.ceil(len(self) / batch_size)

    def read(self, group: int, start: int, stop: int, skip: int = 0, take: int | None = None) -> StreamBatch:
        """Rows ``start:stop`` of group ``group`` that belong to this view (unpadded), ``take``
        of them after the first ``skip``."""
        g = self.groups[group]
        keep = np.flatnonzero(self._members(g, start, stop))
        keep = keep[skip:None if take is None else skip + take]
        coordinates_set, energies_set, forces_set = self._datasets(group)
        coordinates = torch.from_numpy(np.asarray(coordinates_set[start:stop], dtype=np.float32)[keep])
        energies = torch.from_numpy(np.asarray(energies_set[start:stop], dtype=np.float64)[keep])
        forces = None if forces_set is None else torch.from_numpy(
            np.asarray(forces_set[start:stop], dtype=np.float32)[keep])
        species = torch.tensor(g.species, dtype=torch.long).expand(len(keep), -1)
        return StreamBatch(species, coordinates, energies, forces)

    def _datasets(self, group: int) -> tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset | None]:
        """The group's coordinates, energies and forces datasets, looked up once (the last
        4,096 groups read are remembered: a lookup costs more than a small read)."""
        cache = self.__dict__.setdefault("_sets", {})
        if group not in cache:
            if len(cache) >= 4096:
                cache.pop(next(iter(cache)))
            g = self.groups[group]
            data = self._file(g.path)[g.name]
            cache[group] = (data["coordinates"], data["energies"], data["forces"] if self.has_forces else None)
        return cache[group]

    def _file(self, path: str) -> h5py.File:
        """The open file (opened once per process and view, read-only)."""
        handles = self.__dict__.setdefault("_handles", {})
        if path not in handles or not handles[path].id.valid:
            handles[path] = h5py.File(path, "r")
            self.__dict__.pop("_sets", None)
        return handles[path]

    def close(self) -> None:
        """Close the files this view opened."""
        self.__dict__.pop("_sets", None)
        for handle in self.__dict__.pop("_handles", {}).values():
            handle.close()

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                limit: int | None = None, placeholders: bool = True) -> Iterator[StreamBatch]:
        """This rank's share of each batch of the epoch (at most ``limit`` batches), padded.

        Batch ``b`` holds positions ``b * batch_size`` to ``(b + 1) * batch_size`` of the epoch's
        order; ``total`` is its size. Where this rank's share is empty it yields one placeholder
        row with ``total=0`` (``placeholders=False``: nothing)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        plan = self.plan(epoch, seed)
        steps = math.ceil(plan.n / batch_size)
        for b in range(steps if limit is None else min(steps, limit)):
            low, high = b * batch_size, min((b + 1) * batch_size, plan.n)
            pieces = plan.pieces(*share(low, high, rank, world_size))
            if pieces:
                yield _pad([self.read(*p) for p in pieces], self.width, high - low)
            elif placeholders:
                yield _pad([self.read(*plan.pieces(low, low + 1)[0])], self.width, 0)

    def energy_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per group: element counts (G, 4), conformations, sum and sum of squares of the
        energies, in one pass (what the self-energy fit and the target scale need)."""
        composition = np.array([[g.species.count(i) for i in range(len(ELEMENTS))] for g in self.groups], float)
        counts, sums, squares = (np.zeros(len(self.groups)) for _ in range(3))
        for k, g in enumerate(self.groups):
            for start in range(0, g.count, 1 << 16):
                stop = min(start + (1 << 16), g.count)
                energies = np.asarray(self._file(g.path)[g.name]["energies"][start:stop], dtype=np.float64)
                energies = energies[self._members(g, start, stop)]
                counts[k] += len(energies)
                sums[k] += energies.sum()
                squares[k] += np.square(energies).sum()
        return composition, counts, sums, squares

    def __repr__(self) -> str:
        part = "all" if self.part is None else f"part {self.part} of {self.fractions}"
        files = ", ".join(Path(p).name for p in self.paths)
        return f"H5Stream({files}: {len(self.groups)} groups, {part}, chunk {self.chunk})"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each entry (SplitMix64's finaliser): nearby rows land far apart."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pad(pieces: list[StreamBatch], width: int, total: int) -> StreamBatch:
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
    return StreamBatch(species, coordinates, torch.cat([p.energies for p in pieces]), forces, total)


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
    shift = composition @ np.nan_to_num(self_energies.double().numpy())  # per group, Hartree
    n = counts.sum()
    total = np.sum(sums - counts * shift)
    total_sq = np.sum(squares - 2 * shift * sums + counts * shift**2)
    return float(np.sqrt(max(total_sq / n - (total / n) ** 2, 0.0)))


class StreamFeeder:
    """Batches of an :class:`H5Stream` for the training engine, on the training device: the
    targets (energies minus self energies), the reference forces, and the model's energies
    (and forces) from AEVs computed in the step."""

    def __init__(self, model: torch.nn.Module, stream: H5Stream, self_energies: Tensor, device: torch.device,
                 aev_constants: Mapping[str, Any]) -> None:
        from .aev import aev_computer

        self.model, self.stream, self.device = model, stream, device
        self.forward = model  # the engine puts a DistributedDataParallel wrapper here for several processes
        self.computer = aev_computer(aev_constants, device=device)
        self.table = torch.cat([torch.nan_to_num(self_energies.double()), torch.zeros(1, dtype=torch.float64)])
        self.table = self.table.to(device)
        self.n = len(stream)

    def batches(self, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                limit: int | None = None, placeholders: bool = True
                ) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None, int]]:
        """``(species, coordinates, targets, forces, total)`` on the device: this rank's share of
        every batch of the epoch (``total``: the whole batch's size, 0 for a placeholder)."""
        for batch in self.stream.batches(batch_size, epoch, seed, rank, world_size, limit, placeholders):
            species = batch.species.to(self.device)
            targets = batch.energies.to(self.device) - self.table[species].sum(dim=1)
            forces = batch.forces.to(self.device) if batch.forces is not None else None
            yield species, batch.coordinates.to(self.device), targets.float(), forces, batch.total

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
            for species, coordinates, targets, forces, _ in self.batches(batch_size, 0, 0, rank, world_size,
                                                                         placeholders=False):
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


def evaluate_stream(model: torch.nn.Module, stream: H5Stream, self_energies: Tensor,
                    aev_constants: Mapping[str, Any] | None = None, batch_size: int = 4096,
                    forces: bool | None = None) -> dict[str, float]:
    """RMSE and MAE (kcal/mol; forces in kcal/mol/Å when the stream has them) of a trained model
    on a stream, read once from disk: what ``TrainResult.evaluate`` gives for data in memory."""
    from .aev import COURSE_AEV_CONSTANTS

    device = next(model.parameters()).device
    with_forces = stream.has_forces if forces is None else forces
    feeder = StreamFeeder(model, stream, self_energies, device, aev_constants or COURSE_AEV_CONSTANTS)
    squared, absolute, f_squared, f_absolute, n, components = (float(v) for v in
                                                               feeder.error_sums(batch_size, with_forces))
    if n == 0:
        raise EmptySelectionError(f"{stream!r} holds no conformations to evaluate.")
    metrics = {"rmse": math.sqrt(squared / n) * HARTREE_TO_KCAL, "mae": absolute / n * HARTREE_TO_KCAL}
    if with_forces:
        metrics["force_rmse"] = math.sqrt(f_squared / components) * HARTREE_TO_KCAL
        metrics["force_mae"] = f_absolute / components * HARTREE_TO_KCAL
    return metrics


# --------------------------------------------------------------------------------------
# TorchANI's data sets (ANI-1x, ANI-2x) in the ANI-1 layout
# --------------------------------------------------------------------------------------

TORCHANI_DATASETS = ("ANI1x", "ANI2x")
"""TorchANI's built-in data sets at the ANI-1 level of theory (ωB97X/6-31G(d)) that the book knows."""


def fetch_torchani(name: str = "ANI1x", lot: str = "wb97x-631gd", download: bool = True) -> Any:
    """TorchANI's built-in data set ``name`` as a ``torchani.datasets.ANIDataset``.

    On first use TorchANI downloads it into its own data folder (``torchani.paths.datasets_dir()``)
    and checks it against the MD5 sums it ships; ANI-1x at ωB97X/6-31G(d) is several GB.
    """
    from .torchani_shim import torchani

    if name not in TORCHANI_DATASETS:
        raise ValueError(f"Unknown TorchANI data set {name!r}: choose one of {TORCHANI_DATASETS}.")
    return getattr(torchani.datasets, name)(lot=lot, download=download, verbose=False)


def _torchani_dataset(source: Any) -> Any:
    """An ``ANIDataset`` from a data set, a path or a list of paths (TorchANI's own HDF5 layout)."""
    from .torchani_shim import torchani

    if isinstance(source, torchani.datasets.ANIDataset):
        return source
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"No data file at {missing}: check the path(s).")
    return torchani.datasets.ANIDataset(paths, verbose=False)


def _sorted_rows(conformers: Mapping[str, np.ndarray], skip_other_elements: bool
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A chunk of TorchANI conformers with each conformation's atoms sorted by element (the
    energy does not depend on the order; coordinates and forces move with their atoms);
    conformations with elements outside ``ELEMENTS`` dropped, or an error."""
    numbers = np.asarray(conformers["species"])
    known = np.array([ATOMIC_NUMBERS[e] for e in ELEMENTS])
    ok = np.isin(numbers, known) | (numbers <= 0)
    if not ok.all():
        if not skip_other_elements:
            others = sorted(set(numbers[~ok].tolist()))
            raise UnsupportedElementError(
                f"The data hold elements with atomic numbers {others}; the book's models know only {ELEMENTS}. "
                "Pass skip_other_elements=True to leave those conformations out.")
        rows = ok.all(axis=1)
        numbers = numbers[rows]
        conformers = {k: np.asarray(v)[rows] for k, v in conformers.items()}
    index = np.where(numbers > 0, np.searchsorted(known, numbers), len(ELEMENTS))  # padding last
    order = np.argsort(index, axis=1, kind="stable")
    out = {"coordinates": np.take_along_axis(np.asarray(conformers["coordinates"]), order[..., None], 1),
           "energies": np.asarray(conformers["energies"], dtype=np.float64)}
    if "forces" in conformers:
        out["forces"] = np.take_along_axis(np.asarray(conformers["forces"]), order[..., None], 1)
    return np.take_along_axis(index, order, 1), out


def _append(handle: h5py.File, species: tuple[int, ...], values: Mapping[str, np.ndarray]) -> None:
    """Append conformations of one composition to its group (created on first use)."""
    name = "".join(f"{ELEMENTS[i]}{species.count(i)}" for i in range(len(ELEMENTS)) if i in species)
    group = handle.require_group(f"converted/{name}")
    if "species" not in group:
        group["species"] = np.array([ELEMENTS[i].encode() for i in species])
        for key, value in values.items():
            group.create_dataset(key, data=value, maxshape=(None, *value.shape[1:]), chunks=True)
        return
    for key, value in values.items():
        dataset = group[key]
        dataset.resize(dataset.shape[0] + len(value), axis=0)
        dataset[-len(value):] = value


def _chunks(dataset: Any, chunk: int, properties: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The data set's conformations, ``chunk`` at a time (never a whole group in memory)."""
    for name, size in dataset.group_sizes.items():
        for start in range(0, size, chunk):
            rows = np.arange(start, min(start + chunk, size))
            yield dataset.get_numpy_conformers(name, idx=rows, properties=properties)


def convert_torchani(source: Any, target: str | os.PathLike, chunk: int = 2500,
                     skip_other_elements: bool = False, forces: bool = True) -> Path:
    """Write a TorchANI data set (an ``ANIDataset``, or paths to its HDF5 files) in the ANI-1
    layout :class:`H5Stream` reads: one group per composition, atoms sorted by element, energies
    (Hartree), coordinates (Å) and, with ``forces``, forces (Hartree/Å). Read and written
    ``chunk`` conformations at a time, so memory stays small whatever the data set's size."""
    dataset = _torchani_dataset(source)
    properties = ["species", "coordinates", "energies"] + (["forces"] if forces else [])
    absent = sorted(set(properties) - set(dataset.properties))
    if absent:
        raise MalformedGroupError(f"The data set has no {absent} (it has {sorted(dataset.properties)}); "
                                  "pass forces=False for energies only.")
    target = Path(target)
    with atomic_write(target) as tmp, h5py.File(tmp, "w") as handle:
        for conformers in _chunks(dataset, chunk, properties):
            index, values = _sorted_rows(conformers, skip_other_elements)
            if not len(index):
                continue
            rows, inverse = np.unique(index, axis=0, return_inverse=True)
            for k, row in enumerate(rows):
                mine = inverse.reshape(-1) == k
                species = tuple(int(i) for i in row if i < len(ELEMENTS))
                _append(handle, species, {key: v[mine][:, :len(species)] if v.ndim > 1 else v[mine]
                                          for key, v in values.items()})
    return target
