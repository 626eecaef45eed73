"""The training engine (chapter 4): configs, determinism, checkpoints, resume, potentials."""

from __future__ import annotations

import math
import threading

import matplotlib
import pytest
import torch

from anibook_utils.checkpoints import CheckpointError, CheckpointMismatchError
from anibook_utils.data import split_dataset
from anibook_utils.models import ArchitectureSpec, build_model
from anibook_utils.potential import ANIPotential, load_potential, save_potential
from anibook_utils.feeding import predict_energies
from anibook_utils.history import History
from anibook_utils.self_energy import fit_self_energies
from anibook_utils.training import ConfigError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("real_data")

SMALL = ArchitectureSpec({"H": (32, 16), "C": (32, 16), "N": (32, 16), "O": (32, 16)})
METRICS = ("epoch", "train_rmse", "train_mae", "val_rmse", "val_mae", "loss", "lr")


@pytest.fixture(scope="module")
def sets(real_data):
    """A small mixed training set (1200) and validation set (400) cut from the real data."""
    index = torch.randperm(len(real_data), generator=torch.Generator().manual_seed(0))[:1600]
    return split_dataset(real_data.subset(index), 0.75, seed=0)


def quick(**changes) -> TrainConfig:
    values = dict(epochs=4, batch_size=64, optimizer="adamw", lr=1e-2, schedule="cosine",
                  standardize=True, num_threads=1, device="cpu")  # exact reproducibility holds on the CPU
    return TrainConfig(**{**values, **changes})


def metrics(history: History) -> list[tuple]:
    return [tuple(r[k] for k in METRICS) for r in history]


# --- configs and self energies -------------------------------------------------------------


def test_course_config_is_the_course():
    c = TrainConfig.course()
    assert (c.optimizer, c.batch_size, c.lr, c.weight_decay, c.epochs, c.loss) == ("adam", 2560, 1e-3, 1e-4, 20, "mse")
    assert TrainConfig.from_dict(TrainConfig.fast().to_dict()) == TrainConfig.fast()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimizer": "adagrad"}, "Unknown optimizer"),
        ({"schedule": "linear"}, "Unknown schedule"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"early_stopping": 0}, "early_stopping"),
        ({"feed": "on_the_fly"}, "Unknown feed"),
    ],
)
def test_bad_configs_raise(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_unknown_config_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid fields"):
        TrainConfig.from_dict({"epochs": 3, "learning_rate": 1e-3})


def test_self_energies_explain_most_of_the_energy(sets):
    train_set, _ = sets
    sae = fit_self_energies(train_set, warn=False).as_tensor()
    assert sae.shape == (4,) and sae.dtype == torch.float64
    counts = torch.stack([(train_set.species == i).sum(1) for i in range(4)], 1).double()
    residual = train_set.energies - counts @ sae
    assert residual.abs().mean() < 0.05 * train_set.energies.std()  # hartree


# --- training -----------------------------------------------------------------------------


def test_loss_decreases_on_real_data(sets):
    train_set, val_set = sets
    result = train(SMALL, train_set, val_set, quick(epochs=6), progress=False)
    rmse = result.history.column("val_rmse")
    assert len(rmse) == 6 and rmse[-1] < 0.75 * rmse[0]
    losses = result.history.column("loss")
    assert losses[-1] < losses[0]
    assert result.best_val_rmse == min(rmse) and result.stop_reason == "completed"
    # the returned model is the best one
    assert result.evaluate(val_set)["rmse"] == pytest.approx(result.best_val_rmse, rel=1e-4)


def test_course_settings_train_the_course_model(sets):
    train_set, val_set = sets
    result = train(None, train_set, val_set, TrainConfig.course(epochs=2, num_threads=1), progress=False)
    assert result.model.spec == ArchitectureSpec.course() and len(result.history) == 2
    assert math.isfinite(result.best_val_rmse)


def test_same_seed_gives_identical_histories(sets):
    train_set, val_set = sets
    a = train(SMALL, train_set, val_set, quick(), progress=False)
    b = train(SMALL, train_set, val_set, quick(), progress=False)
    c = train(SMALL, train_set, val_set, quick(seed=1), progress=False)
    assert metrics(a.history) == metrics(b.history)
    assert metrics(a.history) != metrics(c.history)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("optimizer, schedule, loss", [
    ("adam", "onecycle", "mse_sqrt_atoms"), ("sgd", "plateau", "mse"), ("torchani", "none", "mse"),
])
def test_every_optimizer_and_schedule_runs(sets, optimizer, schedule, loss):
    train_set, val_set = sets
    lr = 1e-3 if optimizer == "sgd" else 3e-3
    result = train(SMALL, train_set, val_set, quick(epochs=2, optimizer=optimizer, schedule=schedule, loss=loss, lr=lr),
                   progress=False)
    assert len(result.history) == 2 and math.isfinite(result.best_val_rmse)


def test_the_three_feeds_agree(sets):
    train_set, val_set = sets
    runs = [train(SMALL, train_set, val_set, quick(epochs=2, feed=feed), progress=False).history
            for feed in ("buckets", "padded", "in_step")]
    for other in runs[1:]:
        for r, s in zip(runs[0], other):
            assert r["val_rmse"] == pytest.approx(s["val_rmse"], rel=1e-3)


def test_course_model_trains_on_the_padded_path(sets):
    train_set, val_set = sets
    model = build_model(SMALL, seed=0, course=True)
    with pytest.raises(ConfigError, match="feed='padded'"):
        train(model, train_set, val_set, quick(epochs=1), progress=False)
    result = train(model, train_set, val_set, quick(epochs=1, feed="padded"), progress=False)
    assert len(result.history) == 1


def test_callback_stop_event_and_stop_reasons(sets):
    train_set, val_set = sets
    seen, event = [], threading.Event()

    def callback(record):
        seen.append(record["epoch"])
        if record["epoch"] == 2:
            event.set()

    result = train(SMALL, train_set, val_set, quick(epochs=5), callback=callback, stop_event=event, progress=False)
    assert seen == [1, 2] and result.interrupted and result.stop_reason == "stopped"
    assert len(result.history) == 2
    early = train(SMALL, train_set, val_set, quick(epochs=50, lr=1e-9, schedule="none", early_stopping=2,
                                                         min_improvement=0.01),
                  progress=False)
    assert early.stop_reason == "early_stopping" and len(early.history) < 50
    target = train(SMALL, train_set, val_set, quick(epochs=50, target_val_rmse=1e6), progress=False)
    assert target.stop_reason == "target_reached" and len(target.history) == 1
    budget = train(SMALL, train_set, val_set, quick(epochs=50, max_time=1e-6), progress=False)
    assert budget.stop_reason == "time_budget" and len(budget.history) == 1


def test_history_plots_and_tabulates(sets):
    train_set, val_set = sets
    result = train(SMALL, train_set, val_set, quick(epochs=2), progress=False)
    frame = result.history.to_frame()
    assert list(frame.index) == [1, 2] and {"train_rmse", "val_rmse", "lr", "time"} <= set(frame.columns)
    assert isinstance(result.history.plot(), matplotlib.figure.Figure)
    assert "best" in repr(result.history)


# --- checkpoints --------------------------------------------------------------------------


def test_resume_after_interrupt_equals_uninterrupted_run(sets, tmp_path):
    train_set, val_set = sets
    config = quick(epochs=5, schedule="onecycle")
    full = train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "full", progress=False)

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "cut", callback=interrupt,
                progress=False)
    assert cut.interrupted and cut.stop_reason == "interrupted" and len(cut.history) == 2
    assert cut.best_epoch in (1, 2)
    assert metrics(cut.history) == metrics(full.history)[:2]

    resumed = train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "cut", resume=True,
                    progress=False)
    assert metrics(resumed.history) == metrics(full.history)
    assert resumed.best_epoch == full.best_epoch
    for x, y in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(x, y)
    assert (tmp_path / "cut" / "latest.pt").is_file() and (tmp_path / "cut" / "best.pt").is_file()
    assert not list((tmp_path / "cut").glob("*.tmp"))  # atomic writes leave no temporary files


def test_checkpoint_of_another_architecture_is_refused(sets, tmp_path):
    train_set, val_set = sets
    train(SMALL, train_set, val_set, quick(epochs=1), checkpoint_dir=tmp_path, progress=False)
    other = ArchitectureSpec({"H": (16,), "C": (16,), "N": (16,), "O": (16,)})
    with pytest.raises(CheckpointMismatchError, match="written for the architecture"):
        train(other, train_set, val_set, quick(epochs=2), checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        train(SMALL, train_set, val_set, quick(epochs=2), resume=True, progress=False)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read"):
        load_potential(bad)


# --- the trained potential ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sets):
    train_set, val_set = sets
    return train(SMALL, train_set, val_set, quick(epochs=3), progress=False)


def test_potential_energies_match_predictions_and_survive_save_load(trained, sets, tmp_path):
    _, val_set = sets
    predicted = trained.predict(val_set)
    assert predicted.dtype == torch.float64
    errors = predicted - val_set.energies
    assert errors.pow(2).mean().sqrt() * 627.5 == pytest.approx(trained.best_val_rmse, rel=1e-3)
    potential = trained.potential()
    energies = potential.energies(val_set.species, val_set.coordinates)
    assert torch.allclose(energies, predicted, atol=1e-5)
    path = save_potential(tmp_path / "model.pt", trained)
    loaded = load_potential(path)
    assert isinstance(loaded, ANIPotential)
    assert torch.allclose(loaded.energies(val_set.species, val_set.coordinates), energies, atol=1e-9)
    # a single molecule by symbols, without the batch axis
    water = val_set.select_molecules(["H2O"])
    one = loaded.energies(["O", "H", "H"], water.coordinates[0, :3])
    assert one.dim() == 0 and one.item() == pytest.approx(float(water.energies[0]), abs=0.05)


def test_best_checkpoint_loads_as_a_potential(sets, tmp_path):
    train_set, val_set = sets
    result = train(SMALL, train_set, val_set, quick(epochs=2), checkpoint_dir=tmp_path, progress=False)
    potential = load_potential(tmp_path / "best.pt")
    direct = predict_energies(result.model, val_set, result.self_energies)
    assert torch.allclose(potential.energies(val_set.species, val_set.coordinates), direct, atol=1e-5)


def test_forces_equal_minus_the_finite_difference_gradient(trained, sets):
    _, val_set = sets
    potential = trained.potential().to(torch.float64)
    for name in ("CH4", "NH3"):
        molecule = val_set.select_molecules([name])
        n = int((molecule.species[0] >= 0).sum())
        species, coordinates = molecule.species[0, :n], molecule.coordinates[0, :n].double()
        forces = potential.forces(species, coordinates)
        assert forces.shape == (n, 3)
        h = 1e-5
        numeric = torch.zeros_like(coordinates)
        for atom in range(n):
            for axis in range(3):
                plus, minus = coordinates.clone(), coordinates.clone()
                plus[atom, axis] += h
                minus[atom, axis] -= h
                numeric[atom, axis] = -(potential.energies(species, plus) - potential.energies(species, minus)) / (2 * h)
        assert torch.allclose(forces, numeric, atol=1e-7, rtol=1e-5)
        assert forces.abs().max() > 1e-4  # not trivially zero
