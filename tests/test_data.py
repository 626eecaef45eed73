"""The data layer on the real file and on deliberately broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from anibook_utils.data import (
    DATASETS,
    ELEMENTS,
    ChecksumMismatchError,
    DataFileNotFoundError,
    EmptySelectionError,
    FallbackDataWarning,
    MalformedGroupError,
    NonFiniteValueError,
    NotHDF5Error,
    UnknownDatasetError,
    UnsupportedElementError,
    dataset_info,
    iterate_batches,
    load_dataset,
    locate_dataset,
    read_ani_h5,
    split_dataset,
    split_indices,
)

ROOT = Path(__file__).resolve().parents[1]


def write_h5(path: Path, groups: dict[str, dict[str, np.ndarray]]) -> Path:
    with h5py.File(path, "w") as f:
        for name, arrays in groups.items():
            g = f.require_group(name)
            for key, value in arrays.items():
                g[key] = value
    return path


def water(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "species": np.array([b"O", b"H", b"H"]),
        "coordinates": rng.normal(size=(n, 3, 3)).astype(np.float32),
        "energies": -76.0 + 0.01 * rng.normal(size=n),
    }


# --- the real file -------------------------------------------------------------------

def test_real_file_counts_and_order(real_data):
    assert real_data.counts() == {"CH4": 5400, "NH3": 3600, "H2O": 1800}
    assert len(real_data) == 10_800
    assert real_data.element_counts() == {"H": 36000, "C": 5400, "N": 3600, "O": 1800}
    assert real_data.groups == [f"gdb11_s01/gdb11_s01-{i}" for i in range(3)]


def test_real_file_shapes_dtypes_padding(real_data):
    n = len(real_data)
    assert real_data.species.shape == (n, 5) and real_data.species.dtype == torch.int64
    assert real_data.coordinates.shape == (n, 5, 3) and real_data.coordinates.dtype == torch.float32
    assert real_data.energies.dtype == torch.float64 and real_data.energies.shape == (n,)
    water_rows = real_data.molecule_ids == real_data.molecule_names.index("H2O")
    # O first, then two H, then two padding slots with zero coordinates
    assert torch.equal(real_data.species[water_rows][0], torch.tensor([3, 0, 0, -1, -1]))
    assert torch.all(real_data.coordinates[water_rows][:, 3:] == 0)
    methane = real_data.species[real_data.molecule_ids == 0]
    assert torch.all(methane == torch.tensor([1, 0, 0, 0, 0]))
    # real atoms come first: no real atom after a padding slot
    pad = real_data.species < 0
    assert not torch.any(pad[:, :-1] & ~pad[:, 1:])
    # energies in Hartree: methane near -40.5 Eh
    assert -41 < float(real_data.energies[real_data.molecule_ids == 0].mean()) < -40


def test_reader_matches_h5py_values(real_data):
    with h5py.File(real_data.source, "r") as f:
        coords = f["gdb11_s01/gdb11_s01-1/coordinates"][:]
        energies = f["gdb11_s01/gdb11_s01-1/energies"][:]
    rows = (real_data.molecule_ids == 1).nonzero().view(-1)
    assert np.array_equal(real_data.coordinates[rows, :4].numpy(), coords)
    assert np.array_equal(real_data.energies[rows].numpy(), energies)


def test_loading_is_cached_and_keyed_by_content(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    first = load_dataset()
    entries = list((tmp_path / "cache").glob("ani-*.npz"))
    assert len(entries) == 1
    second = load_dataset()
    assert torch.equal(first.coordinates, second.coordinates)
    # a different file (same name, other content) never reuses that entry
    other = write_h5(tmp_path / "other.h5", {"mol/water": water()})
    third = load_dataset(path=other)
    assert len(third) == 4 and len(list((tmp_path / "cache").glob("ani-*.npz"))) == 2


def test_corrupt_cache_entry_is_rebuilt(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path))
    load_dataset()
    entry = next(tmp_path.glob("ani-*.npz"))
    entry.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unusable"):
        again = load_dataset()
    assert len(again) == 10_800
    with np.load(entry, allow_pickle=False) as stored:
        assert stored["energies"].shape == (10_800,)


# --- splitting and batching ---------------------------------------------------------

def test_split_is_seeded_disjoint_and_80_20(real_data):
    train, val = split_indices(real_data, 0.8, seed=0)
    assert len(train) == 8640 and len(val) == 2160
    assert not set(train.tolist()) & set(val.tolist())
    again, _ = split_indices(real_data, 0.8, seed=0)
    other, _ = split_indices(real_data, 0.8, seed=1)
    assert torch.equal(train, again) and not torch.equal(train, other)
    # every molecule appears on both sides of a conformation split
    assert set(real_data.molecule_ids[val].tolist()) == {0, 1, 2}


def test_split_by_molecule_keeps_molecules_whole(real_data):
    train, val = split_dataset(real_data, 0.5, seed=3, by="molecule")
    assert not set(train.counts()) & set(val.counts())
    assert len(train) + len(val) == len(real_data)


def test_split_rejects_bad_arguments(real_data):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_indices(real_data, 1.0)
    with pytest.raises(ValueError, match="'conformation' or 'molecule'"):
        split_indices(real_data, 0.8, by="atom")
    water_only = real_data.select_molecules(["H2O"])
    with pytest.raises(EmptySelectionError, match="leaves a part empty"):
        split_indices(water_only, 0.8, by="molecule")


def test_batches_trim_padding_and_cover_everything(real_data):
    water_and_ammonia = real_data.select_molecules(["H2O", "NH3"])
    assert water_and_ammonia.species.shape[1] == 4  # trimmed from 5
    seen = []
    for batch in iterate_batches(water_and_ammonia, 1000, shuffle=True, seed=1):
        assert batch.species.shape[1] == int((batch.species >= 0).sum(1).max())
        seen.append(batch.indices)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(water_and_ammonia)))
    first = next(iterate_batches(real_data, 64, shuffle=True, seed=1)).indices
    again = next(iterate_batches(real_data, 64, shuffle=True, seed=1)).indices
    assert torch.equal(first, again)


# --- registry and location -----------------------------------------------------------

def test_registry_matches_data_readme():
    table = (ROOT / "data" / "README.md").read_text()
    for info in DATASETS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {info.name} |"))
        for value in (info.filename, info.sha256, str(info.size), str(info.conformations), info.doi,
                      info.licence):
            assert value in row, f"data/README.md row for {info.name} lacks {value}"


def test_registered_file_size_matches(real_data):
    assert Path(real_data.source).stat().st_size == dataset_info("ani_gdb_s01").size


def test_unknown_dataset_name():
    with pytest.raises(UnknownDatasetError, match="Known data sets: .*ani_gdb_s01"):
        dataset_info("ani_gdb_s09")


def test_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("anibook_utils.data.files.REPO_DATA_DIR", tmp_path / "nothing")
    with pytest.raises(DataFileNotFoundError) as info:
        locate_dataset(download=False)
    message = str(info.value)
    assert "fetch-data" in message and "ANIBOOK_DATA_DIR" in message
    with pytest.raises(DataFileNotFoundError, match="No data file at"):
        load_dataset(path=tmp_path / "absent.h5")


def test_offline_setting_forbids_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ANIBOOK_OFFLINE", "1")
    monkeypatch.setattr("anibook_utils.data.files.REPO_DATA_DIR", tmp_path / "nothing")
    with pytest.raises(DataFileNotFoundError, match="fetch-data"):
        locate_dataset()


def test_checksum_mismatch_is_reported_and_file_untouched(real_data, tmp_path, monkeypatch):
    bad = tmp_path / "ani_gdb_s01.h5"
    shutil.copy(real_data.source, bad)
    with open(bad, "r+b") as f:  # flip one byte near the end
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = bad.read_bytes()
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path))
    with pytest.raises(ChecksumMismatchError) as info:
        load_dataset()
    assert "fetch-data" in str(info.value) and "SHA-256" in str(info.value)
    assert bad.read_bytes() == before


# --- broken files --------------------------------------------------------------------

def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not HDF5")
    with pytest.raises(NotHDF5Error, match="not a readable HDF5 file") as info:
        read_ani_h5(path)
    assert "fetch-data" not in str(info.value), "a user's own file must never be advised away"
    registered = tmp_path / "ani_gdb_s01.h5"
    registered.write_text("this is not HDF5 either")
    with pytest.raises(NotHDF5Error, match="not a readable HDF5 file.*fetch-data"):
        read_ani_h5(registered)


def test_truncated_file(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "cut.h5"
    path.write_bytes(Path(real_data.source).read_bytes()[:300_000])
    with pytest.raises(NotHDF5Error, match="truncated"):
        load_dataset(path=path)
    assert not list(tmp_path.glob("cache/*"))  # no cache entry for a file that failed to read


def test_missing_array(tmp_path):
    group = water()
    del group["energies"]
    path = write_h5(tmp_path / "f.h5", {"set/water": group})
    with pytest.raises(MalformedGroupError, match=r"'set/water' lacks \['energies'\]"):
        read_ani_h5(path)


def test_misshaped_coordinates(tmp_path):
    group = water()
    group["coordinates"] = group["coordinates"][:, :2]
    path = write_h5(tmp_path / "f.h5", {"water": group})
    with pytest.raises(MalformedGroupError, match=r"shape \(4, 2, 3\), expected \(conformations, 3, 3\)"):
        read_ani_h5(path)


def test_energy_count_mismatch(tmp_path):
    group = water()
    group["energies"] = group["energies"][:3]
    path = write_h5(tmp_path / "f.h5", {"water": group})
    with pytest.raises(MalformedGroupError, match="one energy per conformation"):
        read_ani_h5(path)


def test_unsupported_element_names_element_and_group(tmp_path):
    group = water()
    group["species"] = np.array([b"F", b"H", b"H"])
    path = write_h5(tmp_path / "f.h5", {"a/b/c/hf": group})
    with pytest.raises(UnsupportedElementError, match=r"'a/b/c/hf' contains \['F'\].*H, C, N, O"):
        read_ani_h5(path)


@pytest.mark.parametrize("field", ["energies", "coordinates"])
def test_non_finite_values(tmp_path, field):
    group = water()
    values = group[field].copy()
    values[2] = np.nan if field == "energies" else np.inf
    group[field] = values
    path = write_h5(tmp_path / "f.h5", {"water": group})
    with pytest.raises(NonFiniteValueError, match=f"1 conformation.*{field}.*index 2"):
        read_ani_h5(path)


def test_file_without_molecules(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("nothing")
    with pytest.raises(EmptySelectionError, match="no molecule groups"):
        read_ani_h5(path)


def test_empty_selections(real_data):
    with pytest.raises(EmptySelectionError, match=r"Available molecules: \['CH4', 'H2O', 'NH3'\]"):
        real_data.select_molecules(["C2H6"])
    with pytest.raises(EmptySelectionError, match="at least one index"):
        real_data.subset([])


def test_any_nesting_depth_and_string_species(tmp_path):
    deep = water(2)
    shallow = water(3)
    shallow["species"] = np.array(["O", "H", "H"], dtype=h5py.string_dtype())
    path = write_h5(tmp_path / "f.h5", {"x/y/z/w": deep, "top": shallow})
    data = read_ani_h5(path)
    assert len(data) == 5 and data.groups == ["top", "x/y/z/w"]
    assert data.molecule_names == ["H2O", "H2O"]
    assert data.species.tolist()[0] == [ELEMENTS.index("O"), 0, 0]


# --- the bundled fallback ------------------------------------------------------------

def _no_ani1(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ANIBOOK_OFFLINE", "1")
    monkeypatch.setenv("ANIBOOK_CACHE_DIR", str(tmp_path / "cache"))


def test_fallback_to_bundled_set_says_so(tmp_path, monkeypatch, capsys):
    _no_ani1(tmp_path, monkeypatch)
    with pytest.warns(FallbackDataWarning, match="ani_gdb_s01 is not available.*anibook_nms_s01"):
        data = load_dataset(verbose=True)
    assert data.name == "anibook_nms_s01"
    assert data.counts() == {"CH4": 1080, "NH3": 720, "H2O": 360}
    assert "bundled set, not ani_gdb_s01" in capsys.readouterr().out


def test_no_fallback_when_asked(tmp_path, monkeypatch):
    _no_ani1(tmp_path, monkeypatch)
    with pytest.raises(DataFileNotFoundError, match="fetch-data"):
        load_dataset(fallback=False)


def test_real_file_is_preferred_and_named(real_data):
    assert real_data.name == "ani_gdb_s01"


def test_corrupt_bundled_file_is_refused(tmp_path, monkeypatch):
    _no_ani1(tmp_path, monkeypatch)
    copy = tmp_path / "repo-data"
    copy.mkdir()
    bundled = ROOT / "data" / "anibook_nms_s01.h5"
    (copy / bundled.name).write_bytes(bundled.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr("anibook_utils.data.files.REPO_DATA_DIR", copy)
    with pytest.raises(ChecksumMismatchError, match="SHA-256.*git checkout -- data/"):
        load_dataset()
