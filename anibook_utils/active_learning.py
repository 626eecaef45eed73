"""Pool-based active learning with a committee of models (chapter 11).

ANI-1x was built by *query by committee* {Smith et al., J. Chem. Phys. 148, 241733 (2018)}:
train an ensemble, compute its disagreement on conformations nobody has labelled yet, send the
ones it disagrees on most to the quantum-chemistry oracle, add them to the training set, and
train again. This module holds that loop and the candidate pool it draws from:

- the pool: :class:`PoolRecipe` composes candidates for CH4, NH3 and H2O (normal-mode sampling
  over a wide range of temperatures, snapshots of short hot Langevin MD runs with an ANI
  potential trained on ANI-1, and one X-H bond stretched far beyond equilibrium);
  :func:`generate_pool` labels them once with PySCF at ωB97X/6-31G(d)
  (:func:`anibook_utils.reference.label_conformations`) into ``data/anibook_al_pool.h5``,
  which ships with the book; :func:`load_pool` reads it with each conformation's origin.
  Regenerate it with ``python -m anibook_utils.active_learning generate-pool``;
- the loop: :class:`LoopSettings` (seed-set size, query size, rounds, strategy ``"qbc"`` or
  ``"random"``, ensemble size, training budget), :class:`ActiveLearner` (one loop, one round at
  a time, labels revealed from the pool: in a live loop the oracle would run here),
  :func:`run_active_learning` (several strategies and seeds, their rows cached as JSON like
  :mod:`anibook_utils.experiments`, resumable) and :class:`LearningCurves` (the tidy table,
  the learning curves and the label counts at which a strategy reaches an error);
- :class:`RoundPanel`: a button that runs one more round in a live kernel.

The test conformations are set aside from the pool before anything else and are never
candidates: no strategy can query them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import h5py
import numpy as np
import torch

from . import __version__
from .atomic import atomic_write
from .cache import cache_dir
from .data import BOOK_SPLIT, ELEMENTS, HARTREE_TO_KCAL, ANIData, load_dataset, sha256_of, split_dataset
from .data.files import REPO_DATA_DIR
from .history import plain_log_ticks
from .models import ArchitectureSpec
from .sampling import NormalModes, sample_normal_modes, too_close
from .training import TrainConfig

__all__ = [
    "POOL_NAME", "POOL_PATH", "STRATEGIES", "ActiveLearner", "LearningCurves", "LoopSettings", "Pool",
    "PoolRecipe", "RoundPanel", "compose_pool", "generate_pool", "load_normal_modes", "load_pool",
    "run_active_learning", "split_pool",
]

POOL_NAME = "anibook_al_pool"
POOL_PATH = REPO_DATA_DIR / f"{POOL_NAME}.h5"
"""The labelled candidate pool that ships with the book (``data/anibook_al_pool.h5``)."""
NMS_PATH = REPO_DATA_DIR / "anibook_nms_s01.h5"
"""Chapter 8's data set, whose groups keep each molecule's minimum and normal modes."""
POOL_COMMAND = "python -m anibook_utils.active_learning generate-pool --output data/anibook_al_pool.h5"
SOURCES = ("nms", "md", "stretch")
"""Where a pool conformation comes from: normal-mode sampling, a hot MD snapshot, a bond scan."""


# --------------------------------------------------------------------------------------
# The candidate pool
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRecipe:
    """How the candidate pool is composed (every number that decides its geometries).

    Normal-mode sampling: ``nms_per_temperature`` conformations of each molecule at each of
    ``nms_temperatures`` (K). Hot MD: Langevin dynamics (time step ``md_timestep_fs``, friction
    ``md_friction_per_fs``) with an ANI potential trained on ANI-1's ``ani_gdb_s01`` (the book's
    80/10/10 split with ``seed``; ``md_hidden`` neurons per element, ``TrainConfig.fast`` for
    ``md_epochs`` epochs), started at the minimum with Maxwell-Boltzmann velocities; a snapshot
    every ``md_interval`` steps, ``md_per_trajectory`` snapshots per trajectory and
    ``md_per_temperature`` per molecule and temperature. A trajectory in which an X-H bond grows
    beyond ``md_max_bond`` Å (the potential has no data there and a hydrogen may fly off) or two
    atoms come too close is cut, its last snapshot dropped, and a new one starts. Bond scans:
    the first hydrogen moved along its bond, ``stretch_points`` distances from
    ``stretch_range[0]`` to ``stretch_range[1]`` times the equilibrium length.
    """

    nms_temperatures: tuple[float, ...] = (300.0, 600.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0)
    nms_per_temperature: int = 50
    md_temperatures: tuple[float, ...] = (1000.0, 2000.0, 3000.0)
    md_per_temperature: int = 50
    md_per_trajectory: int = 25
    md_interval: int = 40
    md_timestep_fs: float = 0.5
    md_friction_per_fs: float = 0.01
    md_max_bond: float = 1.8
    md_max_trajectories: int = 40
    md_hidden: tuple[int, ...] = (64, 32)
    md_epochs: int = 40
    stretch_points: int = 16
    stretch_range: tuple[float, float] = (0.85, 2.2)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def size(self) -> int:
        """Conformations the recipe asks for, all molecules together (before SCF failures)."""
        per_molecule = (len(self.nms_temperatures) * self.nms_per_temperature
                        + len(self.md_temperatures) * self.md_per_temperature + self.stretch_points)
        return 3 * per_molecule


def load_normal_modes(path: str | os.PathLike = NMS_PATH) -> dict[str, NormalModes]:
    """Each molecule's minimum and normal modes, as chapter 8 computed and stored them."""
    modes = {}
    with h5py.File(path, "r") as f:
        for group in f[list(f)[0]].values():
            a = group.attrs
            species = [s.decode() for s in group["species"][()]]
            modes[str(a["formula"])] = NormalModes(
                species=species, equilibrium=np.asarray(a["equilibrium_coordinates"], dtype=np.float64),
                energy=float(a["equilibrium_energy"]), modes=np.asarray(a["normal_modes"], dtype=np.float64),
                force_constants=np.asarray(a["force_constants"], dtype=np.float64),
                frequencies=np.asarray(a["frequencies_cm"], dtype=np.float64))
    return modes


def _rng(recipe: PoolRecipe, key: str) -> np.random.Generator:
    return np.random.default_rng([int(recipe.seed), zlib.crc32(key.encode())])


def _group_name(molecule: str, source: str, temperature: float | None = None) -> str:
    return f"{molecule}-{source}" + (f"-{int(round(temperature)):04d}K" if temperature is not None else "")


def nms_groups(modes: Mapping[str, NormalModes], recipe: PoolRecipe) -> dict[str, Any]:
    """Normal-mode samples of each molecule at each temperature (one group each)."""
    from .reference import LabelledGroup

    groups = {}
    for molecule, m in modes.items():
        for temperature in recipe.nms_temperatures:
            name = _group_name(molecule, "nms", temperature)
            sample = sample_normal_modes(m, recipe.nms_per_temperature, temperature, _rng(recipe, name))
            groups[name] = LabelledGroup(m.species, sample.coordinates, {
                "molecule": molecule, "source": "nms", "temperature_K": float(temperature),
                "rejected_geometries": int(sample.rejected)})
    return groups


def _bonds_ok(species: Sequence[str], xyz: np.ndarray, max_bond: float) -> bool:
    """Every hydrogen within ``max_bond`` Å of the heavy atom, and no two atoms too close."""
    bonds = np.linalg.norm(xyz[1:] - xyz[0], axis=1)
    return bool(bonds.max() <= max_bond) and not too_close(list(species), xyz)


def md_snapshots(potential: Any, m: NormalModes, temperature: float, recipe: PoolRecipe,
                 rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Snapshots of hot Langevin MD: ``(coordinates, trajectories run, trajectories cut)``."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as velocities
    from ase.md.langevin import Langevin

    from .calculator import ANICalculator

    # thermalize_momenta replaced MaxwellBoltzmannDistribution in ASE 3.28
    thermalize = getattr(velocities, "thermalize_momenta", None) or velocities.MaxwellBoltzmannDistribution

    calculator = ANICalculator(potential)
    frames: list[np.ndarray] = []
    runs = cut = 0
    while len(frames) < recipe.md_per_temperature:
        if runs >= recipe.md_max_trajectories:
            raise RuntimeError(f"{runs} MD trajectories of {''.join(m.species)} at {temperature} K gave only "
                               f"{len(frames)} snapshots: lower the temperature or raise md_max_bond.")
        runs += 1
        atoms = Atoms(m.species, positions=m.equilibrium)
        atoms.calc = calculator
        thermalize(atoms, temperature_K=temperature, rng=rng)
        velocities.Stationary(atoms)  # no drift of the whole molecule
        atoms.set_constraint(FixCom())  # ASE's advice for small molecules (instead of fixcm=True)
        dynamics = Langevin(atoms, recipe.md_timestep_fs * units.fs, temperature_K=temperature,
                            friction=recipe.md_friction_per_fs / units.fs, fixcm=False, rng=rng)
        for _ in range(min(recipe.md_per_trajectory, recipe.md_per_temperature - len(frames))):
            dynamics.run(recipe.md_interval)
            xyz = atoms.get_positions()
            if not _bonds_ok(m.species, xyz, recipe.md_max_bond):
                cut += 1
                break
            frames.append(xyz.copy())
    return np.array(frames), runs, cut


def md_potential(recipe: PoolRecipe, progress: bool = False) -> Any:
    """The ANI potential that drives the hot MD: trained on ani_gdb_s01 with the book's split."""
    from .training import train

    data = load_dataset("ani_gdb_s01", fallback=False)
    train_set, val_set, _ = split_dataset(data, BOOK_SPLIT, seed=recipe.seed)
    spec = ArchitectureSpec({e: tuple(recipe.md_hidden) for e in ELEMENTS})
    result = train(spec, train_set, val_set, TrainConfig.fast(epochs=recipe.md_epochs, seed=recipe.seed),
                   progress=progress)
    return result.potential()


def md_groups(modes: Mapping[str, NormalModes], recipe: PoolRecipe, potential: Any) -> dict[str, Any]:
    """Hot-MD snapshots of each molecule at each MD temperature (one group each)."""
    from .reference import LabelledGroup

    groups = {}
    for molecule, m in modes.items():
        for temperature in recipe.md_temperatures:
            name = _group_name(molecule, "md", temperature)
            xyz, runs, cut = md_snapshots(potential, m, temperature, recipe, _rng(recipe, name))
            groups[name] = LabelledGroup(m.species, xyz, {
                "molecule": molecule, "source": "md", "temperature_K": float(temperature),
                "trajectories": runs, "trajectories_cut": cut})
    return groups


def stretch_groups(modes: Mapping[str, NormalModes], recipe: PoolRecipe) -> dict[str, Any]:
    """One X-H bond of each molecule scanned from compressed to far stretched (one group each)."""
    from .reference import LabelledGroup

    groups = {}
    for molecule, m in modes.items():
        factors = np.linspace(*recipe.stretch_range, recipe.stretch_points)
        frames = np.repeat(m.equilibrium[None], len(factors), axis=0)
        bond = m.equilibrium[1] - m.equilibrium[0]
        frames[:, 1] = m.equilibrium[0] + factors[:, None] * bond
        groups[_group_name(molecule, "stretch")] = LabelledGroup(m.species, frames, {
            "molecule": molecule, "source": "stretch", "bond_factors": factors,
            "equilibrium_bond": float(np.linalg.norm(bond))})
    return groups


def compose_pool(recipe: PoolRecipe = PoolRecipe(), potential: Any = None,
                 modes: Mapping[str, NormalModes] | None = None, progress: bool = False) -> dict[str, Any]:
    """The pool's candidate geometries, unlabelled: ``{group name: LabelledGroup}``.

    ``potential`` drives the MD (default: :func:`md_potential`, trained here on ani_gdb_s01).
    """
    modes = dict(modes or load_normal_modes())
    if potential is None:
        potential = md_potential(recipe, progress=progress)
    return {**nms_groups(modes, recipe), **md_groups(modes, recipe, potential), **stretch_groups(modes, recipe)}


def _candidates_path(output: Path) -> Path:
    return Path(str(output) + ".candidates.h5")


def _save_candidates(path: Path, recipe: PoolRecipe, groups: Mapping[str, Any]) -> None:
    with atomic_write(path) as tmp, h5py.File(tmp, "w", track_order=True) as out:
        out.attrs["recipe"] = json.dumps(recipe.to_dict(), sort_keys=True)
        for name, group in groups.items():
            g = out.create_group(name)
            g["species"] = np.array(group.species, dtype="S")
            g["coordinates"] = np.asarray(group.coordinates, dtype=np.float32)
            g.attrs["attrs"] = json.dumps({k: np.asarray(v).tolist() for k, v in group.attrs.items()})


def _load_candidates(path: Path, recipe: PoolRecipe) -> dict[str, Any] | None:
    from .reference import LabelledGroup

    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        if json.loads(f.attrs["recipe"]) != recipe.to_dict():
            raise ValueError(f"{path.name} holds the candidates of another recipe: delete it to start over.")
        return {name: LabelledGroup([s.decode() for s in g["species"][()]], g["coordinates"][()],
                                    json.loads(g.attrs["attrs"])) for name, g in f.items()}


def _pool_provenance(recipe: PoolRecipe) -> dict[str, Any]:
    return {
        "dataset": POOL_NAME, "seed": int(recipe.seed), "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "description": "Candidate pool for active learning (anibook chapter 11): CH4, NH3, H2O by normal-mode "
                       "sampling at several temperatures, hot Langevin MD with an ANI potential trained on "
                       "ani_gdb_s01, and X-H bond scans",
        "nms_temperatures_K": list(recipe.nms_temperatures), "md_temperatures_K": list(recipe.md_temperatures),
        "md_potential": f"MaskedANIModel {list(recipe.md_hidden)} per element, TrainConfig.fast(epochs="
                        f"{recipe.md_epochs}, seed={recipe.seed}) on ani_gdb_s01, split (0.8, 0.1, 0.1) seed {recipe.seed}",
        "command": POOL_COMMAND, "generator": "anibook_utils.active_learning.generate_pool",
        "energy_unit": "Hartree", "coordinate_unit": "Angstrom",
    }


def _label_part(output: str, groups: dict[str, Any], provenance: dict[str, Any]) -> str:
    """One worker's share of the labelling (a separate process, one thread)."""
    from .reference import label_conformations, require_pyscf

    require_pyscf().lib.num_threads(1)
    label_conformations(output, groups, POOL_NAME, provenance, progress=False)
    return output


def _shares(groups: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """Consecutive groups in ``parts`` shares of about equal numbers of conformations."""
    sizes = np.cumsum([len(g.coordinates) for g in groups.values()])
    cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, parts) / parts)
    shares: list[dict[str, Any]] = [{} for _ in range(parts)]
    for k, (name, group) in enumerate(groups.items()):
        shares[int(np.searchsorted(cuts, k, side="right"))][name] = group
    return [share for share in shares if share]


def _merge_parts(output: Path, parts: Sequence[Path], order: Sequence[str]) -> None:
    """One pool file from the workers' files: the first one's attributes and every group named in ``order``."""
    sources = [h5py.File(p, "r") for p in parts]
    try:
        with atomic_write(output) as tmp, h5py.File(tmp, "w", track_order=True) as out:
            for key, value in sources[0].attrs.items():
                out.attrs[key] = value
            root = out.create_group(POOL_NAME)
            for name in order:
                source = next(f for f in sources if name in f[POOL_NAME])
                source.copy(source[POOL_NAME][name], root, name=name)
    finally:
        for f in sources:
            f.close()


def generate_pool(output: str | os.PathLike = POOL_PATH, recipe: PoolRecipe = PoolRecipe(),
                  overwrite: bool = False, progress: bool = True, workers: int = 1) -> Path:
    """Compose the pool and label it with PySCF (ωB97X/6-31G(d), Cartesian d), resumably.

    The geometries are composed once and kept in ``<output>.candidates.h5`` (the MD depends on
    a trained potential: keeping them makes a resumed run label exactly the same ones); the
    labelling keeps its progress in ``<output>.progress.h5`` (with ``workers`` > 1, each of
    that many processes labels a share of the groups into ``<output>.part-<k>.h5``, with its own
    progress file, and the shares are merged at the end). Rerun the same call (or
    ``python -m anibook_utils.active_learning generate-pool``) after an interruption to resume;
    the pool appears at ``output`` only when every conformation is labelled.
    """
    from .reference import label_conformations, require_pyscf

    require_pyscf()
    output = Path(output)
    candidates = _candidates_path(output)
    if output.exists() and not overwrite and not candidates.exists():
        raise FileExistsError(f"{output.name} already exists: pass overwrite=True (--overwrite) to regenerate it.")
    groups = _load_candidates(candidates, recipe)
    if groups is None:
        groups = compose_pool(recipe, progress=progress)
        _save_candidates(candidates, recipe, groups)
    provenance = _pool_provenance(recipe)
    if workers <= 1:
        label_conformations(output, groups, POOL_NAME, provenance, progress=progress)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        shares = _shares(groups, workers)
        parts = [Path(f"{output}.part-{k}.h5") for k in range(len(shares))]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
            for done in pool.map(_label_part, [str(p) for p in parts], shares, [provenance] * len(shares)):
                if progress:
                    print(f"labelled {Path(done).name}")
        _merge_parts(output, parts, list(groups))
        for part in parts:
            part.unlink()
    candidates.unlink(missing_ok=True)
    return output


@dataclass
class Pool:
    """The labelled pool: the conformations and, per conformation, where each comes from.

    ``molecule`` (formula), ``source`` (one of :data:`SOURCES`), ``temperature`` (K; NaN for
    bond scans) and ``group`` are NumPy arrays aligned with ``data``.
    """

    data: ANIData
    molecule: np.ndarray
    source: np.ndarray
    temperature: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.data)

    def label(self) -> np.ndarray:
        """A short origin per conformation: ``"nms 300 K"``, ``"md 2000 K"``, ``"stretch"``."""
        return np.array([s if not math.isfinite(t) else f"{s} {t:.0f} K"
                         for s, t in zip(self.source, self.temperature)])

    def counts(self) -> dict[str, int]:
        """Conformations per source."""
        return {s: int((self.source == s).sum()) for s in SOURCES if (self.source == s).any()}


def load_pool(path: str | os.PathLike | None = None) -> Pool:
    """Read the pool (default: the bundled, checksum-verified ``anibook_al_pool``) with each
    conformation's molecule, source and sampling temperature."""
    data = load_dataset(POOL_NAME) if path is None else load_dataset(path=path)
    with h5py.File(data.source, "r") as f:
        attrs = {name: dict(f[name].attrs) for name in data.groups}
    ids = data.molecule_ids.numpy()
    pick = lambda key, default: np.array([attrs[g].get(key, default) for g in data.groups])[ids]  # noqa: E731
    return Pool(data=data, molecule=np.array(data.molecule_names)[ids],
                source=pick("source", "").astype(str), temperature=pick("temperature_K", np.nan).astype(float),
                group=np.array(data.groups)[ids])


@dataclass
class PoolSplit:
    """Positions in the pool: ``candidates`` a loop may query and ``test`` it never sees."""

    candidates: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        overlap = np.intersect1d(self.candidates, self.test)
        if len(overlap):
            raise ValueError(f"{len(overlap)} conformations are both candidates and test conformations.")


def split_pool(pool: Pool, test_fraction: float = 0.2, seed: int = 0,
               sources: Sequence[str] = ("nms", "md")) -> PoolSplit:
    """Set aside ``test_fraction`` of every group of the given ``sources`` as the test set.

    Stratified by group (molecule, source, temperature), so the test set has the pool's mix;
    the bond scans (``"stretch"``) are left out of both by default: they are chapter 11's
    out-of-range geometries, not candidates.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"Unknown source(s) {unknown}: choose from {SOURCES}.")
    rng = np.random.default_rng(seed)
    candidates, test = [], []
    for group in dict.fromkeys(pool.group[np.isin(pool.source, list(sources))]):
        members = rng.permutation(np.flatnonzero(pool.group == group))
        k = int(round(test_fraction * len(members)))
        test.append(members[:k])
        candidates.append(members[k:])
    return PoolSplit(np.sort(np.concatenate(candidates)), np.sort(np.concatenate(test)))


STRATEGIES = ("qbc", "random")
"""``qbc``: query the candidates with the largest ρ; ``random``: query candidates at random."""


@dataclass(frozen=True)
class LoopSettings:
    """One active-learning loop's settings.

    ``labels``: the label counts at which the ensemble is trained and scored; the first is the
    seed set (drawn at random, the same number from each molecule), each later one adds a query
    of the difference, split among the molecules in proportion to their unlabelled candidates
    (``per_molecule``; False: the strategy ranks all candidates together). ``members`` models of
    ``hidden`` neurons per element make the committee;
    each trains for about ``steps`` optimizer steps of ``batch_size`` conformations
    (``TrainConfig.fast``'s recipe otherwise), whatever the number of labels, and is selected on
    the validation part of the labelled data: ``val_fraction`` of every batch of revealed
    labels goes there.
    """

    labels: tuple[int, ...] = (48, 96, 192, 384)
    members: int = 4
    hidden: tuple[int, ...] = (64,)
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-2
    val_fraction: float = 0.2
    per_molecule: bool = True

    def __post_init__(self) -> None:
        labels = tuple(int(n) for n in self.labels)
        if not labels or labels[0] < 6 or any(b <= a for a, b in zip(labels, labels[1:])):
            raise ValueError(f"labels must be increasing label counts starting at 6 or more (two per molecule "
                             f"for training and one for validation), got {self.labels!r}.")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}.")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or not 2 <= self.members <= 50:
            raise ValueError(f"A committee needs 2 to 50 members (2 at least to disagree), got {self.members!r}.")
        self.config(self.labels[0])  # validates steps, batch size and lr now

    @property
    def spec(self) -> ArchitectureSpec:
        return ArchitectureSpec({e: self.hidden for e in ELEMENTS})

    def config(self, train_size: int) -> TrainConfig:
        """The members' training recipe for ``train_size`` conformations (about ``steps`` steps)."""
        per_epoch = math.ceil(max(train_size, 1) / self.batch_size)
        return TrainConfig.fast(epochs=max(1, round(self.steps / per_epoch)), batch_size=self.batch_size, lr=self.lr)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _code_fingerprint() -> str:
    """A hash of the code a loop's results depend on (stored rows are not reused after it changes)."""
    digest = hashlib.sha256(__version__.encode())
    for name in ("active_learning.py", "ensemble.py", "training.py", "feeding.py", "models.py", "aev.py",
                 "self_energy.py"):
        path = Path(__file__).with_name(name)
        digest.update(path.read_bytes() if path.is_file() else name.encode())
    return digest.hexdigest()[:16]


class ActiveLearner:
    """One pool-based loop: ``strategy`` (``"qbc"`` or ``"random"``) with ``seed``.

    :meth:`train_round` trains the committee on the labels revealed so far and scores its mean
    on the test set; :meth:`query` picks candidates and reveals their labels (here read from the
    pool; in a live loop the oracle, a PySCF single point, would run at this moment);
    :meth:`run` alternates the two along ``settings.labels``. ``rows`` holds one record per
    trained round; ``labelled`` and ``validation`` the revealed positions in the pool.
    """

    def __init__(self, pool: Pool, split: PoolSplit, settings: LoopSettings = LoopSettings(),
                 strategy: str = "qbc", seed: int = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {strategy!r}: choose one of {STRATEGIES}.")
        if settings.labels[-1] > len(split.candidates):
            raise ValueError(f"settings.labels asks for {settings.labels[-1]} labels but the pool has only "
                             f"{len(split.candidates)} candidates.")
        self.pool, self.split, self.settings = pool, split, settings
        self.strategy, self.seed = strategy, int(seed)
        self.labelled: list[int] = []
        self.validation: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        self.ensemble: Any = None
        self._test = pool.data.subset(split.test)
        self._reveal(self._seed_set())

    @property
    def round(self) -> int:
        """Rounds trained so far."""
        return len(self.rows)

    def _rng(self, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.round, purpose])

    def _seed_set(self) -> np.ndarray:
        """The first labels: the same number of random candidates of each molecule."""
        rng, molecules = self._rng(1), sorted(set(self.pool.molecule[self.split.candidates]))
        shares = np.diff(np.linspace(0, self.settings.labels[0], len(molecules) + 1).round().astype(int))
        return np.concatenate([rng.choice(self.split.candidates[self.pool.molecule[self.split.candidates] == m],
                                          size=n, replace=False) for m, n in zip(molecules, shares)])

    def _reveal(self, positions: np.ndarray) -> None:
        """Add labels; ``val_fraction`` of them (at least one per molecule in the first batch) validate."""
        positions = np.asarray(positions, dtype=np.int64)
        if np.isin(positions, self.split.test).any():
            raise RuntimeError("A test conformation was about to be labelled: the test set must never be queried.")
        if np.isin(positions, self.labelled).any():
            raise RuntimeError("A conformation was about to be labelled twice.")
        rng = self._rng(2)
        count = max(1, int(round(self.settings.val_fraction * len(positions))))
        if not self.labelled:  # the seed set: one validation conformation of each molecule at least
            picks = [rng.choice(positions[self.pool.molecule[positions] == m])
                     for m in sorted(set(self.pool.molecule[positions]))]
            rest = rng.permutation(np.setdiff1d(positions, picks))[: max(0, count - len(picks))]
            chosen = set(np.concatenate([picks, rest]).astype(int).tolist())
        else:
            chosen = set(rng.choice(positions, size=min(count, len(positions)), replace=False).tolist())
        self.labelled += [int(p) for p in positions]
        self.validation |= chosen

    def unlabelled(self) -> np.ndarray:
        """Candidates not labelled yet (never a test conformation)."""
        return np.setdiff1d(self.split.candidates, self.labelled)

    def _train_committee(self, round_index: int, progress: bool = False) -> tuple[ANIData, ANIData]:
        """Train round ``round_index``'s committee on the labels so far; its training and validation sets."""
        from .ensemble import train_ensemble

        train_idx = np.array([p for p in self.labelled if p not in self.validation])
        val_idx = np.array(sorted(self.validation))
        train_set, val_set = self.pool.data.subset(np.sort(train_idx)), self.pool.data.subset(val_idx)
        base_seed = 1000 * self.seed + 50 * round_index  # members: base_seed, base_seed + 1, ...
        self.ensemble = train_ensemble(self.settings.spec, train_set, val_set, self.settings.config(len(train_set)),
                                       members=self.settings.members, seed=base_seed, progress=progress)
        return train_set, val_set

    def train_round(self, progress: bool = False) -> dict[str, Any]:
        """Train the committee on the labels so far, score it on the test set, record a row."""
        train_set, val_set = self._train_committee(self.round, progress)
        prediction = self.ensemble.predict(self._test)
        errors = prediction.errors_kcal(self._test)
        sources = self.pool.source[self.split.test]
        row = {
            "strategy": self.strategy, "seed": self.seed, "round": self.round, "labels": len(self.labelled),
            "train_size": len(train_set), "val_size": len(val_set),
            "test_rmse": float(np.sqrt(np.mean(errors**2))), "test_mae": float(np.mean(np.abs(errors))),
            "test_rmse_by_source": {s: float(np.sqrt(np.mean(errors[sources == s] ** 2))) for s in sorted(set(sources))},
            "member_test_rmse": float(np.mean(np.sqrt(np.mean(prediction.member_errors_kcal(self._test) ** 2, axis=1)))),
            "test_rho_kcal": float(np.mean(prediction.rho_kcal)), "train_time": self.ensemble.train_time,
            "labelled": [int(p) for p in self.labelled], "validation": sorted(int(p) for p in self.validation),
            "queried": [],
        }
        self.rows.append(row)
        return row

    def query(self, count: int) -> np.ndarray:
        """Pick ``count`` unlabelled candidates by the strategy, reveal their labels, return them."""
        if not self.rows:
            raise RuntimeError("Train a round first (train_round()): the committee picks the queries.")
        if self.ensemble is None and self.strategy == "qbc":  # resumed: train the last committee again
            self._train_committee(self.round - 1)
        pool_left = self.unlabelled()
        if not 0 < count <= len(pool_left):
            raise ValueError(f"Can query between 1 and {len(pool_left)} candidates, not {count}.")
        rng = self._rng(3)
        rho = None if self.strategy == "random" else self.ensemble.predict(self.pool.data.subset(pool_left)).rho_kcal
        groups = self.pool.molecule[pool_left] if self.settings.per_molecule else np.zeros(len(pool_left), int)
        picked_at: list[np.ndarray] = []
        for group, share in _allocate(groups, count).items():
            where = np.flatnonzero(groups == group)
            if rho is None:
                picked_at.append(rng.choice(where, size=share, replace=False))
            else:
                picked_at.append(where[np.argsort(-rho[where], kind="stable")[:share]])
        chosen = np.concatenate(picked_at)
        picked = pool_left[chosen]
        row = self.rows[-1]
        row["queried"] = [int(p) for p in picked]
        row["queried_rho_kcal"] = None if rho is None else float(np.mean(rho[chosen]))
        row["queried_origin"] = _tally(self.pool.label()[picked])
        self._reveal(picked)
        return picked

    def run(self, callback: Callable[[dict[str, Any]], Any] | None = None, progress: bool = False) -> list[dict]:
        """Follow ``settings.labels`` to the end: query up to each count, then train and score."""
        trained = False
        for target in self.settings.labels:
            if self.rows and self.rows[-1]["labels"] >= target:
                continue
            if len(self.labelled) < target:
                self.query(target - len(self.labelled))
                if callback is not None:
                    callback(self.rows[-1])  # the query is part of the previous round's record
            self.train_round(progress=progress)
            trained = True
        if trained and callback is not None:
            callback(self.rows[-1])
        return self.rows

    @classmethod
    def resume(cls, pool: Pool, split: PoolSplit, settings: LoopSettings, strategy: str, seed: int,
               rows: Sequence[Mapping[str, Any]]) -> "ActiveLearner":
        """A learner that continues after the stored ``rows`` (the last row's query, if any, revealed;
        without one, the last round's committee is trained again, identically, when needed)."""
        learner = cls(pool, split, settings, strategy, seed)
        if rows:
            learner.rows = [dict(r) for r in rows]
            last = learner.rows[-1]
            learner.labelled = [int(p) for p in last["labelled"]]
            learner.validation = set(int(p) for p in last["validation"])
            if last["queried"]:
                learner._reveal(np.asarray(last["queried"]))
        return learner


def _allocate(groups: np.ndarray, count: int) -> dict[Any, int]:
    """``count`` split among the groups in proportion to their sizes (largest remainders first)."""
    names, sizes = np.unique(groups, return_counts=True)
    exact = count * sizes / sizes.sum()
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares), kind="stable")[: count - int(shares.sum())]:
        shares[i] += 1
    return {name: int(n) for name, n in zip(names.tolist(), shares) if n > 0}


def _tally(labels: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[str(label)] = counts.get(str(label), 0) + 1
    return counts


RESULTS_FORMAT = "anibook-active-learning"


def results_path(name: str) -> Path:
    """Where a chapter's loop results live: ``<cache>/active_learning/<name>.json``."""
    return cache_dir() / "active_learning" / f"{name}.json"


def _run_key(pool: Pool, split: PoolSplit, settings: LoopSettings, strategy: str, seed: int) -> str:
    parts = {"settings": settings.to_dict(), "strategy": strategy, "seed": int(seed), "code": _code_fingerprint(),
             "pool": pool.data.fingerprint(), "test": [int(i) for i in split.test],
             "candidates": hashlib.sha256(np.asarray(split.candidates, np.int64).tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_results(path: Path | None) -> dict[str, list[dict[str, Any]]]:
    if path is None or not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return dict(payload.get("runs", {})) if payload.get("format") == RESULTS_FORMAT else {}


def _write_results(path: Path | None, runs: Mapping[str, list[dict[str, Any]]]) -> None:
    if path is not None:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps({"format": RESULTS_FORMAT, "runs": dict(runs)}))


def run_active_learning(pool: Pool, split: PoolSplit, settings: LoopSettings = LoopSettings(),
                        strategies: Sequence[str] = STRATEGIES, seeds: Sequence[int] = (0, 1, 2),
                        path: str | os.PathLike | None = None, reuse: bool = True, progress: bool = True,
                        callback: Callable[[dict[str, Any]], Any] | None = None) -> "LearningCurves":
    """Run the loop for every strategy and seed; rows are kept in ``path`` (JSON) after each round.

    A loop stored for the same settings, strategy, seed, pool, split and code is reused
    (``reuse=False`` runs it again); an interrupted one continues from its last stored round.
    """
    path = Path(path) if path is not None else None
    stored = _read_results(path)
    bar = None
    total = len(strategies) * len(seeds) * len(settings.labels)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="rounds", unit="round")
    keys = []
    try:
        for strategy in strategies:
            for seed in seeds:
                key = _run_key(pool, split, settings, strategy, seed)
                keys.append(key)
                stored[key] = rows = stored.get(key, []) if reuse else []
                learner = ActiveLearner.resume(pool, split, settings, strategy, seed, rows)
                if bar is not None:
                    bar.update(len(learner.rows))

                def save(row: dict[str, Any], key: str = key, learner: ActiveLearner = learner) -> None:
                    new_rows = len(learner.rows) - len(stored.get(key, []))
                    stored[key] = list(learner.rows)
                    _write_results(path, stored)
                    if bar is not None and new_rows > 0:
                        bar.update(new_rows)
                    if callback is not None:
                        callback(row)

                learner.run(callback=save)
    finally:
        if bar is not None:
            bar.close()
    return LearningCurves([row for key in keys for row in stored[key]])


CURVE_COLUMNS = ("strategy", "seed", "round", "labels", "train_size", "val_size", "test_rmse", "test_mae",
                 "member_test_rmse", "test_rho_kcal", "queried_rho_kcal", "train_time")


class LearningCurves:
    """The rows of active-learning loops: one per strategy, seed and round (tidy)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self, columns: Sequence[str] = CURVE_COLUMNS):
        """A pandas DataFrame with one row per strategy, seed and round."""
        import pandas as pd

        return pd.DataFrame([{c: r.get(c) for c in columns} for r in self.rows], columns=list(columns))

    def curve(self, strategy: str, metric: str = "test_rmse"):
        """Mean, standard deviation, min, max and count of ``metric`` over seeds, per label count."""
        frame = self.frame()
        chosen = frame[frame["strategy"] == strategy]
        if chosen.empty:
            raise KeyError(f"No rows for strategy {strategy!r}; have {sorted(set(frame['strategy']))}.")
        return chosen.groupby("labels")[metric].agg(["mean", "std", "min", "max", "count"])

    def rows_of(self, strategy: str, seed: int) -> list[dict[str, Any]]:
        """One loop's rows, in round order (e.g. to continue it: ``ActiveLearner.resume``)."""
        return sorted((r for r in self.rows if r["strategy"] == strategy and r["seed"] == seed),
                      key=lambda r: r["round"])

    def labels_to_reach(self, strategy: str, rmse: float) -> int | None:
        """The fewest labels at which ``strategy``'s mean test RMSE is at or below ``rmse`` (None: never)."""
        curve = self.curve(strategy)["mean"]
        reached = curve[curve <= rmse]
        return int(reached.index.min()) if len(reached) else None

    def comparison(self, strategy: str = "qbc", baseline: str = "random") -> dict[str, Any]:
        """How many labels ``strategy`` needs for ``baseline``'s final mean test RMSE."""
        base = self.curve(baseline)["mean"]
        target = float(base.iloc[-1])
        needed = self.labels_to_reach(strategy, target)
        final_labels = int(base.index.max())
        return {"baseline_final_rmse": target, "baseline_labels": final_labels, "labels_needed": needed,
                "label_fraction": None if needed is None else needed / final_labels,
                f"{strategy}_final_rmse": float(self.curve(strategy)["mean"].iloc[-1])}

    def queried_origins(self, strategy: str) -> dict[str, int]:
        """How many queried conformations came from each origin (all seeds and rounds together)."""
        total: dict[str, int] = {}
        for row in self.rows:
            if row["strategy"] == strategy:
                for origin, n in (row.get("queried_origin") or {}).items():
                    total[origin] = total.get(origin, 0) + n
        return total

    def plot(self, ax=None, strategies: Sequence[str] | None = None, metric: str = "test_rmse"):
        """Learning curves: mean ``metric`` against labels (log-log), the seeds' range shaded."""
        import matplotlib.pyplot as plt

        ax = ax if ax is not None else plt.subplots(figsize=(5.5, 3.8))[1]
        names = {"qbc": "query by committee", "random": "random selection"}
        for strategy in strategies or sorted({r["strategy"] for r in self.rows}):
            curve = self.curve(strategy, metric)
            line, = ax.plot(curve.index, curve["mean"], marker="o", label=names.get(strategy, strategy))
            ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        ax.set_xlabel("labelled conformations")
        ax.set_ylabel("test RMSE (kcal/mol)")
        ax.legend()
        return ax


def recompute_labels(pool: Pool, positions: Sequence[int], level: Any = None) -> np.ndarray:
    """The oracle: PySCF single points (Hartree) of pool conformations, at the pool's level by default."""
    from .reference import ANI1_LEVEL, single_point

    level = level if level is not None else ANI1_LEVEL
    data = pool.data
    return np.array([single_point(data.species[int(i)], data.coordinates[int(i)], level).energy for i in positions])


def _curves_png(curves: LearningCurves, title: str) -> bytes:
    """The learning curves as PNG bytes, drawn without pyplot."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.8), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    curves.plot(ax)
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class RoundPanel:
    """A button that runs one more round of several loops at once (chapter 11).

    ``learners`` (e.g. a QBC loop and a random one with the same seed, already run) each query
    ``query`` more candidates with their own strategy when *One more round* is pressed, then
    retrain and score; the figure shows their learning curves so far and the line under the
    button the newest test RMSEs. A round takes seconds, so it runs in the calling thread (the
    button is disabled meanwhile); when a pool runs out of candidates the panel says so.
    """

    def __init__(self, learners: Sequence[ActiveLearner], query: int = 48) -> None:
        import ipywidgets as w

        if not learners or any(not learner.rows for learner in learners):
            raise ValueError("Give the panel learners that have trained at least one round (learner.run()).")
        self.learners = list(learners)
        self.query = w.IntSlider(value=query, min=8, max=192, step=8, description="new labels",
                                 style={"description_width": "initial"})
        self.button = w.Button(description="One more round", button_style="primary", icon="play")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self.button.on_click(lambda _: self.run_round())
        self.widget = w.VBox([w.HBox([self.query, self.button]), self.status, self.image])
        self._refresh()

    def curves(self) -> LearningCurves:
        return LearningCurves(row for learner in self.learners for row in learner.rows)

    def _refresh(self, note: str = "") -> None:
        latest = ", ".join(f"{learner.strategy} {learner.rows[-1]['test_rmse']:.2f} kcal/mol with "
                           f"{learner.rows[-1]['labels']} labels" for learner in self.learners)
        self.status.value = f"<b>Round {self.learners[0].round}</b>: test RMSE {latest}. {note}"
        self.image.value = _curves_png(self.curves(), "learning curves so far")

    def run_round(self) -> bool:
        """Query, reveal, retrain and score every learner once; False (with a message) if impossible."""
        left = min(len(learner.unlabelled()) for learner in self.learners)
        count = min(int(self.query.value), left)
        if count < 1:
            self.status.value = "<b>The pool has no candidates left</b>: every candidate is labelled."
            return False
        self.button.disabled = True
        try:
            for learner in self.learners:
                learner.query(count)
                learner.train_round()
        finally:
            self.button.disabled = False
        self._refresh(f"({count} new labels each)" if count == self.query.value else
                      f"(only {count} candidates were left)")
        return True

    def _ipython_display_(self) -> None:
        """Ending a cell with ``panel`` shows it (ipywidgets 7 and 8 alike)."""
        from IPython.display import display

        display(self.widget)


def pool_cli(argv: Sequence[str] | None = None) -> int:
    """``python -m anibook_utils.active_learning generate-pool [--output ...] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m anibook_utils.active_learning",
                                     description="The candidate pool of chapter 11 (PySCF labels).")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate-pool", help="compose and label the pool (resumable)")
    gen.add_argument("--output", "-o", default=str(POOL_PATH))
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true", help="replace a finished file")
    gen.add_argument("--workers", type=int, default=1, help="processes labelling in parallel (one thread each)")
    gen.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = generate_pool(args.output, PoolRecipe(seed=args.seed), overwrite=args.overwrite,
                             progress=not args.quiet, workers=args.workers)
    except (ImportError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; progress is saved. Run the same command again to resume.", file=sys.stderr)
        return 130
    print(f"Wrote {Path(path).name} ({sha256_of(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(pool_cli())
