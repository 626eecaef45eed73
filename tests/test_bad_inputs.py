"""Bad inputs at every public entry point, in one place.

The data layer, the array cache, ``TrainConfig``/``train``, checkpoints and resuming, potentials,
the retraining panel and the command line, each against missing, damaged, foreign-layout,
non-finite, wrong-type, out-of-range and mutated inputs. Every refusal is checked three ways: the
exception type, a message that says what to do (and never suggests ``weights_only=False``), and
that no file the call touched changed (:func:`refused` hashes them before and after).

Tests marked "Issue item N" are the ones for the reliability issue's defects 1-8.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import anibook_utils.checkpoints as checkpoints_module
import anibook_utils.training as training_module
import anibook_utils.widgets as widgets_module
from anibook_utils.__main__ import main as cli
from anibook_utils.cache import cached_arrays
from anibook_utils.checkpoints import CheckpointError, CheckpointMismatchError
from anibook_utils.data import (
    ChecksumMismatchError,
    DataError,
    DataFileNotFoundError,
    EmptySelectionError,
    MalformedGroupError,
    NonFiniteValueError,
    NotHDF5Error,
    UnknownDatasetError,
    UnsupportedElementError,
    iterate_batches,
    load_dataset,
    split_dataset,
)
from anibook_utils.models import ArchitectureError, ArchitectureSpec
from anibook_utils.potential import ANIPotential, PotentialInputError, load_potential, save_potential
from anibook_utils.training import ConfigError, TrainConfig, train
from anibook_utils.widgets import TrainingPanel

ROOT = Path(__file__).resolve().parents[1]
SMALL = ArchitectureSpec({"H": (8,), "C": (8,), "N": (8,), "O": (8,)})
METRICS = ("epoch", "train_rmse", "train_mae", "val_rmse", "val_mae", "loss", "lr")

pytestmark = pytest.mark.usefixtures("real_data")


# --- helpers ----------------------------------------------------------------------------------


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), keyed by path: a new, removed
    or changed file changes the snapshot."""
    state: dict[str, str] = {}
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in files:
            state[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
        if not path.exists():
            state[str(path)] = "absent"
    return state


@contextlib.contextmanager
def refused(kind: type[BaseException], *advice: str, touched: tuple[Path, ...] = (), never: tuple[str, ...] = ()):
    """Expect ``kind`` whose message matches every regex in ``advice`` (what to do) and none in
    ``never``; the files and folders in ``touched`` must be exactly as they were."""
    before = snapshot(*touched)
    with pytest.raises(kind) as info:
        yield info
    message = str(info.value)
    for pattern in advice:
        assert re.search(pattern, message, re.IGNORECASE | re.DOTALL), f"{pattern!r} not in: {message}"
    for pattern in (*never, r"weights_only\s*=\s*False", "Traceback"):
        assert not re.search(pattern, message, re.IGNORECASE), f"{pattern!r} in: {message}"
    assert snapshot(*touched) == before, "a file the refused call touched changed"


def write_h5(path: Path, groups: dict[str, dict[str, np.ndarray]]) -> Path:
    with h5py.File(path, "w") as handle:
        for name, arrays in groups.items():
            group = handle.require_group(name)
            for key, value in arrays.items():
                group[key] = value
    return path


def water(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"species": np.array([b"O", b"H", b"H"]),
            "coordinates": rng.normal(size=(n, 3, 3)).astype(np.float32),
            "energies": -76.0 + 0.01 * rng.normal(size=n)}


@pytest.fixture(scope="module")
def sets(real_data):
    """300 training and 100 validation conformations of ani_gdb_s01."""
    index = torch.randperm(len(real_data), generator=torch.Generator().manual_seed(1))[:400]
    return split_dataset(real_data.subset(index), 0.75, seed=0)


def small(**changes) -> TrainConfig:
    values = dict(epochs=2, batch_size=64, optimizer="adamw", lr=1e-2, schedule="onecycle", warmup_fraction=0.2,
                  standardize=True, num_threads=1, device="cpu")
    return TrainConfig(**{**values, **changes})


def history_metrics(history) -> list[tuple]:
    return [tuple(record[k] for k in METRICS) for record in history]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- the data layer ---------------------------------------------------------------------------

FILE_CASES = {
    # name: (groups written to mine.h5, exception, advice, never)
    "zero conformations": ({"mol/water": {**water(), "coordinates": np.zeros((0, 3, 3), np.float32),
                                          "energies": np.zeros(0)}},
                           MalformedGroupError, ("no conformations", "Remove the group"),
                           ("truncated", "delete it", "fetch-data")),
    "ANI-1x layout": ({"mol/water": {"atomic_numbers": np.array([8, 1, 1]), "coordinates": water()["coordinates"],
                                     "wb97x_dz.energy": water()["energies"]}},
                      MalformedGroupError, ("ANI-1x", "ANIDataset"), ("truncated", "delete it")),
    "atomic numbers as species": ({"mol/water": {**water(), "species": np.array([8, 1, 1])}},
                                  UnsupportedElementError, ("atomic numbers", "symbols"), ("truncated", "delete it")),
    "unknown element": ({"mol/hcl": {**water(), "species": np.array([b"Cl", b"H", b"H"])}},
                        UnsupportedElementError, ("Cl", "Remove that group"), ("delete it",)),
    "NaN energy": ({"mol/water": {**water(), "energies": np.array([-76.0, np.nan, -76.0, -76.0])}},
                   NonFiniteValueError, ("NaN or infinite", "Drop them"), ()),
    "infinite coordinate": ({"mol/water": {**water(), "coordinates": np.full((4, 3, 3), np.inf, np.float32)}},
                            NonFiniteValueError, ("NaN or infinite", "Drop them"), ()),
    "text coordinates": ({"mol/water": {**water(), "coordinates": np.full((4, 3, 3), b"x")}},
                         MalformedGroupError, ("not numbers", "in Å"), ("truncated", "delete it")),
    "no atoms": ({"mol/none": {"species": np.array([], dtype="S1"), "coordinates": np.zeros((4, 0, 3), np.float32),
                               "energies": np.zeros(4)}},
                 MalformedGroupError, ("at least one atom",), ("truncated",)),
    "misshaped coordinates": ({"mol/water": {**water(), "coordinates": np.zeros((4, 2, 3), np.float32)}},
                              MalformedGroupError, (r"expected \(conformations, 3, 3\)",), ()),
    "energies missing": ({"mol/water": {k: v for k, v in water().items() if k != "energies"}},
                         MalformedGroupError, ("lacks", "Fix or remove the group"), ()),
    "no molecule groups": ({"other": {"x": np.zeros(3)}}, EmptySelectionError, ("no molecule groups",), ()),
}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_foreign_and_damaged_files_are_named_and_left_alone(case, tmp_path, monkeypatch):
    """Issue item 7 (zero conformations, ANI-1x layout, atomic numbers) and the rest of the reader's cases."""
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    groups, kind, advice, never = FILE_CASES[case]
    path = write_h5(tmp_path / "mine.h5", groups)
    with refused(kind, *advice, touched=(tmp_path,), never=never):
        load_dataset(path=path)


@pytest.mark.parametrize("content, advice", [
    (b"", "not a readable HDF5 file"), (b"hello, not HDF5", "not a readable HDF5 file"),
])
def test_a_user_file_that_is_not_hdf5_is_never_to_be_deleted(content, advice, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "mine.h5"
    path.write_bytes(content)
    with refused(NotHDF5Error, advice, "Check how it was written", touched=(tmp_path,), never=("delete it",)):
        load_dataset(path=path)


def test_a_truncated_user_file(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    whole = Path(real_data.source).read_bytes()
    path = tmp_path / "mine.h5"
    path.write_bytes(whole[: len(whole) // 2])
    with refused(NotHDF5Error, "truncated", "Check how it was written", touched=(tmp_path,), never=("delete it",)):
        load_dataset(path=path)


def test_a_damaged_registered_file_says_fetch_data(real_data, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    damaged = bytearray(Path(real_data.source).read_bytes())
    damaged[4000] ^= 0xFF
    (folder / "ani_gdb_s01.h5").write_bytes(bytes(damaged))
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(folder))
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    with refused(ChecksumMismatchError, "SHA-256", "fetch-data", touched=(tmp_path,)):
        load_dataset(fallback=False)


@pytest.mark.parametrize("call, kind, advice", [
    (lambda tmp: load_dataset(path=tmp / "nowhere.h5"), DataFileNotFoundError, "Check the path"),
    (lambda tmp: load_dataset(path=tmp), DataFileNotFoundError, "Check the path"),
    (lambda tmp: load_dataset(path=123), TypeError, "pass name="),
    (lambda tmp: load_dataset("ani_gdb_s99"), UnknownDatasetError, "Known data sets"),
    (lambda tmp: load_dataset(name=5), UnknownDatasetError, "Known data sets"),
], ids=["missing file", "a folder", "path of the wrong type", "unknown name", "name of the wrong type"])
def test_missing_and_wrong_type_paths(call, kind, advice, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    with refused(kind, advice, touched=(tmp_path,)):
        call(tmp_path)


@pytest.mark.parametrize("call, kind, advice", [
    (lambda d: split_dataset(d, "0.8"), ValueError, r"e\.g\. \(0\.8, 0\.1, 0\.1\)"),
    (lambda d: split_dataset(d, (0.8, 0.3)), ValueError, "add up to 1"),
    (lambda d: split_dataset(d, (0.8, math.nan, 0.2)), ValueError, "add up to 1"),
    (lambda d: split_dataset(d, 1.5), ValueError, "between 0 and 1"),
    (lambda d: split_dataset(d, 0.8, seed=1.5), ValueError, "seed must be a whole number"),
    (lambda d: split_dataset(d, 0.8, seed="0"), ValueError, "seed must be a whole number"),
    (lambda d: split_dataset(d, 0.8, by="atom"), ValueError, "'conformation' or 'molecule'"),
    (lambda d: split_dataset(d.select_molecules(["H2O"]), 0.8, by="molecule"), EmptySelectionError,
     "split by conformation"),
    (lambda d: list(iterate_batches(d, 0)), ValueError, "positive whole number"),
    (lambda d: list(iterate_batches(d, 2.5)), ValueError, "positive whole number"),
    (lambda d: list(iterate_batches(d, "64")), ValueError, "positive whole number"),
    (lambda d: d.subset([len(d)]), IndexError, "valid: 0 to"),
    (lambda d: d.subset([0.5, 1.5]), TypeError, r"\.long\(\)"),
    (lambda d: d.subset(torch.ones(3, dtype=torch.bool)), IndexError, "one entry per conformation"),
    (lambda d: d.subset([]), EmptySelectionError, "at least one index"),
    (lambda d: d.select_molecules(["C2H6"]), EmptySelectionError, "Available molecules"),
], ids=["fraction as text", "fractions over 1", "NaN fraction", "fraction out of range", "float seed", "text seed",
        "unknown split kind", "too few molecules", "batch size 0", "float batch size", "text batch size",
        "index out of range", "float indices", "mask of the wrong length", "no indices", "unknown molecule"])
def test_splits_batches_and_selections_refuse_bad_arguments(real_data, call, kind, advice):
    with refused(kind, advice, touched=(Path(real_data.source),)):
        call(real_data)


def test_a_boolean_mask_selects_and_a_mutated_data_set_is_a_new_one(real_data):
    """Masks were read as the indices 0 and 1; a tensor changed in place kept its old fingerprint."""
    mask = real_data.energies < float(real_data.energies.median())
    by_mask = real_data.subset(mask)
    assert len(by_mask) == int(mask.sum())
    assert torch.equal(by_mask.energies, real_data.subset(mask.nonzero().view(-1)).energies)
    copy = real_data.subset(torch.arange(50))
    before = copy.fingerprint()
    copy.energies[0] += 1e-3  # an in-place edit, e.g. a unit conversion
    assert copy.fingerprint() != before


def test_hand_built_data_sets_are_checked():
    from anibook_utils.data import ANIData

    species = torch.zeros(3, 2, dtype=torch.long)
    with refused(DataError, "coordinates must be", "load_dataset"):
        ANIData(species, torch.zeros(3, 3, 3), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
                ["H2"], ["g"])
    with refused(DataError, "species must be"):
        ANIData(species.double(), torch.zeros(3, 2, 3), torch.zeros(3, dtype=torch.float64),
                torch.zeros(3, dtype=torch.long), ["H2"], ["g"])


# --- the array cache (issue item 6) -------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(folder))
    return folder


def make_read_only(folder: Path, monkeypatch) -> None:
    """Behave as a read-only (or someone else's shared) folder would for a root-owned test: creating,
    renaming or deleting files in it raises PermissionError."""
    inside = lambda p: Path(os.fspath(p)).resolve().is_relative_to(folder.resolve())  # noqa: E731

    def deny(real):
        @functools.wraps(real)
        def guarded(*args, **kwargs):
            paths = [a for a in args if isinstance(a, (str, os.PathLike))] + [kwargs.get("dir") or ""]
            if any(p and inside(p) for p in paths):
                raise PermissionError(13, "Permission denied", str(paths[0]))
            return real(*args, **kwargs)
        return guarded

    for module, name in ((os, "unlink"), (os, "remove"), (os, "replace"), (os, "rename"), (tempfile, "mkstemp")):
        monkeypatch.setattr(module, name, deny(getattr(module, name)))


def entry_of(folder: Path) -> Path:
    entries = list(folder.glob("ani-*.npz"))
    assert len(entries) == 1, entries
    return entries[0]


def store(entry: Path, **changes) -> None:
    with np.load(entry) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with open(entry, "wb") as out:
        np.savez(out, **arrays)


def assert_same_data(a, b) -> None:
    for name in ("species", "coordinates", "energies", "molecule_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.molecule_names == b.molecule_names and a.groups == b.groups


def test_a_corrupt_entry_in_a_read_only_cache_is_read_around(real_data, cache, monkeypatch):
    """Issue item 6: the unlink of a corrupt entry raised PermissionError in a read-only cache."""
    load_dataset()
    entry = entry_of(cache)
    entry.write_bytes(b"not a zip file")
    make_read_only(cache, monkeypatch)
    before = snapshot(cache)
    with pytest.warns(UserWarning) as caught:
        again = load_dataset()
    assert_same_data(again, real_data)
    said = " ".join(str(w.message) for w in caught)
    assert "unusable" in said and "rebuilding" in said and "continuing without it" in said
    assert snapshot(cache) == before  # nothing deleted, nothing written


ENTRY_CASES = {
    "missing array": dict(energies=None),
    "energies of another length": "short",
    "energies as a column": "column",
    "species as text": "species_text",
    "ids as text": "ids_text",
    "species as floats": "species_float",
    "coordinates in float64": "coords_f64",
    "names as numbers": dict(molecule_names=np.arange(3)),
    "id out of range": "ids_range",
    "padding before atoms": "padding_first",
    "non-finite energy": "nan",
}


def damaged_arrays(entry: Path, case) -> dict:
    if isinstance(case, dict):
        return case
    with np.load(entry) as stored:
        a = {name: stored[name] for name in stored.files}
    return {
        "short": lambda: dict(energies=a["energies"][:-1]),
        "column": lambda: dict(energies=a["energies"][:, None]),
        "species_text": lambda: dict(species=a["species"].astype(str)),
        "ids_text": lambda: dict(molecule_ids=a["molecule_ids"].astype(str)),
        "species_float": lambda: dict(species=a["species"].astype(np.float64)),
        "coords_f64": lambda: dict(coordinates=a["coordinates"].astype(np.float64)),
        "ids_range": lambda: dict(molecule_ids=a["molecule_ids"] + 5),
        "padding_first": lambda: dict(species=np.roll(a["species"], 1, axis=1)),
        "nan": lambda: dict(energies=np.where(np.arange(len(a["energies"])) == 7, np.nan, a["energies"])),
    }[case]()


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
@pytest.mark.parametrize("case", ENTRY_CASES, ids=list(ENTRY_CASES))
def test_a_valid_npz_with_wrong_arrays_is_rebuilt_not_served(real_data, cache, monkeypatch, case, read_only):
    """Issue item 6: missing arrays gave a raw KeyError forever, inconsistent ones a wrong data set."""
    load_dataset()
    entry = entry_of(cache)
    store(entry, **damaged_arrays(entry, ENTRY_CASES[case]))
    if read_only:
        make_read_only(cache, monkeypatch)
    before = snapshot(cache)
    with pytest.warns(UserWarning, match="unusable"):
        again = load_dataset()
    assert_same_data(again, real_data)
    if read_only:
        assert snapshot(cache) == before
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the rebuilt entry is served without a word
            assert_same_data(load_dataset(), real_data)


def test_a_cache_folder_that_is_a_file(real_data, tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(blocker))
    with pytest.warns(UserWarning, match="continuing without it"):
        assert_same_data(load_dataset(), real_data)
    assert blocker.read_text() == "not a folder"


def test_cached_arrays_rebuilds_what_its_check_refuses(cache):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(3)}

    def check(arrays):
        if arrays["x"].dtype != np.int64:
            raise TypeError("x must be int64")

    assert cached_arrays("t", "k", build, check)["x"].tolist() == [0, 1, 2]
    np.savez(cache / "t-k.npz", x=np.array(["a"]))
    with pytest.warns(UserWarning, match="x must be int64"):
        assert cached_arrays("t", "k", build, check)["x"].tolist() == [0, 1, 2]
    assert len(calls) == 2


@pytest.mark.xfail(strict=True, reason="aev.precompute_aevs checks only the shape of cached AEVs (aev.py, "
                                       "another engineer's file): float64 or NaN AEVs are served")
def test_cached_aevs_of_the_wrong_kind_are_rebuilt(sets, cache):
    from anibook_utils.aev import precompute_aevs

    _, val_set = sets
    good = precompute_aevs(val_set)
    entry = next(cache.glob("aev-*.npz"))
    np.savez(entry, aevs=np.full(tuple(good.shape), np.nan))
    with pytest.warns(UserWarning, match="unusable"):
        again = precompute_aevs(val_set)
    assert torch.equal(again, good)


# --- TrainConfig and train (issue item 5) --------------------------------------------------------

CONFIG_CASES = [
    ("lr", math.nan, "lr must be a positive number"), ("lr", math.inf, "lr must be a positive number"),
    ("weight_decay", math.nan, "weight_decay must be a number >= 0"),
    ("momentum", math.nan, r"momentum must be a number in \[0, 1\)"),
    ("warmup_fraction", math.nan, "warmup_fraction must be a number in"),
    ("final_lr_fraction", math.inf, "final_lr_fraction must be a number in"),
    ("plateau_factor", 1.0, "plateau_factor must be a number in"),
    ("min_improvement", math.nan, "min_improvement"), ("max_time", math.nan, "max_time must be a positive"),
    ("target_val_rmse", -1.0, "target_val_rmse must be a positive"),
    ("seed", 1.5, "seed must be an integer >= 0"), ("seed", -1, "seed must be an integer >= 0"),
    ("seed", "0", "seed must be an integer >= 0"),
    ("device", "gpu", "use 'auto', 'cpu', 'cuda'"), ("device", "cuda:x", "use 'auto', 'cpu', 'cuda'"),
    ("device", "mps", "use 'auto', 'cpu', 'cuda'"), ("device", 3, "must be 'auto', 'cpu', 'cuda'"),
    ("epochs", "10", "epochs must be a positive integer"), ("epochs", 0, "epochs must be a positive integer"),
    ("batch_size", True, "batch_size must be a positive integer"),
    ("early_stopping", 2.0, "early_stopping must be a positive integer"),
    ("num_threads", 0, "num_threads must be a positive integer"),
    ("standardize", "yes", "standardize must be True or False"),
    ("optimizer", "adagrad", "choose one of"), ("schedule", "linear", "choose one of"), ("feed", "x", "choose one of"),
]


@pytest.mark.parametrize("name, value, advice", CONFIG_CASES, ids=[f"{n}={v!r}" for n, v, _ in CONFIG_CASES])
def test_a_config_field_that_cannot_run_is_refused_when_made(name, value, advice):
    with refused(ConfigError, advice):
        TrainConfig(**{name: value})


MUTATIONS = [("epochs", 0), ("lr", math.nan), ("schedule", "linear"), ("seed", 1.5), ("device", "gpu"),
             ("batch_size", 0), ("feed", "x"), ("weight_decay", -1.0)]


@pytest.mark.parametrize("name, value", MUTATIONS, ids=[f"{n}={v!r}" for n, v in MUTATIONS])
def test_a_field_assigned_after_construction_is_checked_when_training_starts(sets, tmp_path, name, value):
    """Issue item 5: train() did not re-check, so epochs=0 ran zero steps and reported 'completed'."""
    config = small(schedule="none")
    setattr(config, name, value)
    seen = []
    with refused(ConfigError, name, touched=(tmp_path,)):
        train(SMALL, *sets, config, checkpoint_dir=tmp_path / "run", callback=seen.append, progress=False)
    assert seen == [] and not (tmp_path / "run").exists()


def nan_at(data, name: str):
    broken = data.subset(torch.arange(len(data)))
    getattr(broken, name).view(-1)[5] = math.nan
    return broken


@pytest.mark.parametrize("make, kind, advice, never", [
    (lambda t, v: ("not data", v), TypeError, "train_data must be an ANIData", ()),
    (lambda t, v: (t, [1, 2, 3]), TypeError, "val_data must be an ANIData", ()),
    (lambda t, v: (t, nan_at(v, "energies")), NonFiniteValueError, r"val_data has NaN.*Drop them", ("diverged",)),
    (lambda t, v: (nan_at(t, "coordinates"), v), NonFiniteValueError, r"train_data has NaN.*coordinates", ()),
    (lambda t, v: (t.subset([0]), v), ConfigError, "standardize=False", ("diverged",)),
], ids=["text as training set", "list as validation set", "NaN validation energy", "NaN training coordinate",
        "one training conformation"])
def test_training_data_that_cannot_train(sets, tmp_path, make, kind, advice, never):
    """A NaN validation energy was reported as 'training diverged: lower the learning rate';
    an infinite coordinate trained silently."""
    train_set, val_set = make(*sets)
    with refused(kind, advice, touched=(tmp_path,), never=never):
        train(SMALL, train_set, val_set, small(), checkpoint_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("epochs, warmup_fraction", [(20, 0.05), (10, 0.1), (2, 0.5)])
def test_a_one_step_warm_up_trains(sets, epochs, warmup_fraction):
    """Found by this matrix: onecycle with a warm-up of exactly one step (the book's fast recipe,
    0.05, over 20 steps: e.g. 20 epochs of one batch) raised torch's ZeroDivisionError."""
    config = TrainConfig.fast(epochs=epochs, warmup_fraction=warmup_fraction, num_threads=1, device="cpu")
    result = train(SMALL, sets[0].subset(torch.arange(100)), sets[1], config, progress=False)
    lrs = result.history.column("lr")
    assert len(lrs) == epochs and all(math.isfinite(v) for v in lrs) and math.isfinite(result.best_val_rmse)


def test_wrong_kinds_of_model_config_and_checkpoint_dir(sets, tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("my notes")
    with refused(ConfigError, "is a file, not a folder", touched=(tmp_path,)):
        train(SMALL, *sets, small(), checkpoint_dir=blocker, progress=False)
    with refused(ConfigError, "TrainConfig or a dict"):
        train(SMALL, *sets, [("epochs", 2)], progress=False)
    with refused(ConfigError, "valid fields"):
        train(SMALL, *sets, {"epochs": 2, "learning_rate": 1e-3}, progress=False)
    with refused(TypeError, "ArchitectureSpec, a dict or a model"):
        train("course", *sets, small(), progress=False)
    with refused(ArchitectureError, "positive integers"):
        train({"hidden": {"H": (0,), "C": (8,), "N": (8,), "O": (8,)}}, *sets, small(), progress=False)


# --- checkpoints and resuming (issue items 1, 3 and 8) -------------------------------------------


@pytest.fixture(scope="module")
def finished(sets, tmp_path_factory) -> Path:
    """The checkpoint folder of a finished two-epoch run (onecycle, the book's default schedule)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    train(SMALL, *sets, small(), checkpoint_dir=folder, progress=False)
    return folder


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A private copy of :func:`finished`'s folder."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.mark.filterwarnings("ignore:Resuming with different settings")
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("changes", [{"epochs": 4}, {"batch_size": 32}], ids=["more epochs", "other batch size"])
def test_resuming_a_per_step_schedule_with_other_steps_is_refused(sets, tmp_path, schedule, changes):
    """Issue item 1: under onecycle resuming with more epochs crashed ('Tried to step 29 times'), under
    cosine the learning rate silently climbed back to its peak."""
    folder = tmp_path / "run"
    train(SMALL, *sets, small(schedule=schedule), checkpoint_dir=folder, progress=False)
    with refused(ConfigError, "Resume with epochs=2 and batch_size=64", "new checkpoint_dir", touched=(folder,)):
        train(SMALL, *sets, small(schedule=schedule, **changes), checkpoint_dir=folder, resume=True, progress=False)


@pytest.mark.parametrize("schedule", ["none", "plateau"])
def test_resuming_with_more_epochs_continues_epoch_wise_schedules(sets, tmp_path, schedule):
    """Issue item 1, the allowed case: without a per-step schedule, a 2-epoch run resumed for 4
    epochs is the 4-epoch run."""
    whole = train(SMALL, *sets, small(schedule=schedule, epochs=4), progress=False)
    folder = tmp_path / "run"
    train(SMALL, *sets, small(schedule=schedule, epochs=2), checkpoint_dir=folder, progress=False)
    longer = train(SMALL, *sets, small(schedule=schedule, epochs=4), checkpoint_dir=folder, resume=True,
                   progress=False)
    assert history_metrics(longer.history) == history_metrics(whole.history)
    assert_same_weights(longer.model.state_dict(), whole.model.state_dict())


def test_resuming_on_other_data_is_refused(sets, run_dir):
    """Issue item 3: the checkpoint kept no fingerprint of its data; resuming on another set went on
    with the old self energies and history."""
    train_set, val_set = sets
    other = split_dataset(train_set, 0.5, seed=3)[0]
    more = train_set.subset(torch.cat([torch.arange(len(train_set)), torch.arange(10)]))
    for train_data, val_data in ((other, val_set), (train_set, other), (more, val_set)):
        with refused(CheckpointMismatchError, "trained on other data", "new checkpoint_dir", touched=(run_dir,)):
            train(SMALL, train_data, val_data, small(), checkpoint_dir=run_dir, resume=True, progress=False)


def test_resuming_on_data_changed_in_place_is_refused(sets, tmp_path):
    """The fingerprint was computed once per object: an in-place edit went unnoticed."""
    train_set = sets[0].subset(torch.arange(len(sets[0])))
    folder = tmp_path / "run"
    train(SMALL, train_set, sets[1], small(), checkpoint_dir=folder, progress=False)
    train_set.energies.mul_(1.0001)
    with refused(CheckpointMismatchError, "trained on other data", touched=(folder,)):
        train(SMALL, train_set, sets[1], small(), checkpoint_dir=folder, resume=True, progress=False)


def test_resuming_another_architecture_is_refused(sets, run_dir):
    other = ArchitectureSpec({"H": (4,), "C": (4,), "N": (4,), "O": (4,)})
    with refused(CheckpointMismatchError, r"ArchitectureSpec\.from_dict", "another checkpoint_dir",
                 touched=(run_dir,)):
        train(other, *sets, small(), checkpoint_dir=run_dir, resume=True, progress=False)


def rewrite(path: Path, edit) -> None:
    """Load ``path``, let ``edit`` change the payload in place, save it back."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def reshape_a_weight(payload: dict) -> None:
    weights = payload["best"]["model"]
    name = next(k for k in weights if k.endswith("weight"))
    weights[name] = torch.zeros(2, 2)


class Pickled:
    """Not a tensor or plain container: torch.load(weights_only=True) refuses it."""


LATEST_CASES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), CheckpointError,
                  ("truncated or not a PyTorch file", "train again")),
    "pickled object": (lambda p: torch.save({"format": "anibook-checkpoint", "x": Pickled()}, p), CheckpointError,
                       ("never unpickled", "train again")),
    "foreign file": (lambda p: torch.save({"weights": torch.zeros(3)}, p), CheckpointError, ("not an anibook file",)),
    "missing entries": (lambda p: rewrite(p, lambda s: s.pop("rng")), CheckpointError, ("lacks", "train again")),
    "older version": (lambda p: rewrite(p, lambda s: s.update(version=1)), CheckpointMismatchError,
                      ("older version", "another checkpoint_dir")),
    "unknown setting": (lambda p: rewrite(p, lambda s: s["config"].update(warp=9)), CheckpointMismatchError,
                        ("cannot use", "another checkpoint_dir")),
}


@pytest.mark.parametrize("case", LATEST_CASES, ids=list(LATEST_CASES))
def test_a_damaged_or_foreign_latest_checkpoint_is_refused_and_kept(sets, run_dir, case):
    """Issue item 8 (no weights_only advice) and the other ways latest.pt can be unusable."""
    damage, kind, advice = LATEST_CASES[case]
    damage(run_dir / "latest.pt")
    with refused(kind, *advice, touched=(run_dir,)):
        train(SMALL, *sets, small(), checkpoint_dir=run_dir, resume=True, progress=False)


def test_torch_advice_to_disable_weights_only_never_reaches_the_reader(tmp_path):
    """Issue item 8: the error repeated torch's advice to retry with weights_only=False."""
    path = tmp_path / "model.pt"
    torch.save({"format": "anibook-potential", "model": Pickled()}, path)
    with refused(CheckpointError, "never unpickled", touched=(tmp_path,), never=("weights_only",)):
        load_potential(path)


def test_stale_temporaries_of_a_killed_save_are_removed(sets, run_dir):
    """Issue item 8: a kill during a save left an orphan .latest.pt.*.tmp that was never cleaned."""
    orphans = [run_dir / ".latest.pt.k1ll3d.tmp", run_dir / ".best.pt.k1ll3d.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    mine = run_dir / "notes.tmp"
    mine.write_text("not a checkpoint's")
    train(SMALL, *sets, small(epochs=2, schedule="none"), checkpoint_dir=run_dir, progress=False)
    assert not any(o.exists() for o in orphans) and mine.read_text() == "not a checkpoint's"


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in train() handles it."""


def test_a_kill_between_the_two_writes_never_leaves_best_behind_latest(sets, tmp_path, monkeypatch):
    """Issue item 8: latest.pt and best.pt were replaced by two renames, latest first, so a kill
    between them left latest.pt naming a best epoch that best.pt did not hold."""
    writes = []

    def write_then_die(save):
        def wrapper(obj, path):
            writes.append(Path(path).name)
            if len(writes) == 4:  # the second file of epoch 2's save (epoch 2 improves on epoch 1)
                raise Killed
            return save(obj, path)
        return wrapper

    for module in (checkpoints_module, training_module):
        if hasattr(module, "atomic_save"):
            monkeypatch.setattr(module, "atomic_save", write_then_die(module.atomic_save))
    folder, config = tmp_path / "run", small(epochs=3, schedule="none", lr=3e-3)
    with pytest.raises(Killed):
        train(SMALL, *sets, config, checkpoint_dir=folder, progress=False)
    assert set(writes[2:]) == {"best.pt", "latest.pt"}  # the kill came between the two files of one save
    latest = torch.load(folder / "latest.pt", weights_only=True)
    best = torch.load(folder / "best.pt", weights_only=True)
    assert latest["best"]["epoch"] <= best["best"]["epoch"]  # best.pt is never behind what latest.pt knows
    monkeypatch.undo()
    resumed = train(SMALL, *sets, config, checkpoint_dir=folder, resume=True, progress=False)
    whole = train(SMALL, *sets, config, progress=False)
    assert history_metrics(resumed.history) == history_metrics(whole.history)
    assert_same_weights(load_potential(folder / "best.pt").model.state_dict(), whole.model.state_dict())


@pytest.mark.parametrize("content, kind, advice", [
    (None, CheckpointError, "train with checkpoint_dir"),
    ({"format": "anibook-potential"}, CheckpointError, "lacks"),
    ("edited", CheckpointError, "edited or damaged"),
    ({"format": "anibook-potential", "version": 1, "spec": None, "aev_dim": 384, "model": {},
      "self_energies": [0.0] * 4, "aev_constants": {}}, CheckpointError, "only MaskedANIModel"),
], ids=["missing", "missing entries", "weights of another shape", "no architecture"])
def test_load_potential_refuses_what_it_cannot_rebuild(finished, tmp_path, content, kind, advice):
    path = tmp_path / "model.pt"
    if content == "edited":
        shutil.copy(finished / "best.pt", path)
        rewrite(path, reshape_a_weight)
    elif content is not None:
        torch.save(content, path)
    with refused(kind, advice, touched=(tmp_path,)):
        load_potential(path)


def test_save_potential_into_a_folder_name(finished, tmp_path):
    potential = load_potential(finished / "best.pt")
    with refused(IsADirectoryError, "pass a file name", touched=(tmp_path,)):
        save_potential(tmp_path, potential)
    with refused(TypeError, "Cannot save a potential from str"):
        save_potential(tmp_path / "model.pt", "best.pt")


# --- potentials (issue item 4) -----------------------------------------------------------------

WATER = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]]
POTENTIAL_CASES = {
    "NaN coordinate": (["O", "H", "H"], [[math.nan, 0, 0], *WATER[1:]], "finite positions"),
    "infinite coordinate": (["O", "H", "H"], [[math.inf, 0, 0], *WATER[1:]], "finite positions"),
    "atomic numbers": (torch.tensor([8, 1, 1]), WATER, "atomic numbers"),
    "atomic numbers in numpy": (np.array([8, 1, 1]), WATER, "atomic numbers"),
    "float species": (torch.tensor([3.0, 0.0, 0.0]), WATER, "integer element indices"),
    "float species in a list": ([3.0, 0.0, 0.0], WATER, "integer element indices"),
    "unknown symbol": (["Cl", "H", "H"], WATER, "Unknown element symbol"),
    "symbols and numbers": (["O", 0, 0], WATER, "all symbols or all indices"),
    "no species": (None, WATER, "element symbols such as"),
    "all padding": ([-1, -1, -1], WATER, "no atoms"),
    "no conformations": (torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, 3), "at least one"),
    "shapes disagree": (["O", "H", "H"], WATER[:2], r"Expected species \(N, A\)"),
    "rows of different lengths": ([["O", "H", "H"], ["O", "H"]], [WATER, WATER], "pad the shorter"),
    "text coordinates": (["O", "H", "H"], "0 0 0", "numbers in Å"),
    "complex coordinates": (["O", "H", "H"], torch.zeros(3, 3, dtype=torch.complex64), "numbers in Å"),
}


@pytest.mark.parametrize("method", ["energies", "forces"])
@pytest.mark.parametrize("case", POTENTIAL_CASES, ids=list(POTENTIAL_CASES))
def test_the_potential_refuses_inputs_it_cannot_evaluate(finished, case, method):
    """Issue item 4: non-finite coordinates, atomic numbers, floats and empty conformations were
    evaluated (NaN energies, garbage or raw torch errors)."""
    potential = load_potential(finished / "best.pt")
    species, coordinates, advice = POTENTIAL_CASES[case]
    with refused(PotentialInputError, advice):
        getattr(potential, method)(species, coordinates)


def test_the_potential_still_takes_every_documented_form(finished):
    potential = load_potential(finished / "best.pt")
    by_symbols = potential.energies(["O", "H", "H"], WATER)
    for species in (torch.tensor([3, 0, 0]), np.array([3, 0, 0]), [3, 0, 0], "OHH"):
        assert potential.energies(species, torch.tensor(WATER)) == by_symbols
    padded = potential.energies([[3, 0, 0, -1]], [[*WATER, [0.0, 0.0, 0.0]]])
    assert padded.shape == (1,) and float(padded[0].detach()) == pytest.approx(float(by_symbols.detach()), abs=1e-5)


def test_a_potential_with_non_finite_self_energies_is_refused(finished):
    model = load_potential(finished / "best.pt").model
    with refused(ValueError, "refit them"):
        ANIPotential(model, [math.nan, 0.0, 0.0, 0.0])


# --- the retraining panel ----------------------------------------------------------------------


@pytest.fixture
def panel(sets, monkeypatch):
    """A synchronous panel with tiny networks whose train() records calls instead of training."""
    calls = []
    monkeypatch.setattr(widgets_module, "train", lambda *a, **k: calls.append((a, k)))
    made = TrainingPanel(*sets, background=False, num_threads=1)
    for box in made.widths.values():
        box.value = "8"
    made.epochs.value, made.batch_size.value = 2, 64
    made.calls = calls
    return made


PANEL_CASES = [
    ("lr", math.nan, "lr must be a positive number"), ("lr", math.inf, "lr must be a positive number"),
    ("lr", 0.0, "lr must be a positive number"), ("weight_decay", math.nan, "weight_decay must be a finite number"),
    ("weight_decay", -1.0, "weight_decay must be a number >= 0"), ("epochs", -3, "epochs must be a positive"),
    ("batch_size", 0, "batch_size must be a positive"), ("seed", -1, "seed must be an integer >= 0"),
    ("H", "abc", "not a whole number"), ("C", "0", "not possible"), ("N", "", "type at least one width"),
    ("O", "99999", "wider than this panel allows"), ("H", "8 " * 9, "at most 8"),
]


@pytest.mark.parametrize("name, value, advice", PANEL_CASES, ids=[f"{n}={v!r}" for n, v, _ in PANEL_CASES])
def test_the_panel_refuses_settings_under_its_buttons_and_starts_nothing(panel, name, value, advice):
    widget = panel.widths[name] if name in panel.widths else getattr(panel, name)
    widget.value = value
    assert panel.start() is False
    assert panel.message_text.startswith("Not started") and re.search(advice, panel.message_text)
    assert "Traceback" not in panel.message.value
    assert panel.calls == [] and panel.runs == [] and not panel.running and panel.progress.value == 0
    assert (panel.train_button.disabled, panel.stop_button.disabled) == (False, True)
    assert widget.value == value or (isinstance(value, float) and math.isnan(value))  # kept, to be corrected


def test_the_panel_refuses_data_that_are_not_data_sets(sets):
    with refused(TypeError, "needs val_data as an ANIData"):
        TrainingPanel(sets[0], "val.h5", background=False)


def test_a_run_on_data_broken_after_the_panel_was_made_fails_with_the_reason(sets):
    made = TrainingPanel(*sets, background=False, num_threads=1)
    made.val_data = nan_at(sets[1], "energies")
    assert made.start() is True  # the settings were fine; the run itself is refused
    assert made.message_text.startswith("Run 1 failed: val_data has NaN") and "diverged" not in made.message_text
    assert made.runs == [] and not made.running and made.progress.bar_style == "danger"


# --- the command line (issue item 2) -------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """A 127.0.0.1 HTTP server that records every request; yields (url, request_log)."""
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "release.tar.gz").write_bytes(b"never to be fetched")
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/release.tar.gz", log
    httpd.shutdown()
    httpd.server_close()


def test_fetch_data_obeys_offline_mode_without_touching_the_network(server, tmp_path):
    """Issue item 2: `python -m anibook_utils fetch-data` ignored ANIBOOK_OFFLINE=1 and tried the network."""
    url, log = server
    env = {**os.environ, "ANIBOOK_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "anibook_utils", "fetch-data", "--dest", str(tmp_path / "data"),
                           "--url", url], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "ANIBOOK_OFFLINE=1 forbids downloads" in done.stderr and "Unset ANIBOOK_OFFLINE" in done.stderr
    assert "Traceback" not in done.stderr
    assert log == [] and snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["true", "yes", " ON "])
def test_offline_mode_takes_the_usual_spellings(server, tmp_path, monkeypatch, capsys, value):
    url, log = server
    monkeypatch.setenv("ANIBOOK_OFFLINE", value)
    assert cli(["fetch-data", "--dest", str(tmp_path / "data"), "--url", url]) == 1
    assert "forbids downloads" in capsys.readouterr().err and log == []


@pytest.mark.parametrize("args, offline, advice", [
    (["fetch-data", "--url", "notaurl"], "0", "is not a URL"),
    (["fetch-data", "--name", "ani_gdb_s99"], "0", "Known data sets"),
    (["fetch-data", "--name", "anibook_nms_s01"], "0", "ships with the repository"),
    (["fetch-data", "--url", "http://127.0.0.1:9/x.tar.gz"], "0", "Could not reach"),
    (["fetch-data", "--dest", "{blocker}", "--url", "http://127.0.0.1:9/x"], "0", "Set ANIBOOK_DATA_DIR to a writable"),
], ids=["not a URL", "unknown data set", "bundled data set", "unreachable", "destination is a file"])
def test_fetch_data_errors_are_one_line_and_say_what_to_do(tmp_path, monkeypatch, capsys, args, offline, advice):
    monkeypatch.setenv("ANIBOOK_OFFLINE", offline)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    args = [a.format(blocker=blocker) for a in args]
    if "--dest" not in args:
        args += ["--dest", str(tmp_path / "data")]
    before = snapshot(tmp_path)
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and advice in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_an_unknown_command_shows_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["fetch-everything"])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
