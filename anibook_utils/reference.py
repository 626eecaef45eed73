"""Reference labels at the ANI-1 level of theory, recomputed with PySCF (chapter 8).

ANI-1's energies are ωB97X/6-31G(d) single points. PySCF reproduces them to about
0.01 kcal/mol when the d shells are *Cartesian* (six d functions, ``cart=True``), as the
original program used them for 6-31G(d); PySCF's default spherical d shells (five
functions) are 0.3-1.2 kcal/mol off.

- :func:`single_point`: energy (and forces) of one conformation.
- :func:`normal_modes`: optimise, then the Hessian's normal modes and force constants.
- :func:`generate_dataset`: normal-mode sampling + single points into an ANI-1-layout
  HDF5 file, resumable after an interruption; :func:`reference_cli` is its command
  (``python -m anibook_utils reference generate ...``).

PySCF is an optional dependency (``pip install anibook-utils[reference]``); it is
imported only when a function here needs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from .atomic import atomic_write
from .data import ELEMENTS, HARTREE_TO_KCAL, PADDING, formula, sha256_of
from .sampling import MIN_DISTANCE_FACTOR, NormalModes, sample_normal_modes

BOHR = 0.52917721092
"""Å per Bohr (the value PySCF uses)."""


class PySCFMissingError(ImportError):
    """PySCF, the optional quantum-chemistry dependency, is not installed."""


class SCFConvergenceError(RuntimeError):
    """The self-consistent field did not converge for a conformation."""


class GenerationMismatchError(ValueError):
    """A resumed generation was started with different parameters than the saved progress."""


def require_pyscf() -> Any:
    """Import PySCF or raise :class:`PySCFMissingError` saying how to install it."""
    try:
        import pyscf
        from pyscf import dft, grad, hessian, scf  # noqa: F401  (load the submodules we use)
    except ImportError as exc:
        raise PySCFMissingError(
            "Reference calculations need PySCF, an optional dependency. Install it with "
            "`pip install anibook-utils[reference]` (or `pip install pyscf`) and restart "
            "the kernel."
        ) from exc
    return pyscf


@dataclass(frozen=True)
class LevelOfTheory:
    """How a single point is computed.

    ``method`` is ``"hf"`` or an exchange-correlation functional PySCF knows (libxc name,
    e.g. ``"wb97x"``); ``cart`` selects Cartesian (6d) instead of spherical (5d) d shells;
    ``grid_level`` is PySCF's DFT integration grid (0-9).
    """

    method: str = "wb97x"
    basis: str = "6-31G(d)"
    cart: bool = True
    grid_level: int = 2
    conv_tol: float = 1e-10
    max_cycle: int = 100

    def describe(self) -> str:
        shells = "Cartesian d" if self.cart else "spherical d"
        return f"{self.method}/{self.basis} ({shells}, grid level {self.grid_level})"


ANI1_LEVEL = LevelOfTheory()
"""ωB97X/6-31G(d) with Cartesian d shells: reproduces ANI-1's energies (grid level 2 is
the coarsest PySCF grid within 0.01 kcal/mol of them; level 1 is off by up to 0.07)."""


def _symbols_and_xyz(species: Sequence, coordinates: Any) -> tuple[list[str], np.ndarray]:
    """Element symbols and (A, 3) float64 coordinates; index species and padding accepted."""
    xyz = np.asarray(coordinates, dtype=np.float64)
    symbols: list[str] = []
    for s in np.asarray(species).reshape(-1).tolist():
        if isinstance(s, bytes):
            s = s.decode()
        if isinstance(s, (int, np.integer)):
            if s == PADDING:
                continue
            if not 0 <= s < len(ELEMENTS):
                raise ValueError(f"Species index {s} is not in ELEMENTS {ELEMENTS} (or -1).")
            s = ELEMENTS[s]
        symbols.append(str(s))
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] < len(symbols):
        raise ValueError(
            f"coordinates have shape {xyz.shape}; expected ({len(symbols)}, 3) in Å for "
            f"species {symbols}."
        )
    return symbols, xyz[: len(symbols)]


def build_molecule(
    species: Sequence, coordinates: Any, level: LevelOfTheory = ANI1_LEVEL,
    charge: int = 0, spin: int = 0,
) -> Any:
    """A PySCF ``Mole`` (coordinates in Å) with the basis set of ``level``."""
    require_pyscf()
    from pyscf import gto

    symbols, xyz = _symbols_and_xyz(species, coordinates)
    return gto.M(
        atom=list(zip(symbols, xyz.tolist())), basis=level.basis, cart=level.cart,
        unit="Angstrom", charge=charge, spin=spin, verbose=0,
    )


def scf_method(molecule: Any, level: LevelOfTheory = ANI1_LEVEL) -> Any:
    """The (restricted) SCF object for ``level``: RHF for ``"hf"``, otherwise RKS."""
    require_pyscf()
    from pyscf import dft, scf

    if level.method.lower() == "hf":
        mf = scf.RHF(molecule) if molecule.spin == 0 else scf.UHF(molecule)
    else:
        mf = dft.RKS(molecule) if molecule.spin == 0 else dft.UKS(molecule)
        mf.xc = level.method
        mf.grids.level = level.grid_level
    mf.conv_tol = level.conv_tol
    mf.max_cycle = level.max_cycle
    return mf


def _converged_energy(mf: Any, dm0: Any = None) -> float:
    energy = mf.kernel(dm0=dm0)
    if not mf.converged:  # second chance: second-order SCF from where it stopped
        mf = mf.newton()
        energy = mf.kernel(mf.make_rdm1())
    if not mf.converged:
        raise SCFConvergenceError(
            f"SCF did not converge for {mf.mol.atom} (energy {energy}). The geometry may be "
            "unphysical; raise LevelOfTheory.max_cycle or drop this conformation."
        )
    return float(energy)


@dataclass
class SinglePoint:
    """Energy (Hartree) and, when asked for, forces (A, 3) in Hartree/Å."""

    energy: float
    forces: np.ndarray | None = None


def single_point(
    species: Sequence, coordinates: Any, level: LevelOfTheory = ANI1_LEVEL,
    forces: bool = False, charge: int = 0, spin: int = 0,
) -> SinglePoint:
    """One reference calculation; ``species`` as symbols or ELEMENTS indices, Å coordinates."""
    mf = scf_method(build_molecule(species, coordinates, level, charge, spin), level)
    energy = _converged_energy(mf)
    result = SinglePoint(energy)
    if forces:
        gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        result.forces = -np.asarray(gradient) / BOHR
    return result


def single_point_energies(
    species: Sequence, coordinates: Any, level: LevelOfTheory = ANI1_LEVEL,
    progress: bool = True,
) -> np.ndarray:
    """Energies (Hartree) of conformations ``coordinates`` (n, A, 3) of one molecule."""
    from tqdm.auto import tqdm

    xyz = np.asarray(coordinates, dtype=np.float64)
    return np.array(
        [single_point(species, x, level).energy
         for x in tqdm(xyz, desc="single points", disable=not progress)]
    )


def optimize_geometry(
    species: Sequence, coordinates: Any, level: LevelOfTheory = ANI1_LEVEL,
    gtol: float = 2e-5, accept: float = 4e-4, max_steps: int = 200,
) -> tuple[np.ndarray, float]:
    """Minimise the energy (BFGS on analytic gradients); returns (coordinates Å, energy Ha).

    BFGS aims for forces below ``gtol`` Hartree/Å; when numerical noise stops it earlier,
    forces below ``accept`` (Gaussian's default criterion is 8.5e-4 Hartree/Å) are accepted.
    """
    from scipy.optimize import minimize

    symbols, xyz0 = _symbols_and_xyz(species, coordinates)

    def energy_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        mf = scf_method(build_molecule(symbols, flat.reshape(-1, 3), level), level)
        energy = _converged_energy(mf)
        gradient = mf.nuc_grad_method()
        if hasattr(gradient, "grid_response"):  # DFT: exact gradient of the gridded energy
            gradient.grid_response = True
        return energy, np.asarray(gradient.kernel()).reshape(-1) / BOHR

    result = minimize(energy_and_gradient, xyz0.reshape(-1), jac=True, method="BFGS",
                      options={"gtol": gtol, "maxiter": max_steps})
    largest = float(np.abs(result.jac).max())
    if not result.success and largest > accept:
        raise RuntimeError(
            f"Geometry optimisation of {formula(symbols)} did not converge ({result.message}; "
            f"largest force {largest:.2e} Hartree/Å). Start from a better guess."
        )
    return result.x.reshape(-1, 3), float(result.fun)


def normal_modes(
    species: Sequence, coordinates: Any, level: LevelOfTheory = ANI1_LEVEL,
    optimize: bool = True,
) -> NormalModes:
    """Optimise (optionally), then the normal modes from PySCF's analytic Hessian.

    Modes are unit Cartesian vectors (sign fixed: largest component positive); force
    constants ``K_i = q_iᵀ H q_i`` in Hartree/Å² (the Hessian along the mode), as ANI-1's
    sampling formula uses them. Degenerate modes (CH4, NH3) may come out rotated within their
    subspace when numerical noise differs (e.g. thread counts), so the generator stores the
    modes it sampled with.
    """
    require_pyscf()
    from pyscf.hessian import thermo

    symbols, xyz = _symbols_and_xyz(species, coordinates)
    if optimize:
        xyz, _ = optimize_geometry(symbols, xyz, level)
    mf = scf_method(build_molecule(symbols, xyz, level), level)
    energy = _converged_energy(mf)
    hessian = np.asarray(mf.Hessian().kernel()) / BOHR**2  # (A, A, 3, 3) Hartree/Å²
    analysis = thermo.harmonic_analysis(mf.mol, hessian * BOHR**2, imaginary_freq=False)
    modes = np.asarray(analysis["norm_mode"], dtype=np.float64)
    flat = modes.reshape(len(modes), -1)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    # an eigenvector's sign is arbitrary: fix it (largest component positive) so reruns agree
    flat *= np.sign(flat[np.arange(len(flat)), np.abs(flat).argmax(axis=1)])[:, None]
    modes = flat.reshape(modes.shape)
    flat_h = hessian.transpose(0, 2, 1, 3).reshape(3 * len(symbols), 3 * len(symbols))
    flat_q = modes.reshape(len(modes), -1)
    constants = np.einsum("fi,ij,fj->f", flat_q, flat_h, flat_q)
    return NormalModes(
        species=symbols, equilibrium=xyz, energy=energy, modes=modes,
        force_constants=constants, frequencies=np.asarray(analysis["freq_wavenumber"]).real,
    )


# --------------------------------------------------------------------------------------
# Data set generation

STARTING_GEOMETRIES: dict[str, tuple[list[str], list[list[float]]]] = {
    "CH4": (["C", "H", "H", "H", "H"],
            [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
             [0.63, -0.63, -0.63]]),
    "NH3": (["N", "H", "H", "H"],
            [[0, 0, 0.11], [0, 0.94, -0.26], [0.814, -0.47, -0.26], [-0.814, -0.47, -0.26]]),
    "H2O": (["O", "H", "H"], [[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]]),
}
"""Rough starting structures (Å) of the molecules the generator knows; they are optimised."""

DEFAULT_MOLECULES = {"CH4": 1080, "NH3": 720, "H2O": 360}
"""One fifth of ani_gdb_s01, in its 5400:3600:1800 proportions (and its group order)."""

DEFAULT_TEMPERATURE = 2000.0
"""Sampling temperature (K) whose energy spread resembles ani_gdb_s01's (chapter 8)."""

DEFAULT_NAME = "anibook_nms_s01"
EMBEDDED_DATASET = Path(__file__).resolve().parents[1] / "data" / f"{DEFAULT_NAME}.h5"
"""The book's generated data set, shipped in the repository's ``data/`` folder."""
FORMAT_VERSION = 1
_ALIASES = {"H3N": "NH3", "OH2": "H2O", "HOH": "H2O"}

GenerationCallback = Callable[[str, int, float], None]


def progress_path(output: str | os.PathLike) -> Path:
    """The sidecar file that holds an unfinished generation's progress."""
    return Path(str(output) + ".progress.h5")


@dataclass
class GenerationReport:
    """What :func:`generate_dataset` did: counts per molecule and whether it resumed."""

    path: Path
    conformations: dict[str, int]
    rejected: dict[str, int]
    failed: dict[str, int]
    computed: int
    resumed: bool
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Molecule:
    name: str
    modes: NormalModes
    coordinates: np.ndarray  # (n, A, 3) float32: energies are computed on these exact values
    energies: np.ndarray
    done: np.ndarray
    failed: np.ndarray
    rejected: int


def _write_atomic(path: Path, write: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file all or nothing (:func:`~anibook_utils.atomic.atomic_write`)."""
    with atomic_write(path) as tmp, h5py.File(tmp, "w", track_order=True) as out:
        write(out)


def _save_progress(path: Path, params: dict, molecules: list[_Molecule]) -> None:
    def write(out: h5py.File) -> None:
        out.attrs["params"] = json.dumps(params, sort_keys=True)
        out.attrs["format"] = FORMAT_VERSION
        for k, m in enumerate(molecules):
            g = out.create_group(f"mol-{k}")
            g.attrs.update(name=m.name, rejected=m.rejected, energy=m.modes.energy)
            g["species"] = np.array(m.modes.species, dtype="S")
            for key in ("equilibrium", "modes", "force_constants", "frequencies"):
                g[key] = getattr(m.modes, key)
            for key in ("coordinates", "energies", "done", "failed"):
                g[key] = getattr(m, key)

    _write_atomic(path, write)


def _load_progress(path: Path, params: dict) -> list[_Molecule]:
    with h5py.File(path, "r") as f:
        saved = json.loads(f.attrs["params"])
        if saved != params:
            changed = sorted(k for k in set(saved) | set(params) if saved.get(k) != params.get(k))
            raise GenerationMismatchError(
                f"{path} holds an unfinished generation with different parameters "
                f"({', '.join(changed)}). Rerun with the same parameters to resume it, or "
                "delete that file to start over."
            )
        molecules = []
        for k in range(len(f)):
            g = f[f"mol-{k}"]
            modes = NormalModes(
                species=[s.decode() for s in g["species"][()]], energy=float(g.attrs["energy"]),
                **{key: g[key][()] for key in
                   ("equilibrium", "modes", "force_constants", "frequencies")},
            )
            molecules.append(_Molecule(
                name=str(g.attrs["name"]), modes=modes, rejected=int(g.attrs["rejected"]),
                **{key: g[key][()] for key in ("coordinates", "energies", "done", "failed")},
            ))
    return molecules


def _versions() -> dict[str, str]:
    from . import __version__

    versions = {"anibook_utils": __version__, "numpy": np.__version__,
                "h5py": h5py.__version__, "python": platform.python_version()}
    try:
        import pyscf

        versions["pyscf"] = pyscf.__version__
    except ImportError:
        pass
    return versions


def _plan(molecules: dict[str, int] | None) -> dict[str, int]:
    plan: dict[str, int] = {}
    for name, count in (molecules or DEFAULT_MOLECULES).items():
        key = _ALIASES.get(name, name)
        if key not in STARTING_GEOMETRIES:
            raise ValueError(
                f"No starting geometry for {name!r}; known molecules: "
                f"{', '.join(STARTING_GEOMETRIES)}. Add one to STARTING_GEOMETRIES."
            )
        if int(count) < 1:
            raise ValueError(f"Ask for at least one conformation of {name}, not {count}.")
        plan[key] = int(count)
    return plan


def _write_dataset(path: Path, name: str, molecules: list[_Molecule], provenance: dict) -> None:
    def write(out: h5py.File) -> None:
        for key, value in provenance.items():
            out.attrs[key] = value
        root = out.create_group(name)
        for k, m in enumerate(molecules):
            keep = m.done & ~m.failed
            g = root.create_group(f"{name}-{k}")
            g.attrs.update(
                formula=formula(m.modes.species), rejected_geometries=m.rejected,
                failed_scf=int(m.failed.sum()), equilibrium_energy=m.modes.energy,
                equilibrium_coordinates=m.modes.equilibrium, frequencies_cm=m.modes.frequencies,
                normal_modes=m.modes.modes, force_constants=m.modes.force_constants,
            )
            options = dict(compression="gzip", compression_opts=9, shuffle=True,
                           track_times=False)
            g.create_dataset("species", data=np.array(m.modes.species, dtype="S"),
                             track_times=False)
            g.create_dataset("coordinates", data=m.coordinates[keep].astype(np.float32),
                             **options)
            g.create_dataset("energies", data=m.energies[keep].astype(np.float64), **options)

    _write_atomic(path, write)


def generate_dataset(
    output: str | os.PathLike,
    molecules: dict[str, int] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    level: LevelOfTheory = ANI1_LEVEL,
    name: str = DEFAULT_NAME,
    min_distance_factor: float = MIN_DISTANCE_FACTOR,
    checkpoint_every: int = 25,
    callback: GenerationCallback | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> GenerationReport:
    """Normal-mode sample molecules and label them, writing an ANI-1-layout HDF5 file.

    ``molecules`` maps formulas (``"CH4"``, ``"NH3"``, ``"H2O"``) to conformation counts.
    The file holds ``<name>/<name>-<k>/{species, coordinates, energies}`` and provenance
    attributes. Progress is kept in ``<output>.progress.h5`` (replaced atomically every
    ``checkpoint_every`` single points and on any interruption): calling again with the
    same arguments resumes; the final file is renamed into place only when complete.
    ``callback(molecule, index, energy)`` runs after each single point.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    sidecar = progress_path(output)
    plan = _plan(molecules)
    params = {  # everything the result depends on; lists, not dicts, where order matters
        "name": name, "molecules": [[k, v] for k, v in plan.items()],
        "temperature_K": float(temperature), "seed": int(seed),
        "min_distance_factor": float(min_distance_factor), "level": asdict(level),
        "format": FORMAT_VERSION,
    }
    resumed = sidecar.is_file()
    if output.exists() and not resumed and not overwrite:
        raise FileExistsError(
            f"{output} already exists. Pass overwrite=True (--overwrite) to regenerate it."
        )
    state = _load_progress(sidecar, params) if resumed else []
    require_pyscf()

    computed = 0
    try:
        for mol_name, count in list(plan.items())[len(state):]:
            symbols, start = STARTING_GEOMETRIES[mol_name]
            if progress:
                print(f"{mol_name}: optimising and computing normal modes ({level.describe()})")
            modes = normal_modes(symbols, start, level)
            rng = np.random.default_rng([int(seed), zlib.crc32(mol_name.encode())])
            sample = sample_normal_modes(modes, count, temperature, rng, min_distance_factor)
            state.append(_Molecule(
                name=mol_name, modes=modes, rejected=sample.rejected,
                coordinates=sample.coordinates.astype(np.float32),
                energies=np.full(count, np.nan), done=np.zeros(count, bool),
                failed=np.zeros(count, bool),
            ))
            _save_progress(sidecar, params, state)
        total = sum(len(m.done) for m in state)
        bar = tqdm(total=total, initial=sum(int(m.done.sum()) for m in state),
                   desc="single points", disable=not progress)
        since_save = 0
        for m in state:
            for i in np.flatnonzero(~m.done):
                try:
                    m.energies[i] = single_point(m.modes.species, m.coordinates[i], level).energy
                except SCFConvergenceError:
                    m.failed[i] = True
                m.done[i] = True
                computed += 1
                since_save += 1
                bar.update(1)
                if callback is not None:
                    callback(m.name, int(i), float(m.energies[i]))
                if since_save >= checkpoint_every:
                    _save_progress(sidecar, params, state)
                    since_save = 0
        bar.close()
    except BaseException:
        if state:
            _save_progress(sidecar, params, state)
        raise

    provenance: dict[str, Any] = {
        "dataset": name,
        "description": f"Normal-mode sampled conformations of {', '.join(plan)}, labelled at "
                       "the ANI-1 level of theory (anibook chapter 8)",
        "method": level.method, "basis": level.basis, "cart": bool(level.cart),
        "grid_level": level.grid_level, "conv_tol": level.conv_tol,
        "sampling": "normal-mode sampling (Smith, Isayev & Roitberg, Sci. Data 2017)",
        "temperature_K": float(temperature), "seed": int(seed),
        "min_distance_factor": float(min_distance_factor),
        "energy_unit": "Hartree", "coordinate_unit": "Angstrom",
        "molecules": json.dumps(plan), "generator": "anibook_utils.reference.generate_dataset",
        "versions": json.dumps(_versions(), sort_keys=True),
    }
    _write_dataset(output, name, state, provenance)
    sidecar.unlink(missing_ok=True)
    return GenerationReport(
        path=output,
        conformations={m.name: int((m.done & ~m.failed).sum()) for m in state},
        rejected={m.name: m.rejected for m in state},
        failed={m.name: int(m.failed.sum()) for m in state},
        computed=computed, resumed=resumed, provenance=provenance,
    )


FORCE_UNIT = "Hartree/Angstrom"
FORCE_DEFINITION = "minus the gradient of the energy with respect to the coordinates"
FORCE_GENERATOR = ("anibook_utils.reference.add_forces (python -m anibook_utils reference add-forces FILE): "
                   "analytic nuclear gradients at the level of theory the file records")


def forces_progress_path(path: str | os.PathLike) -> Path:
    """The sidecar file that holds an unfinished :func:`add_forces` run's progress."""
    return Path(str(path) + ".forces-progress.h5")


def _level_of_file(attrs: Any) -> LevelOfTheory:
    """The level of theory a generated file's attributes record."""
    return LevelOfTheory(method=str(attrs["method"]), basis=str(attrs["basis"]), cart=bool(attrs["cart"]),
                         grid_level=int(attrs["grid_level"]), conv_tol=float(attrs["conv_tol"]))


def _conformation_groups(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name)
                      if isinstance(obj, h5py.Group) and "coordinates" in obj else None)
    return names


@dataclass
class ForceReport:
    """What :func:`add_forces` did: conformations labelled, and the largest energy difference
    between the recomputed and the stored energies (kcal/mol; a consistency check)."""

    path: Path
    conformations: int
    computed: int
    max_energy_difference: float
    resumed: bool


def add_forces(path: str | os.PathLike, checkpoint_every: int = 25, progress: bool = True,
               energy_tolerance: float = 1e-3) -> ForceReport:
    """Add reference forces to every conformation of a generated data set (chapter 9).

    Each conformation's single point is recomputed at the level of theory the file's
    attributes record, with the nuclear gradient; ``forces`` (shape like ``coordinates``,
    in Hartree/Å, *minus* the gradient) is written beside ``energies`` in every group. The
    recomputed energy must match the stored one within ``energy_tolerance`` kcal/mol,
    otherwise nothing is written. Progress is kept in ``<path>.forces-progress.h5`` (every
    ``checkpoint_every`` single points and on any interruption), so calling again resumes;
    the file itself is replaced atomically, only when every conformation has forces.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    sidecar = forces_progress_path(path)
    with h5py.File(path, "r") as f:
        level = _level_of_file(f.attrs)
        groups = _conformation_groups(f)
        data = {g: (f[g]["species"][()], f[g]["coordinates"][()], f[g]["energies"][()]) for g in groups}
    source = sha256_of(path)
    resumed = sidecar.is_file()
    forces = {g: np.full(xyz.shape, np.nan) for g, (_, xyz, _) in data.items()}
    done = {g: np.zeros(len(xyz), bool) for g, (_, xyz, _) in data.items()}
    if resumed:
        with h5py.File(sidecar, "r") as s:
            if s.attrs.get("source_sha256") != source:
                raise GenerationMismatchError(
                    f"{sidecar} holds forces for another version of {path.name}. Delete it to start over.")
            for g in groups:
                forces[g], done[g] = s[g]["forces"][()], s[g]["done"][()]

    def save() -> None:
        def write(out: h5py.File) -> None:
            out.attrs["source_sha256"] = source
            for g in groups:
                out.create_dataset(f"{g}/forces", data=forces[g])
                out.create_dataset(f"{g}/done", data=done[g])
        _write_atomic(sidecar, write)

    worst, computed = 0.0, 0
    total = sum(len(d) for d in done.values())
    bar = tqdm(total=total, initial=sum(int(d.sum()) for d in done.values()), desc="forces",
               disable=not progress)
    try:
        for g, (species, xyz, energies) in data.items():
            for i in np.flatnonzero(~done[g]):
                point = single_point(species, xyz[i], level, forces=True)
                difference = abs(point.energy - float(energies[i])) * HARTREE_TO_KCAL
                if difference > energy_tolerance:
                    raise GenerationMismatchError(
                        f"{path.name}:{g} conformation {i}: the recomputed energy differs from the stored "
                        f"one by {difference:.4f} kcal/mol, more than {energy_tolerance}; the file was "
                        "not made at the level of theory its attributes record.")
                worst = max(worst, difference)
                forces[g][i], done[g][i] = point.forces, True
                computed += 1
                bar.update(1)
                if computed % checkpoint_every == 0:
                    save()
        bar.close()
    except BaseException:
        save()
        raise

    def write(out: h5py.File) -> None:
        with h5py.File(path, "r") as src:
            for key, value in src.attrs.items():
                out.attrs[key] = value
            for key in src:
                src.copy(src[key], out, name=key)
        out.attrs["force_unit"] = FORCE_UNIT
        out.attrs["forces"] = FORCE_DEFINITION
        out.attrs["force_generator"] = FORCE_GENERATOR
        out.attrs["versions"] = json.dumps(_versions(), sort_keys=True)
        options = dict(compression="gzip", compression_opts=9, shuffle=True, track_times=False)
        for g in groups:
            if "forces" in out[g]:
                del out[g]["forces"]
            out[g].create_dataset("forces", data=forces[g].astype(np.float32), **options)

    _write_atomic(path, write)
    sidecar.unlink(missing_ok=True)
    return ForceReport(path=path, conformations=total, computed=computed,
                       max_energy_difference=worst, resumed=resumed)


@dataclass
class LabelledGroup:
    """Conformations of one molecule to label: element symbols, (n, A, 3) Å coordinates, and
    attributes to store on the group (e.g. how they were made)."""

    species: list[str]
    coordinates: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def label_conformations(
    output: str | os.PathLike, groups: dict[str, LabelledGroup], name: str, provenance: dict[str, Any],
    level: LevelOfTheory = ANI1_LEVEL, checkpoint_every: int = 25, progress: bool = True,
) -> Path:
    """Label given conformations with single points and write them in the ANI-1 layout (chapter 11).

    ``groups`` maps group names to :class:`LabelledGroup`; the file holds
    ``<name>/<group>/{species, coordinates, energies}`` with each group's ``attrs`` and the file's
    ``provenance`` attributes (the level of theory is added). Resumable like
    :func:`generate_dataset`: progress goes to ``<output>.progress.h5`` every
    ``checkpoint_every`` single points (and on any interruption), keyed by a hash of the inputs;
    conformations whose SCF fails are dropped and counted (``failed_scf``).
    """
    from tqdm.auto import tqdm

    output, sidecar = Path(output), progress_path(output)
    digest = hashlib.sha256(json.dumps([name, asdict(level)], sort_keys=True).encode())
    for key, group in groups.items():
        digest.update(key.encode() + "".join(group.species).encode())
        digest.update(np.ascontiguousarray(group.coordinates, dtype=np.float32).tobytes())
    params = digest.hexdigest()
    energies = {k: np.full(len(g.coordinates), np.nan) for k, g in groups.items()}
    done = {k: np.zeros(len(g.coordinates), bool) for k, g in groups.items()}
    if sidecar.is_file():
        with h5py.File(sidecar, "r") as f:
            if f.attrs.get("params") != params:
                raise GenerationMismatchError(
                    f"{sidecar.name} holds the progress of another labelling; delete it to start over.")
            for key in groups:
                energies[key], done[key] = f[key]["energies"][()], f[key]["done"][()]

    def save() -> None:
        def write(out: h5py.File) -> None:
            out.attrs["params"] = params
            for key in groups:
                out.create_dataset(f"{key}/energies", data=energies[key])
                out.create_dataset(f"{key}/done", data=done[key])
        _write_atomic(sidecar, write)

    require_pyscf()
    bar = tqdm(total=sum(len(d) for d in done.values()), initial=sum(int(d.sum()) for d in done.values()),
               desc="single points", disable=not progress)
    computed = 0
    try:
        for key, group in groups.items():
            xyz = np.asarray(group.coordinates, dtype=np.float32)
            for i in np.flatnonzero(~done[key]):
                try:
                    energies[key][i] = single_point(group.species, xyz[i], level).energy
                except SCFConvergenceError:
                    energies[key][i] = np.nan
                done[key][i] = True
                computed += 1
                bar.update(1)
                if computed % checkpoint_every == 0:
                    save()
        bar.close()
    except BaseException:
        save()
        raise

    def write(out: h5py.File) -> None:
        for attr, value in {**provenance, "method": level.method, "basis": level.basis, "cart": bool(level.cart),
                            "grid_level": level.grid_level, "conv_tol": level.conv_tol,
                            "energy_unit": "Hartree", "coordinate_unit": "Angstrom",
                            "versions": json.dumps(_versions(), sort_keys=True)}.items():
            out.attrs[attr] = value
        root = out.create_group(name)
        options = dict(compression="gzip", compression_opts=9, shuffle=True, track_times=False)
        for key, group in groups.items():
            keep = np.isfinite(energies[key])
            g = root.create_group(key)
            g.attrs.update({**group.attrs, "formula": formula(group.species), "failed_scf": int((~keep).sum())})
            g.create_dataset("species", data=np.array(group.species, dtype="S"), track_times=False)
            g.create_dataset("coordinates", data=np.asarray(group.coordinates, dtype=np.float32)[keep], **options)
            g.create_dataset("energies", data=energies[key][keep], **options)

    _write_atomic(output, write)
    sidecar.unlink(missing_ok=True)
    return output


# --------------------------------------------------------------------------------------
# Command line


def _parse_molecules(text: str) -> dict[str, int]:
    plan = {}
    for item in text.split(","):
        name, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r}: write molecules as NAME=COUNT[,NAME=COUNT...], e.g. CH4=1080,NH3=720"
            )
        plan[name.strip()] = int(count)
    return plan


def _level_from_args(args: argparse.Namespace) -> LevelOfTheory:
    return LevelOfTheory(method=args.method, basis=args.basis, cart=not args.spherical,
                         grid_level=args.grid_level)


def _add_level_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default=ANI1_LEVEL.method, help="'hf' or a functional")
    parser.add_argument("--basis", default=ANI1_LEVEL.basis)
    parser.add_argument("--spherical", action="store_true",
                        help="spherical (5d) instead of Cartesian (6d) d shells")
    parser.add_argument("--grid-level", type=int, default=ANI1_LEVEL.grid_level)


def _check(args: argparse.Namespace) -> int:
    from .data import load_dataset

    data = load_dataset(download=False if args.offline else None, verbose=True)
    level = _level_from_args(args)
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    print(f"Recomputing {args.per_molecule} conformation(s) per molecule at {level.describe()}")
    for mol, name in enumerate(data.molecule_names):
        rows = np.flatnonzero(data.molecule_ids.numpy() == mol)
        for i in rng.choice(rows, size=min(args.per_molecule, len(rows)), replace=False):
            energy = single_point(data.species[i], data.coordinates[i], level).energy
            diff = (energy - float(data.energies[i])) * HARTREE_TO_KCAL
            worst = max(worst, abs(diff))
            print(f"  {name:4s} #{i:<6d} published {float(data.energies[i]):.6f} Ha  "
                  f"recomputed {energy:.6f} Ha  difference {diff:+.4f} kcal/mol")
    ok = worst <= args.tolerance
    print(f"Largest difference {worst:.4f} kcal/mol: "
          f"{'within' if ok else 'OUTSIDE'} {args.tolerance} kcal/mol")
    return 0 if ok else 1


def _generate(args: argparse.Namespace) -> int:
    report = generate_dataset(
        args.output, molecules=args.molecules, temperature=args.temperature, seed=args.seed,
        level=_level_from_args(args), name=args.name, checkpoint_every=args.checkpoint_every,
        progress=not args.quiet, overwrite=args.overwrite,
    )
    print(f"Wrote {report.path} ({sum(report.conformations.values())} conformations"
          f"{', resumed' if report.resumed else ''}; {report.computed} single points this run)")
    for mol in report.conformations:
        print(f"  {mol}: {report.conformations[mol]} conformations, {report.rejected[mol]} "
              f"draws rejected (atoms too close), {report.failed[mol]} SCF failures")
    return 0


def _add_forces(args: argparse.Namespace) -> int:
    report = add_forces(args.file, checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    print(f"Added forces to {report.conformations} conformations of {report.path.name}"
          f"{' (resumed)' if report.resumed else ''}; {report.computed} single points this run; "
          f"recomputed energies within {report.max_energy_difference:.2e} kcal/mol of the stored ones")
    return 0


def reference_cli(argv: list[str]) -> int:
    """``python -m anibook_utils reference {generate,check} ...``; returns an exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m anibook_utils reference",
        description="Reference labels at the ANI-1 level of theory with PySCF (chapter 8).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="normal-mode sample and label a data set (resumable)",
        description="Write an ANI-1-layout HDF5 data set; rerun the same command to resume.",
    )
    gen.add_argument("--output", "-o", default=f"{DEFAULT_NAME}.h5")
    gen.add_argument("--molecules", type=_parse_molecules, default=dict(DEFAULT_MOLECULES),
                     help="NAME=COUNT,... (default CH4=1080,NH3=720,H2O=360)")
    gen.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                     help="sampling temperature in K")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--name", default=DEFAULT_NAME, help="top-level group name")
    gen.add_argument("--checkpoint-every", type=int, default=25)
    gen.add_argument("--overwrite", action="store_true", help="replace a finished file")
    gen.add_argument("--quiet", action="store_true")
    _add_level_arguments(gen)
    gen.set_defaults(run=_generate)
    forces = commands.add_parser(
        "add-forces", help="add reference forces to a generated data set (resumable)",
        description="Recompute every conformation with its gradient and add `forces` (Hartree/Å).",
    )
    forces.add_argument("file", help="a data set written by `generate`")
    forces.add_argument("--checkpoint-every", type=int, default=25)
    forces.add_argument("--quiet", action="store_true")
    forces.set_defaults(run=_add_forces)
    check = commands.add_parser(
        "check", help="recompute random ANI-1 conformations and compare with the published energies"
    )
    check.add_argument("--per-molecule", type=int, default=1)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--tolerance", type=float, default=0.05, help="kcal/mol")
    check.add_argument("--offline", action="store_true", help="never download ANI-1")
    _add_level_arguments(check)
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (PySCFMissingError, GenerationMismatchError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; progress is saved. Run the same command again to resume.",
              file=sys.stderr)
        return 130
