"""The TorchANI example's recipe (anibook_utils.torchani_example, chapter 6)."""

from __future__ import annotations

import math

import pytest
import torch

from anibook_utils.aev import precompute_aevs
from anibook_utils.data import split_dataset
from anibook_utils.experiments import subsample
from anibook_utils.models import ArchitectureSpec, build_model
from anibook_utils.torchani_example import (EXAMPLE_HIDDEN_DECAYS, TorchANIExample, build_example_model,
                                            example_optimizers, masked_model_from_example,
                                            torchani_example_step)
from anibook_utils.self_energy import fit_self_energies, shift_energies


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
    assert decays == [*EXAMPLE_HIDDEN_DECAYS, 0.0] * 4  # four layers, four elements
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
    with pytest.raises(ValueError, match="'val' or 'train'"):
        example.evaluate("test")


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
