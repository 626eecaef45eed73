"""The benchmark suite's pieces (counts, tables, scaled data) and the appendix page in quick mode.

No test here asserts a speed: speed is what the suite prints, not something a test can pin.
"""

from __future__ import annotations

import h5py
import pytest
import torch

from anibook_utils.aev import precompute_aevs
from anibook_utils.data import read_ani_h5
from benchmarks.flops import GemmShape, batch_atoms, training_flops_per_conformation, training_gemms
from benchmarks.molecule_size import replicate
from benchmarks.scaling import write_repeated
from benchmarks.suite import table

pytestmark = pytest.mark.usefixtures("real_data")


def test_gemm_count_by_hand():
    # one element, AEV 4 -> 3 -> 1, two atoms: forward 2*(2*4*3 + 2*3*1), weight grads the same,
    # input gradient only for the second layer: 2*2*1*3
    shapes = training_gemms({"H": (3,)}, {"H": 2}, aev_dim=4)
    assert shapes == [GemmShape(2, 4, 3), GemmShape(4, 2, 3), GemmShape(2, 3, 1), GemmShape(3, 2, 1),
                      GemmShape(2, 1, 3)]
    assert sum(s.flops for s in shapes) == 2 * (24 + 6) * 2 + 12


def test_flops_per_conformation_of_the_course_model(real_data):
    from anibook_utils.models import ArchitectureSpec

    hidden = dict(ArchitectureSpec.course().hidden)
    per_atom = {e: sum(s.flops for s in training_gemms(hidden, {e: 1})) for e in "HCNO"}
    counts = real_data.element_counts()
    expected = sum(per_atom[e] * counts[e] for e in "HCNO") / len(real_data)
    assert training_flops_per_conformation(hidden, real_data) == pytest.approx(expected, rel=1e-6)
    assert batch_atoms(real_data, 2560)["H"] == round(2560 * counts["H"] / len(real_data))


def test_table_marks_unreached_thresholds():
    text = table([{"recipe": "x", "wall_s_to_1.0": None, "wall_s_to_0.3": 2.0}],
                 [("recipe", "recipe", ""), ("wall_s_to_1.0", "s to 1", ".1f"), ("wall_s_to_0.3", "s to 0.3", ".1f")])
    assert "not reached" in text and "2.0" in text


def test_repeated_file_has_repeated_conformations(real_data, tmp_path):
    total = write_repeated(real_data.source, tmp_path / "x3.h5", 3)
    assert total == 3 * len(real_data)
    big = read_ani_h5(tmp_path / "x3.h5")
    assert big.counts() == {k: 3 * v for k, v in real_data.counts().items()}
    with h5py.File(tmp_path / "x3.h5") as f:
        assert f["gdb11_s01/gdb11_s01-2/coordinates"].shape == (3 * 1800, 3, 3)


def test_replicated_molecules_keep_their_environments(real_data):
    methane = real_data.select_molecules(["CH4"]).subset(torch.arange(8))
    double = replicate(methane, 2)
    assert double.species.shape == (8, 10)
    single = precompute_aevs(methane)
    both = precompute_aevs(double)
    # each copy sees only itself: its atoms' AEVs equal the original's
    assert torch.allclose(both[:, :5], single, atol=1e-6)
    assert torch.allclose(both[:, 5:], single, atol=1e-4)  # float32 coordinates shifted by 20 Å


# --- devices: the GPU options, checked on any machine ----------------------------------------


def test_padded_batches_give_the_engines_loss_and_gradients(real_data):
    from anibook_utils.models import ArchitectureSpec, build_model
    from anibook_utils.feeding import prepare_buckets
    from benchmarks.small_batch import max_atoms_per_element, pad_epoch, padded_loss
    from benchmarks.throughput import _targets

    data = real_data.subset(torch.randperm(len(real_data), generator=torch.Generator().manual_seed(1))[:300])
    spec = ArchitectureSpec({e: (16,) for e in "HCNO"})
    model, buckets, y = build_model(spec, seed=0), prepare_buckets(data), _targets(data)
    order, b = torch.randperm(len(data), generator=torch.Generator().manual_seed(2)), 64
    rows = [b * m for m in max_atoms_per_element(data)]
    layout = pad_epoch(buckets, y, order, b, rows)
    assert layout.targets.shape == (len(data) // b, b)
    ordered, y_epoch = buckets.select(order), y.index_select(0, order)
    for k in range(len(data) // b):
        engine = (model.forward_batch(ordered.slice(k * b, (k + 1) * b)) - y_epoch[k * b:(k + 1) * b]).pow(2).mean()
        engine_grads = torch.autograd.grad(engine, list(model.parameters()))
        padded = padded_loss(model, *layout.batch(k))
        padded_grads = torch.autograd.grad(padded, list(model.parameters()))
        assert padded.item() == pytest.approx(engine.item(), rel=1e-5)
        for g, h in zip(padded_grads, engine_grads):
            assert torch.allclose(g, h, rtol=1e-4, atol=1e-9)


def test_a_failing_loop_becomes_an_error_row(real_data, monkeypatch):
    from benchmarks import throughput

    def broken(data, spec, device="cpu"):
        raise RuntimeError("cannot build")

    def fails_in_a_step(data, spec, device="cpu"):
        def epoch(order):
            def step(start, stop):
                raise RuntimeError("indices should be on the same device")
            return step
        return epoch, None

    monkeypatch.setitem(throughput.LOOPS, "broken", broken)
    monkeypatch.setitem(throughput.LOOPS, "fails_in_a_step", fails_in_a_step)
    rows = throughput.measure_throughput(real_data.subset(torch.arange(128)), (32, 64),
                                         loops=("broken", "fails_in_a_step"), min_seconds=0.01)
    assert [(r["loop"], r["batch_size"]) for r in rows] == [("broken", 32), ("broken", 64),
                                                             ("fails_in_a_step", 32), ("fails_in_a_step", 64)]
    assert rows[0]["error"] == "RuntimeError: cannot build" and "same device" in rows[2]["error"]
    assert all("conformations_per_s" not in r for r in rows)


def test_small_batch_variants_report_an_error_without_a_gpu():
    from benchmarks.small_batch import measure_variants

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check measures the variants")
    (row,) = measure_variants("cpu", 64, 0.01, names=("engine_cuda_graph",))
    assert row["loop"] == "engine_cuda_graph" and "need a CUDA device" in row["error"]


def test_the_report_names_the_faster_small_batch_step_and_the_errors():
    from benchmarks.small_batch import compare
    from benchmarks.suite import _ratios, report

    rows = [{"loop": "engine", "batch_size": 256, "step_ms": 2.0, "conformations_per_s": 128000.0},
            {"loop": "torchani", "batch_size": 256, "step_ms": 8.0, "conformations_per_s": 32000.0},
            {"loop": "course", "batch_size": 256, "error": "RuntimeError: indices on cpu"},
            {"loop": "engine_cuda_graph", "batch_size": 256, "step_ms": 0.5, "conformations_per_s": 512000.0},
            {"loop": "engine_compiled", "batch_size": 256, "error": "Timeout: no result within 300 s"}]
    summary = compare(rows, 256)
    assert summary["winner"] == "engine_cuda_graph" and summary["speedup"]["engine_cuda_graph"] == 4.0
    assert summary["errors"] == {"engine_compiled": "Timeout: no result within 300 s"}
    results = {"hardware": {"cpu": "x"}, "device": "cuda", "data": {"train": 8640},
               "throughput": rows, "ratios": _ratios(rows, (256,)), "small_batch": summary}
    text = report(results)
    assert "ratio engine/torchani@256: 4.00x" in text and "engine/course" not in text
    assert "course@256 failed: RuntimeError: indices on cpu" in text
    assert "faster at batch 256: engine_cuda_graph" in text
    assert any(line.split()[:3] == ["course", "256", "error"] for line in text.splitlines())  # the table row


def test_device_option_is_checked_before_anything_runs(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["--device", "no-such-device"])
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--sections", "throughput,limit"])
    message = capsys.readouterr().err
    assert "no CUDA GPU is visible" in message if not torch.cuda.is_available() else "drop limit" in message


def test_course_loops_separate_the_aevs_the_subnormals_and_the_masks(real_data):
    """course (AEVs per step), course_precomputed (AEVs as computed), course_flushed (tiny entries zeroed)."""
    from anibook_utils.models import ArchitectureSpec
    from benchmarks import throughput
    from benchmarks.suite import _ratios

    assert {"course", "course_precomputed", "course_flushed"} <= set(throughput.LOOPS)
    with pytest.raises(ValueError, match="precomputed=True"):
        throughput.course_step(real_data, ArchitectureSpec.course(), precomputed=False, flush=True)
    rows = throughput.measure_throughput(real_data.subset(torch.arange(128)), (64,),
                                         loops=("engine", "course_flushed"), min_seconds=0.01)
    assert all(r["conformations_per_s"] > 0 for r in rows)
    assert set(_ratios(rows, (64,))) == {"engine/course_flushed@64"}
