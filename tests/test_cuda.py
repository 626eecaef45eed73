"""The CUDA path (``make gpu-check``): training, potentials, checkpoints across devices, the panel.

Every test here needs a CUDA GPU; on a machine without one they are collected and skipped.
Runs of the same seed on the CPU and on the GPU start from the same weights (drawn on the
CPU) and see the same batches (shuffled on the CPU); only their float32 arithmetic differs
(other kernels, and CUDA's ``index_add_`` adds atoms in no fixed order), so they are compared
within :data:`RTOL`, never bitwise.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import pytest
import torch

from anibook_utils.data import split_dataset
from anibook_utils.models import ArchitectureSpec
from anibook_utils.potential import load_potential, save_potential
from anibook_utils.training import History, TrainConfig, TrainResult, train
from anibook_utils.widgets import TrainingPanel, default_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False): run make gpu-check on one"),
    pytest.mark.usefixtures("real_data"),
]

SMALL = ArchitectureSpec({e: (32, 16) for e in "HCNO"})
RTOL = 1e-2
"""Largest relative difference between CPU and GPU validation RMSEs of one epoch. Rounding-level
changes (weights perturbed by 1e-6 on the CPU) move them by about 1e-6 over these four epochs; a
device bug (wrong targets, batches or state) moves them by far more."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sets(real_data):
    """A small mixed training set (1200) and validation set (400) cut from the real data."""
    index = torch.randperm(len(real_data), generator=torch.Generator().manual_seed(0))[:1600]
    return split_dataset(real_data.subset(index), 0.75, seed=0)


def quick(**changes) -> TrainConfig:
    """Four short epochs of a small model on the GPU (``device`` may be changed)."""
    values = dict(epochs=4, batch_size=64, optimizer="adamw", lr=1e-2, schedule="cosine",
                  standardize=True, num_threads=1, device="cuda")
    return TrainConfig(**{**values, **changes})


def val_rmses(history: History) -> list[float]:
    return history.column("val_rmse")


def assert_model_on(result: TrainResult, device_type: str) -> None:
    """The result says ``device_type`` and every weight is there."""
    assert torch.device(result.device).type == device_type
    assert {p.device.type for p in result.model.parameters()} == {device_type}


def assert_finite(history: History) -> None:
    for record in history:
        for key in ("train_rmse", "train_mae", "val_rmse", "val_mae", "loss", "lr"):
            assert math.isfinite(record[key]), (record["epoch"], key, record[key])


def assert_close(a: list[float], b: list[float], rtol: float = RTOL) -> None:
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=rtol)


@pytest.fixture(scope="module")
def runs(sets) -> dict[str, TrainResult]:
    """The same seed trained on the CPU and on the GPU."""
    train_set, val_set = sets
    return {device: train(SMALL, train_set, val_set, quick(device=device), progress=False)
            for device in ("cpu", "cuda")}


# --- training -------------------------------------------------------------------------------


def test_training_on_cuda_matches_the_cpu_run(runs, sets):
    gpu, cpu = runs["cuda"], runs["cpu"]
    assert_model_on(gpu, "cuda")
    assert_model_on(cpu, "cpu")
    assert_finite(gpu.history)
    assert gpu.stop_reason == "completed" and len(gpu.history) == 4
    assert_close(val_rmses(gpu.history), val_rmses(cpu.history))
    assert_close(gpu.history.column("train_rmse"), cpu.history.column("train_rmse"))
    assert gpu.best_val_rmse < gpu.history[0]["val_rmse"] < 50  # it learns, from a sane start
    predicted = gpu.predict(sets[1])  # the engine hands back CPU float64 energies
    assert predicted.device.type == "cpu" and predicted.dtype == torch.float64
    assert gpu.evaluate(sets[1])["rmse"] == pytest.approx(gpu.best_val_rmse, rel=1e-3)


def test_the_same_seed_twice_on_cuda_gives_close_histories(runs, sets):
    again = train(SMALL, *sets, quick(), progress=False)
    assert_close(val_rmses(again.history), val_rmses(runs["cuda"].history))


@pytest.mark.parametrize("changes", [
    {"fast_path": False},
    {"fast_path": False, "precompute_aevs": False},
    {"optimizer": "torchani", "schedule": "plateau"},
    {"optimizer": "sgd", "lr": 1e-3, "schedule": "onecycle", "loss": "mse_sqrt_atoms"},
    {"exact_train_metrics": True, "schedule": "none", "optimizer": "adam", "lr": 3e-3},
], ids=["padded", "aevs-in-step", "torchani-recipe", "sgd-onecycle", "exact-train-metrics"])
def test_every_engine_path_runs_on_cuda_like_on_the_cpu(sets, changes):
    gpu = train(SMALL, *sets, quick(epochs=2, **changes), progress=False)
    cpu = train(SMALL, *sets, quick(epochs=2, device="cpu", **changes), progress=False)
    assert_model_on(gpu, "cuda")
    assert_finite(gpu.history)
    assert_close(val_rmses(gpu.history), val_rmses(cpu.history))


# --- potentials -----------------------------------------------------------------------------


def test_potential_on_cuda_equals_the_cpu_potential(runs, sets):
    sample = sets[1].subset(torch.arange(64))
    on_cpu = runs["cpu"].potential()
    on_gpu = copy.deepcopy(on_cpu).to("cuda")
    energies, forces = on_gpu.energies_and_forces(sample.species, sample.coordinates)
    assert energies.device.type == forces.device.type == "cuda"
    cpu_energies, cpu_forces = on_cpu.energies_and_forces(sample.species, sample.coordinates)
    assert torch.allclose(energies.cpu(), cpu_energies, rtol=0, atol=1e-5)  # Hartree, float32 networks
    assert torch.allclose(forces.cpu(), cpu_forces, rtol=1e-4, atol=1e-5)  # Hartree/Å
    assert cpu_forces.abs().max() > 1e-4  # not trivially zero
    on_cpu64, on_gpu64 = copy.deepcopy(on_cpu).double(), copy.deepcopy(on_cpu).double().to("cuda")
    coordinates = sample.coordinates.double()
    e64, f64 = on_gpu64.energies_and_forces(sample.species, coordinates)
    cpu_e64, cpu_f64 = on_cpu64.energies_and_forces(sample.species, coordinates)
    assert torch.allclose(e64.cpu(), cpu_e64, rtol=0, atol=1e-10)
    assert torch.allclose(f64.cpu(), cpu_f64, rtol=0, atol=1e-9)
    water = sets[1].select_molecules(["H2O"])
    one = on_gpu.energies(["O", "H", "H"], water.coordinates[0, :3])
    assert one.dim() == 0 and one.device.type == "cuda"


def test_potential_of_a_cuda_result_runs_on_the_gpu(runs, sets):
    # TrainResult.potential() wraps the trained (GPU) model: its AEV computer must follow it.
    sample = sets[1].subset(torch.arange(64))
    potential = runs["cuda"].potential()
    energies, forces = potential.energies_and_forces(sample.species, sample.coordinates)
    assert energies.device.type == forces.device.type == "cuda"
    assert torch.allclose(energies.cpu(), runs["cuda"].predict(sample), rtol=0, atol=1e-5)
    assert torch.isfinite(forces).all()


def test_a_potential_saved_from_cuda_loads_on_either_device(runs, sets, tmp_path):
    sample = sets[1].subset(torch.arange(64))
    path = save_potential(tmp_path / "model.pt", runs["cuda"])
    on_cpu, on_gpu = load_potential(path), load_potential(path, map_location="cuda")
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    assert {t.device.type for t in [*on_gpu.parameters(), *on_gpu.buffers()]} == {"cuda"}
    expected = runs["cuda"].predict(sample)
    assert torch.allclose(on_cpu.energies(sample.species, sample.coordinates), expected, rtol=0, atol=1e-5)
    gpu_energies = on_gpu.energies(sample.species, sample.coordinates)
    assert gpu_energies.device.type == "cuda"
    assert torch.allclose(gpu_energies.cpu(), expected, rtol=0, atol=1e-5)


# --- checkpoints across devices -------------------------------------------------------------


def _interrupt_at_epoch_2(record: dict) -> None:
    if record["epoch"] == 2:
        raise KeyboardInterrupt


def _resume_on_the_other_device(sets, tmp_path, first: str, second: str) -> None:
    """Train 4 epochs on ``first``; cut a second run at epoch 2 and resume it on ``second``."""
    config = quick(schedule="onecycle", device=first)
    full = train(SMALL, *sets, config, checkpoint_dir=tmp_path / "full", progress=False)
    cut = train(SMALL, *sets, config, checkpoint_dir=tmp_path / "cut", callback=_interrupt_at_epoch_2,
                progress=False)
    assert cut.stop_reason == "interrupted" and len(cut.history) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(SMALL, *sets, config.replace(device=second), checkpoint_dir=tmp_path / "cut",
                        resume=True, progress=False)
    assert not [w for w in caught if "Resuming with different settings" in str(w.message)]
    assert_model_on(resumed, second)
    assert resumed.stop_reason == "completed" and len(resumed.history) == 4
    assert resumed.history.to_list()[:2] == cut.history.to_list()  # the saved epochs, as written
    assert_finite(resumed.history)
    assert_close(val_rmses(resumed.history), val_rmses(full.history))
    best = load_potential(tmp_path / "cut" / "best.pt", map_location=second)
    sample = sets[1].subset(torch.arange(32))
    assert torch.allclose(best.energies(sample.species, sample.coordinates).cpu(), resumed.predict(sample),
                          rtol=0, atol=1e-5)


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu(sets, tmp_path):
    _resume_on_the_other_device(sets, tmp_path, "cuda", "cpu")


def test_a_checkpoint_written_on_the_cpu_resumes_on_cuda(sets, tmp_path):
    _resume_on_the_other_device(sets, tmp_path, "cpu", "cuda")


# --- the panel (chapter 7) ------------------------------------------------------------------


def make_panel(sets, epochs: int) -> TrainingPanel:
    """A background panel training tiny networks on the GPU."""
    panel = TrainingPanel(*sets, config=default_config(device="cuda"), background=True, num_threads=1)
    for box in panel.widths.values():
        box.value = "16"
    panel.epochs.value = epochs
    panel.batch_size.value = 64
    return panel


def test_the_panel_trains_on_cuda_in_its_background_thread(sets):
    panel = make_panel(sets, epochs=2)
    panel.train_button.click()
    run = panel.wait(120)
    assert panel.last_error is None, panel.message_text
    assert run is not None and run.stop_reason == "completed" and run.epochs_run == 2
    assert_model_on(run.result, "cuda")
    assert_finite(run.result.history)
    assert panel.runs_frame()["status"].tolist() == ["completed"]
    assert bytes(panel.curve.value).startswith(PNG_MAGIC) and not panel.running


def test_stop_ends_a_cuda_run_and_keeps_its_best_epoch(sets):
    panel = make_panel(sets, epochs=500)
    panel.train_button.click()
    deadline = time.monotonic() + 60
    while panel.progress.value < 1:
        assert time.monotonic() < deadline and panel.running, panel.message_text
        time.sleep(0.01)
    panel.stop_button.click()
    run = panel.wait(60)
    assert panel.last_error is None, panel.message_text
    assert run.stopped and run.stop_reason == "stopped" and 1 <= run.epochs_run < 500
    assert_model_on(run.result, "cuda")
    assert run.result.evaluate(sets[1])["rmse"] == pytest.approx(run.best_val_rmse, rel=1e-3)
