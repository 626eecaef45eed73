"""The masked ANI model (chapter 4): specs, routing, padding, torchani equivalence."""

from __future__ import annotations

import pytest
import torch

from anibook_utils.aev import aev_computer
from anibook_utils.models import (
    ArchitectureError,
    ArchitectureSpec,
    CourseMaskedANIModel,
    ElementBuckets,
    MaskedANIModel,
    UnsupportedSpeciesError,
    build_model,
    flush_tiny,
    to_torchani,
)

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.fixture(scope="module")
def batch(real_data):
    """600 mixed conformations (CH4, NH3, H2O) with their torchani AEVs."""
    index = torch.randperm(len(real_data), generator=torch.Generator().manual_seed(1))[:600]
    subset = real_data.subset(index)
    with torch.no_grad():
        aevs = aev_computer()(subset.species, subset.coordinates)
    return subset.species, aevs


# --- specs -------------------------------------------------------------------------------


def test_course_spec_matches_the_course():
    spec = ArchitectureSpec.course()
    assert spec.hidden == {"H": (160, 128, 96), "C": (144, 112, 96), "N": (128, 112, 96), "O": (128, 112, 96)}
    assert (spec.activation, spec.celu_alpha) == ("celu", 0.1)
    model = build_model(spec)
    assert spec.num_parameters() == sum(p.numel() for p in model.parameters())
    assert isinstance(model.networks["H"][1], torch.nn.CELU) and model.networks["H"][1].alpha == 0.1


def test_spec_round_trips_through_dicts_and_normalises_order():
    spec = ArchitectureSpec({"O": [8], "H": (16, 4)}, activation="gelu")
    assert spec.elements == ("H", "O")
    again = ArchitectureSpec.from_dict(spec.to_dict())
    assert again == spec and again.hidden["H"] == (16, 4)


@pytest.mark.parametrize(
    "hidden, message",
    [
        ({}, "at least one element"),
        ({"H": ()}, "no hidden layers"),
        ({"H": (64, 0)}, "positive integers"),
        ({"H": (64, -3)}, "positive integers"),
        ({"H": (64, 2.5)}, "positive integers"),
        ({"H": 64}, "sequence of widths"),
        ({"Xe": (64,)}, "Unknown element"),
    ],
)
def test_bad_specs_raise_clear_errors(hidden, message):
    with pytest.raises(ArchitectureError, match=message):
        ArchitectureSpec(hidden)


def test_bad_activation_and_dict_fields():
    with pytest.raises(ArchitectureError, match="Unknown activation"):
        ArchitectureSpec({"H": (8,)}, activation="swish2")
    with pytest.raises(ArchitectureError, match="celu_alpha"):
        ArchitectureSpec({"H": (8,)}, celu_alpha=0)
    with pytest.raises(ArchitectureError, match="Unknown architecture field"):
        ArchitectureSpec.from_dict({"hidden": {"H": [8]}, "dropout": 0.1})
    with pytest.raises(ArchitectureError, match="'hidden'"):
        ArchitectureSpec.from_dict({"activation": "celu"})


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model(seed=3), build_model(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(seed=4)
    assert not torch.equal(a.networks["H"][0].weight, c.networks["H"][0].weight)


# --- routing and padding -------------------------------------------------------------------


def test_mask_routing_equals_torchani_ani_networks(batch):
    species, aevs = batch
    model = build_model(seed=0)
    networks = to_torchani(model)
    assert type(networks).__name__ == "ANINetworks"
    ours, theirs = model(species, aevs), networks(species, aevs)
    assert (ours - theirs).abs().max() < 1e-6
    # also with a non-trivial output scale, and in float64
    model.output_scale.fill_(0.02)
    assert (model(species, aevs) - to_torchani(model)(species, aevs)).abs().max() < 1e-6
    model64 = model.double()
    diff = model64(species, aevs.double()) - to_torchani(model64).double()(species, aevs.double())
    assert diff.abs().max() < 1e-12


def test_padding_contributes_exactly_zero(batch):
    species, aevs = batch
    model = build_model(seed=0)
    reference = model(species, aevs)
    # three extra padding atoms holding garbage features change nothing
    n = species.shape[0]
    padded_species = torch.cat([species, torch.full((n, 3), -1)], dim=1)
    padded_aevs = torch.cat([aevs, torch.randn(n, 3, aevs.shape[-1]) * 100], dim=1)
    assert torch.equal(model(padded_species, padded_aevs), reference)
    atomic = model.atomic_energies(padded_species, padded_aevs)
    assert torch.all(atomic[padded_species < 0] == 0)
    assert torch.allclose(atomic.sum(dim=1), reference, atol=1e-6)


def test_course_model_leaks_minus_one_per_padding_atom(batch):
    species, aevs = batch
    clean = build_model(seed=0)
    course = build_model(seed=0, course=True)
    assert isinstance(course, CourseMaskedANIModel)
    padding = (species < 0).sum(dim=1).float()
    leak = course(species, aevs) - clean(species, aevs)
    assert padding.max() > 0
    assert torch.allclose(leak, -padding, atol=1e-5)
    atomic = course.atomic_energies(species, aevs)
    assert torch.all(atomic[species < 0] == -1)
    assert torch.allclose(atomic.sum(dim=1), course(species, aevs), atol=1e-5)


def _report_mask_aevs(sub_nets, species, aevs):
    """The course report's appendix, ``ANIModel.mask_aevs`` and the sum of ``forward``, verbatim."""
    species_1d = species.flatten()
    aevs = aevs.flatten(0, 1)
    aevs_shape = aevs.shape
    energies = torch.empty(aevs_shape[0], dtype=aevs.dtype, device=aevs.device).fill_(-1)
    atom_symbol_map = {'H': 0, 'C': 1, 'N': 2, 'O': 3}
    for atom_symbol, net in sub_nets.items():
        atom_type = atom_symbol_map[atom_symbol]
        mask = (species_1d == atom_type)
        atom_indices = torch.where(mask)[0]
        if atom_indices.shape[0] > 0:
            masked_aevs = aevs[atom_indices].to(aevs.device)
            energies[mask] = net(masked_aevs).flatten()
    energies = energies.reshape(species.shape)
    return torch.sum(energies, dim=1)


def test_course_model_is_the_report_code_and_follows_the_inputs_dtype(batch):
    species, aevs = batch
    course = build_model(seed=0, course=True)
    assert torch.equal(course(species, aevs), _report_mask_aevs(course.networks, species, aevs))
    # the buffer follows the inputs: float64 AEVs give float64 energies, on the inputs' device
    course64 = build_model(seed=0, course=True).double()
    energies = course64(species, aevs.double())
    assert energies.dtype == torch.float64 and energies.device == aevs.device
    assert torch.allclose(energies, _report_mask_aevs(course64.networks, species, aevs.double()), atol=1e-12)
    # gradients flow through the masked writes into every network that has atoms
    course(species, aevs).sum().backward()
    assert all(net[0].weight.grad is not None for net in course.networks.values())


def test_course_model_refuses_buckets_and_bad_shapes(batch):
    species, aevs = batch
    course = build_model(seed=0, course=True)
    with pytest.raises(NotImplementedError, match="feed='padded'"):
        course.forward_batch(ElementBuckets.from_padded(species, aevs).batch())
    with pytest.raises(ValueError, match="Expected species"):
        course(species, aevs[..., :10])


def test_bucketed_batches_equal_the_padded_forward(batch):
    species, aevs = batch
    model = build_model(seed=0)
    buckets = ElementBuckets.from_padded(species, aevs)
    assert [len(f) for f in buckets.features] == [int((species == i).sum()) for i in range(4)]
    assert torch.allclose(model.forward_batch(buckets.batch()), model(species, aevs), atol=1e-6)
    order = torch.randperm(len(species), generator=torch.Generator().manual_seed(0))
    shuffled = buckets.select(order)
    expected = model(species[order], aevs[order])
    got = torch.cat([model.forward_batch(shuffled.slice(s, s + 64)) for s in range(0, len(order), 64)])
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(model.forward_batch(buckets.batch(order[:10])), expected[:10], atol=1e-6)


def test_gradients_match_torchani(batch):
    species, aevs = batch
    model = build_model(seed=0)
    networks = to_torchani(model)
    model(species, aevs).sum().backward()
    networks(species, aevs).sum().backward()
    ours = model.networks["C"][0].weight.grad
    theirs = networks.atomics["C"].layers[0].weight.grad
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def test_unknown_species_raise(batch):
    species, aevs = batch
    model = build_model(ArchitectureSpec({"H": (8,), "C": (8,)}))
    with pytest.raises(UnsupportedSpeciesError, match="only has networks for"):
        model(species, aevs)
    with pytest.raises(UnsupportedSpeciesError, match="only has networks for"):
        model.forward_batch(ElementBuckets.from_padded(species, aevs).batch())
    with pytest.raises(ValueError, match="Expected species"):
        model(species, aevs[..., :10])


def test_flush_tiny_zeroes_only_negligible_entries(batch):
    x = torch.tensor([1e-40, -1e-25, 1e-15, 0.0, -2.0])
    assert flush_tiny(x).tolist() == [0.0, 0.0, pytest.approx(1e-15), 0.0, -2.0]
    # and leaves the model's energies unchanged
    species, aevs = batch
    model = build_model(seed=0)
    assert torch.equal(model(species, flush_tiny(aevs)), model(species, aevs))


def test_model_is_a_plain_module():
    model = MaskedANIModel(ArchitectureSpec.course())
    assert "output_scale" in model.state_dict()
    assert "parameters=" in repr(model)
    with pytest.raises(TypeError):
        MaskedANIModel({"H": (8,)})  # type: ignore[arg-type]
