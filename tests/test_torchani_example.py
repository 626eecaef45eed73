"""TorchANI's training examples: the legacy tutorial (anibook_utils.torchani_example) and the current
example (anibook_utils.torchani_current), chapter 6."""

from __future__ import annotations

import math

import pytest
import torch

from anibook_utils.aev import precompute_aevs
from anibook_utils.data import split_dataset
from anibook_utils.experiments import subsample
from anibook_utils.models import ArchitectureSpec, build_model
from anibook_utils.self_energy import fit_self_energies, shift_energies
from anibook_utils.torchani_current import (CurrentExample, atomic_numbers, batch_splits, build_current_model,
                                            current_step, write_torchani_dataset)
from anibook_utils.torchani_example import (ADAMW_DEFAULT_DECAY, EXAMPLE_FINAL_DECAY, EXAMPLE_HIDDEN_DECAYS,
                                            TorchANIExample, build_example_model, example_optimizers,
                                            masked_model_from_example, subnormal_energy_change,
                                            time_step_parts, torchani_example_step)


def test_model_has_the_course_widths_and_neurochem_initialisation():
    model = build_example_model(seed=0)
    networks = model.networks
    n_params = sum(p.numel() for p in networks.parameters())
    assert n_params == ArchitectureSpec.course().num_parameters()
    assert [layer.out_features for layer in networks.atomics["H"].layers] == [160, 128, 96]
    assert isinstance(networks.atomics["H"].activation, torch.nn.CELU)
    assert networks.atomics["H"].activation.alpha == 0.1
    for name, p in networks.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    first = networks.atomics["C"].layers[0].weight
    assert abs(first.std().item() - 1 / math.sqrt(384)) < 0.2 / math.sqrt(384)  # kaiming_normal_(a=1)
    again, other = build_example_model(seed=0), build_example_model(seed=1)
    assert torch.equal(again.networks.atomics["C"].layers[0].weight, first)
    assert not torch.equal(other.networks.atomics["C"].layers[0].weight, first)


def test_model_needs_every_element():
    with pytest.raises(ValueError, match="missing"):
        build_example_model({"H": (8,), "C": (8,)})


def test_optimizers_split_weights_and_biases_with_per_layer_decay():
    networks = build_example_model(seed=0).networks
    adamw, sgd = example_optimizers(networks)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(sgd, torch.optim.SGD)
    decays = [g["weight_decay"] for g in adamw.param_groups]
    assert decays == [*EXAMPLE_HIDDEN_DECAYS, EXAMPLE_FINAL_DECAY] * 4  # four layers, four elements
    # as in the tutorial: NeuroChem's decays on layers 2 and 3, AdamW's default on the others
    assert decays[:4] == [1e-2, 1e-5, 1e-6, 1e-2]
    assert ADAMW_DEFAULT_DECAY == torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults["weight_decay"]
    assert all(g["lr"] == 1e-3 for g in adamw.param_groups + sgd.param_groups)
    assert all(g["momentum"] == 0 for g in sgd.param_groups)
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    names = {id(p): n for n, p in networks.named_parameters()}
    assert in_adamw.isdisjoint(in_sgd)
    assert in_adamw | in_sgd == set(names)
    assert all(names[i].endswith("weight") for i in in_adamw)
    assert all(names[i].endswith("bias") for i in in_sgd)


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared CPU: one thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_split(real_data):
    train_set, val_set = split_dataset(real_data, 0.8, seed=0)
    return subsample(train_set, 600, seed=0), subsample(val_set, 300, seed=0)


def test_one_step_lowers_the_loss_on_its_batch(small_split):
    batch = small_split[0].subset(torch.arange(256))
    model = build_example_model(seed=0)
    optimizers = example_optimizers(model.networks)
    targets = shift_energies(batch, self_energies=fit_self_energies(batch, warn=False)).float()
    losses = [float(torchani_example_step(model, optimizers, batch.species, batch.coordinates, targets))
              for _ in range(10)]
    assert losses[-1] < losses[0]


def test_the_recipe_learns(small_split, tmp_path):
    train_set, val_set = small_split
    example = TorchANIExample(train_set, val_set, batch_size=128, seed=0, checkpoint_dir=tmp_path)
    history = example.run(max_epochs=6, progress=False)
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert example.initial_val_rmse > 0
    assert example.best_val_rmse < 0.5 * example.initial_val_rmse  # the validation RMSE falls
    assert example.best_val_rmse == min(history.column("val_rmse"))
    assert (tmp_path / "best.pt").is_file()
    best = example.best_model()
    rmse_before = example.evaluate()
    example.model.networks.load_state_dict(best.networks.state_dict())
    assert example.evaluate() == pytest.approx(example.best_val_rmse, rel=1e-5)
    assert rmse_before >= example.best_val_rmse - 1e-9
    for record in history:
        assert record["epoch_time"] == pytest.approx(record["step_time"] + record["val_time"])
        assert math.isfinite(record["train_rmse"])


def test_run_continues_and_stops_on_the_learning_rate(small_split):
    train_set, val_set = small_split
    example = TorchANIExample(train_set, val_set, batch_size=300, seed=1, plateau_patience=0,
                              early_stopping_lr=2.6e-4)
    example.run(max_epochs=2, progress=False, train_metrics=False)
    example.run(max_epochs=30, progress=False, train_metrics=False)
    assert example.stop_reason == "early_stopping"  # patience 0 halves the rate after every non-improvement
    assert example.learning_rate < 2.6e-4
    assert [r["epoch"] for r in example.history] == list(range(1, len(example.history) + 1))


def test_evaluate_rejects_unknown_sets(small_split):
    example = TorchANIExample(*small_split, batch_size=512)
    with pytest.raises(ValueError, match="pass test_data"):
        example.evaluate("test")
    with pytest.raises(ValueError, match="which must be one of"):
        example.evaluate("validation")


def test_test_rmse_scores_the_model_chosen_on_validation(small_split, real_data):
    train_set, val_set = small_split
    test_set = subsample(split_dataset(real_data, (0.8, 0.1, 0.1), seed=0)[2], 200, seed=0)
    example = TorchANIExample(train_set, val_set, test_set, batch_size=128, seed=0)
    example.run(max_epochs=3, progress=False, train_metrics=False)
    best = example.best_model()
    assert example.evaluate("val", model=best) == pytest.approx(example.best_val_rmse, rel=1e-5)
    assert example.test_rmse() == pytest.approx(example.evaluate("test", model=best))
    assert math.isfinite(example.test_rmse()) and example.test_rmse() > 0
    assert example.model.training  # evaluating another model leaves the trained one in training mode


def test_masked_model_copy_computes_the_same_energies(small_split):
    train_set, _ = small_split
    example_model = build_example_model(seed=3)
    masked = masked_model_from_example(example_model)
    batch = train_set.subset(torch.arange(64))
    aevs = precompute_aevs(batch)
    with torch.no_grad():
        ours = masked(batch.species, aevs)
        theirs = example_model.networks(batch.species, aevs)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layers differ"):
        masked_model_from_example(example_model, ArchitectureSpec({e: (8,) for e in "HCNO"}))
    assert build_model(ArchitectureSpec.course()).aev_dim == masked.aev_dim


def test_step_parts_are_timed_and_flushing_keeps_the_energies(small_split):
    train_set, _ = small_split
    probe = train_set.subset(torch.arange(64))
    example_model = build_example_model(seed=0)
    before = {k: v.clone() for k, v in example_model.state_dict().items()}
    parts = time_step_parts(example_model, probe, fit_self_energies(train_set, warn=False).as_tensor(), repeats=1)
    assert {"AEVs (AEVComputer, no gradient)", "legacy tutorial: whole step",
            "engine: whole step (precomputed AEVs, element buckets)"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    assert all(torch.equal(before[k], v) for k, v in example_model.state_dict().items())  # left unchanged
    assert 0 <= subnormal_energy_change(example_model, probe) < 1e-6


# --------------------------------------------------------------------------------------
# TorchANI 2.9's current example (anibook_utils.torchani_current)
# --------------------------------------------------------------------------------------


def test_atomic_numbers_keep_the_padding():
    species = torch.tensor([[1, 0, 0, 0, 0], [2, 0, 0, 0, -1], [3, 0, 0, -1, -1]])
    assert atomic_numbers(species).tolist() == [[6, 1, 1, 1, 1], [7, 1, 1, 1, -1], [8, 1, 1, -1, -1]]


def test_written_dataset_holds_the_same_conformations(small_split, tmp_path):
    train_set, _ = small_split
    dataset = write_torchani_dataset(train_set, tmp_path / "part.h5")
    assert dataset.num_conformers == len(train_set)
    assert dataset.grouping == "by_num_atoms"
    energies, numbers = [], []
    for group in dataset.values():
        energies.append(group["energies"])
        numbers.extend(group["species"].flatten().tolist())
    assert torch.equal(torch.cat(energies).sort().values, train_set.energies.sort().values)
    assert set(numbers) <= {1, 6, 7, 8}
    with pytest.raises(FileExistsError, match="new file name"):
        write_torchani_dataset(train_set, tmp_path / "part.h5")


def test_batch_splits_makes_one_division_per_part(small_split, tmp_path):
    train_set, val_set = small_split
    batched = batch_splits({"training": train_set, "validation": val_set}, tmp_path, batch_size=256, seed=0)
    assert set(batched) == {"training", "validation"}
    sizes = [int(batched["training"][i]["energies"].shape[0]) for i in range(len(batched["training"]))]
    assert sum(sizes) == len(train_set) and max(sizes) == 256
    assert len(batched["validation"]) == math.ceil(len(val_set) / 256)


def test_current_model_is_simple_ani_seeded():
    model = build_current_model(seed=0)
    again, other = build_current_model(seed=0), build_current_model(seed=1)
    first = model.neural_networks.atomics["H"].layers[0].weight
    assert torch.equal(again.neural_networks.atomics["H"].layers[0].weight, first)
    assert not torch.equal(other.neural_networks.atomics["H"].layers[0].weight, first)
    assert [layer.out_features for layer in model.neural_networks.atomics["H"].layers] == [256, 192, 160]
    assert isinstance(model.neural_networks.atomics["H"].activation, torch.nn.GELU)
    assert model.neural_networks.atomics["H"].layers[0].bias is None
    assert "repulsion_xtb" in model.potentials
    assert "repulsion_xtb" not in build_current_model(seed=0, repulsion=False).potentials
    assert first.dtype == torch.float32


def test_current_step_lowers_the_loss_on_its_batch(small_split):
    batch_data = small_split[0].subset(torch.arange(128))
    batch = {"species": atomic_numbers(batch_data.species), "coordinates": batch_data.coordinates,
             "energies": batch_data.energies}
    model = build_current_model(seed=0)
    optimizer = torch.optim.AdamW(model.neural_networks.parameters(), lr=0.5e-3, weight_decay=1e-6)
    losses = [float(current_step(model, optimizer, batch)) for _ in range(8)]
    assert losses[-1] < losses[0]


def test_current_example_learns(small_split, tmp_path):
    train_set, val_set = small_split
    current = CurrentExample(train_set, val_set, val_set, batch_size=100, seed=0, checkpoint_dir=tmp_path)
    history = current.run(max_epochs=3, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert current.best_val_rmse < current.initial_val_rmse  # the validation RMSE falls
    assert current.best_epoch >= 1  # the example never keeps the untrained model
    assert current.best_val_rmse == min(history.column("val_rmse"))
    assert (tmp_path / "best_model_state.pt").is_file()
    assert current.test_rmse() == pytest.approx(current.best_val_rmse, rel=1e-5)  # test = validation here
    assert current.learning_rate == pytest.approx(0.5e-3)
    for record in history:
        assert record["step_time"] > 0 and math.isfinite(record["train_rmse"])
    with pytest.raises(ValueError, match="'val', 'train' or 'test'"):
        current.evaluate("holdout")
