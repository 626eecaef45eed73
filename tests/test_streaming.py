"""Data streamed from disk (chapter 10): splits, shards, self energies and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anibook_utils.data import BOOK_SPLIT, ELEMENTS, MalformedGroupError
from anibook_utils.models import ArchitectureSpec
from anibook_utils.self_energy import fit_self_energies
from anibook_utils.streaming import H5Stream, share, stream_self_energies, stream_target_scale
from anibook_utils.training import ConfigError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.fixture(scope="module")
def stream(real_data):
    return H5Stream(real_data.source, chunk=50)


def rows_of(view: H5Stream) -> set[tuple[int, int]]:
    """(group, row) of every conformation of a view, from the hashes."""
    found = set()
    for k, group in enumerate(view.groups):
        found |= {(k, int(i)) for i in np.flatnonzero(view._members(group, 0, group.count))}
    return found


def test_the_parts_of_a_split_cover_every_conformation_once(stream, real_data):
    parts = stream.split(BOOK_SPLIT, seed=3)
    seen = [rows_of(p) for p in parts]
    assert sum(len(s) for s in seen) == len(real_data) == len(stream)
    assert len(set().union(*seen)) == len(real_data)
    for part, fraction in zip(parts, BOOK_SPLIT):
        assert len(part) == pytest.approx(fraction * len(real_data), rel=0.1)
    assert rows_of(stream.split(BOOK_SPLIT, seed=3)[0]) == seen[0]  # stable
    assert rows_of(stream.split(BOOK_SPLIT, seed=4)[0]) != seen[0]


def epoch_rows(view: H5Stream, batch_size: int, epoch: int, rank: int, world: int) -> list[tuple[int, int]]:
    """(group, row) of every conformation a rank reads in an epoch (placeholders left out), in order."""
    plan, rows = view.plan(epoch, seed=0), []
    for b in range(view.steps(batch_size)):
        low, high = b * batch_size, min((b + 1) * batch_size, plan.n)
        for group, start, stop, skip, take in plan.pieces(*share(low, high, rank, world)):
            members = np.flatnonzero(view._members(view.groups[group], start, stop))[skip:skip + take]
            rows += [(group, start + int(i)) for i in members]
    return rows


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_shares_cover_every_conformation_once_per_epoch(stream, world):
    train_set = stream.split(BOOK_SPLIT, seed=1)[0]
    everyone = [epoch_rows(train_set, 100, epoch=2, rank=r, world=world) for r in range(world)]
    together = [row for rows in everyone for row in rows]
    assert len(together) == len(set(together)) == len(train_set)  # each conformation once
    assert set(together) == rows_of(train_set)
    sizes = [len(rows) for rows in everyone]
    assert max(sizes) - min(sizes) <= train_set.steps(100)  # shares differ by at most a row a batch
    assert epoch_rows(train_set, 100, 1, 0, 1) != epoch_rows(train_set, 100, 2, 0, 1)  # reshuffled every epoch


def test_every_rank_takes_the_same_steps_with_placeholders_of_weight_zero(stream):
    tiny = H5Stream(stream.paths, chunk=7).split((0.01, 0.99), seed=0)[0]  # about 100 conformations
    batch = len(tiny) - 1  # the last batch holds one conformation: two of three ranks get a placeholder
    per_rank = [list(tiny.batches(batch, epoch=0, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(b) for b in per_rank] == [tiny.steps(batch)] * 3 == [2] * 3
    last = [b[-1] for b in per_rank]
    assert sorted(b.total for b in last) == [0, 0, 1] and all(len(b) == 1 for b in last)
    assert sum(len(b[0]) for b in per_rank) == batch and {b[0].total for b in per_rank} == {batch}


def test_streamed_self_energies_equal_the_in_memory_fit(stream, real_data):
    streamed = stream_self_energies(stream)
    in_memory = fit_self_energies(real_data, warn=False).as_tensor()
    sums_of = real_data.species.clamp(min=0)
    assert torch.allclose(streamed, in_memory, atol=1e-9)
    shifted = real_data.energies - (torch.nn.functional.one_hot(sums_of, 4) * (real_data.species >= 0).unsqueeze(-1)
                                     ).sum(1).double() @ in_memory
    assert stream_target_scale(stream, streamed) == pytest.approx(float(shifted.std()), rel=1e-4)


def test_training_on_a_stream(stream):
    train_set, val_set, _ = stream.split(BOOK_SPLIT, seed=0)
    spec = ArchitectureSpec({e: (16,) for e in "HCNO"})
    with pytest.raises(ConfigError, match="feed='in_step'"):
        train(spec, train_set, val_set, TrainConfig(epochs=1), progress=False)
    config = TrainConfig.fast(epochs=2, batch_size=256, feed="in_step", device="cpu", num_threads=1)
    result = train(spec, train_set, val_set, config, progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["val_rmse"] < first["val_rmse"] and np.isfinite(last["train_rmse"])


# --- TorchANI's layout (ANI-1x, ANI-2x), written with torchani's own ANIDataset API ---------------


def torchani_file(path, with_sulfur: bool = False):
    """A small file in TorchANI's layout (grouped by number of atoms, atomic numbers per
    conformation, energies, coordinates, forces): water in two atom orders, methane, ammonia."""
    from anibook_utils.torchani_shim import torchani

    rng = np.random.default_rng(0)
    dataset = torchani.datasets.ANIDataset(str(path), grouping="by_num_atoms", verbose=False)

    def conformers(numbers):
        n, a = len(numbers), len(numbers[0])
        return {"species": np.array(numbers), "coordinates": rng.normal(size=(n, a, 3)).astype(np.float32),
                "energies": rng.normal(size=n) - 76.0, "forces": rng.normal(size=(n, a, 3)).astype(np.float32)}

    dataset.append_conformers("003", conformers([[8, 1, 1]] * 5 + [[1, 8, 1]] * 4 + ([[16, 1, 1]] * 2 if with_sulfur else [])))
    dataset.append_conformers("004", conformers([[7, 1, 1, 1]] * 6))
    dataset.append_conformers("005", conformers([[1, 1, 6, 1, 1]] * 7))
    return dataset


def test_torchani_data_are_converted_to_the_ani1_layout(tmp_path):
    from anibook_utils.streaming import convert_torchani

    source = torchani_file(tmp_path / "ani1x_like.h5")
    with pytest.raises(MalformedGroupError, match="convert_torchani"):
        H5Stream(tmp_path / "ani1x_like.h5")
    target = convert_torchani(tmp_path / "ani1x_like.h5", tmp_path / "converted.h5", chunk=3)
    stream = H5Stream(target, chunk=4)
    assert len(stream) == source.num_conformers == 22 and stream.has_forces
    assert {tuple(ELEMENTS[i] for i in g.species) for g in stream.groups} == {
        ("H", "H", "O"), ("H", "H", "H", "N"), ("H", "H", "H", "H", "C")}
    water = next(k for k, g in enumerate(stream.groups) if len(g.species) == 3)
    read = stream.read(water, 0, 9)
    original = source.get_numpy_conformers("003")
    for row in range(9):  # the same atoms, sorted by element: H, H, O
        numbers = original["species"][row]
        order = np.argsort([ELEMENTS.index({1: "H", 8: "O"}[z]) for z in numbers], kind="stable")
        assert np.allclose(read.coordinates[row].numpy(), original["coordinates"][row][order])
        assert np.allclose(read.forces[row].numpy(), original["forces"][row][order])
        assert read.energies[row].item() == pytest.approx(original["energies"][row])


def test_other_elements_are_an_error_or_left_out(tmp_path):
    from anibook_utils.data import UnsupportedElementError
    from anibook_utils.streaming import convert_torchani

    torchani_file(tmp_path / "ani2x_like.h5", with_sulfur=True)
    with pytest.raises(UnsupportedElementError, match="skip_other_elements=True"):
        convert_torchani(tmp_path / "ani2x_like.h5", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    kept = convert_torchani(tmp_path / "ani2x_like.h5", tmp_path / "out.h5", skip_other_elements=True)
    assert len(H5Stream(kept)) == 22


def test_training_on_forces_streamed_from_a_converted_file(tmp_path):
    from anibook_utils.streaming import convert_torchani, evaluate_stream

    torchani_file(tmp_path / "x.h5")
    stream = H5Stream(convert_torchani(tmp_path / "x.h5", tmp_path / "c.h5"), chunk=2)
    train_set, val_set = stream.split((0.7, 0.3), seed=0)
    config = TrainConfig.fast(epochs=2, batch_size=4, feed="in_step", device="cpu", num_threads=1, force_weight=0.1)
    result = train(ArchitectureSpec({e: (8,) for e in "HCNO"}), train_set, val_set, config, progress=False)
    assert {"val_force_rmse", "train_force_rmse"} <= set(result.history[-1])
    metrics = evaluate_stream(result.model, val_set, result.self_energies)
    assert metrics["rmse"] == pytest.approx(result.history.best()["val_rmse"], rel=1e-5)
    assert metrics["force_rmse"] == pytest.approx(result.history.best()["val_force_rmse"], rel=1e-5)


# --- the benchmark suite's streaming section ---------------------------------------------------


def test_the_streaming_benchmark_measures_steps_and_prints_its_tables(real_data):
    from benchmarks.streaming import in_memory_steps, streamed_steps
    from benchmarks.suite import _streaming_lines

    small = real_data.subset(torch.randperm(len(real_data), generator=torch.Generator().manual_seed(0))[:800])
    memory = in_memory_steps(small, batch_size=32, steps=2)
    streamed = streamed_steps(H5Stream(real_data.source, chunk=16), batch_size=32, steps=2, after_setup=lambda: 1.0)
    assert memory["conformations_per_s"] > 0 and streamed["conformations_per_s"] > 0
    assert streamed["setup_mb"] == 1.0 and streamed["train_conformations"] > 8000
    text = "\n".join(_streaming_lines({"memory": [{"repeat": 1, "conformations": 10800, "file_mb": 0.6, "index_s": 0.1,
                                                   "setup_s": 0.2, "setup_mb": 3.0, "train_mb": 5.0, "step_ms": 9.0}],
                                       "throughput": [{"path": "streamed", "batch_size": 256, "step_ms": 9.0,
                                                       "conformations_per_s": 100.0, "relative": 0.9}]}))
    assert "5a. Streaming from disk" in text and "10,800" in text and "0.90" in text


def test_the_throughput_comparison_keeps_each_paths_fastest_round(real_data, monkeypatch):
    import benchmarks.streaming as bench

    times = {"memory": iter([30.0, 20.0, 25.0]), "stream": iter([40.0, 45.0, 22.0])}  # ms per step, by round
    monkeypatch.setattr(bench, "in_memory_steps", lambda data, b, s: {"step_ms": (t := next(times["memory"])),
                                                                      "conformations_per_s": b / t * 1e3})
    monkeypatch.setattr(bench, "streamed_steps", lambda stream, b, s: {"step_ms": (t := next(times["stream"])),
                                                                       "conformations_per_s": b / t * 1e3})
    memory, streamed = bench.streaming_throughput(real_data, batch_size=64, steps=2, rounds=3)
    assert (memory["step_ms"], streamed["step_ms"]) == (20.0, 22.0) and memory["rounds"] == 3
    assert streamed["relative"] == pytest.approx(20.0 / 22.0)


@pytest.mark.notebook
def test_the_appendix_shows_streamed_memory_flat(run_chapter):
    m = run_chapter("appendix_benchmarks")
    assert [row["conformations"] for row in m["streaming_memory"]] == [10800, 108000]  # quick mode: 10^4, 10^5
    assert abs(m["streaming_growth_mb"]) < 30
    assert m["streaming_relative"] > 0
