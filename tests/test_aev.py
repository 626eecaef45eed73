"""Chapter 3: AEVs from scratch agree with torchani, are invariant, and are cached correctly."""

from __future__ import annotations

import math

import pytest
import torch

from anibook_utils.aev import (
    AEV_LENGTH,
    COURSE_AEV_CONSTANTS,
    angular_terms,
    compute_aevs,
    cosine_cutoff,
    aev_computer,
    feature_blocks,
    precompute_aevs,
    radial_terms,
    species_pair_index,
)
from anibook_utils.cache import cache_dir

pytestmark = pytest.mark.usefixtures("real_data")

TOLERANCE = 1e-5
PER_MOLECULE = 256  # conformations of each molecule compared with torchani


@pytest.fixture(scope="module")
def computer():
    return aev_computer()


def sample(data, n: int, seed: int = 0):
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(index)


def random_rotation(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


# --- constants and shapes -----------------------------------------------------------


def test_course_constants():
    c = COURSE_AEV_CONSTANTS
    assert (c["Rcr"], c["Rca"], c["EtaR"], c["EtaA"], c["Zeta"], c["num_species"]) == (
        5.2, 3.5, 16.0, 8.0, 32.0, 4
    )
    assert len(c["ShfR"]) == 16
    assert c["ShfR"][0] == pytest.approx(0.9) and c["ShfR"][-1] == pytest.approx(4.93125)
    assert c["ShfA"] == pytest.approx([0.9, 1.55, 2.2, 2.85])
    assert len(c["ShfZ"]) == 8
    assert c["ShfZ"][0] == pytest.approx(math.pi / 16) and c["ShfZ"][-1] == pytest.approx(
        15 * math.pi / 16
    )


def test_aev_length_is_384(computer):
    assert AEV_LENGTH == 384
    assert computer.out_dim == 384
    assert (computer.radial_len, computer.angular_len) == (64, 320)
    blocks = feature_blocks()
    assert len(blocks) == 4 + 10
    assert blocks[0] == ("R:H", 0, 16) and blocks[4] == ("A:HH", 64, 96)
    assert blocks[-1] == ("A:OO", 352, 384)


def test_course_computer_uses_course_constants(computer):
    c = COURSE_AEV_CONSTANTS
    assert computer.radial.cutoff == c["Rcr"] and computer.angular.cutoff == c["Rca"]
    torch.testing.assert_close(computer.radial.shifts, torch.tensor(c["ShfR"]))
    torch.testing.assert_close(computer.angular.sections, torch.tensor(c["ShfZ"]))
    assert next(aev_computer(device="cpu").buffers()).device.type == "cpu"


def test_species_pair_index_is_symmetric_and_complete():
    table = species_pair_index(4)
    assert torch.equal(table, table.T)
    assert sorted(table.triu().unique().tolist()) == list(range(10))
    assert table[0, 0] == 0 and table[0, 1] == 1 and table[3, 3] == 9


# --- the pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("cutoff", [5.2, 3.5])
def test_cosine_cutoff_goes_to_zero_at_the_cutoff(cutoff):
    r = torch.tensor([0.0, cutoff / 2, cutoff, cutoff + 1e-3, 2 * cutoff], dtype=torch.float64)
    f = cosine_cutoff(r, cutoff)
    torch.testing.assert_close(f, torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    grid = torch.linspace(0, cutoff, 200, dtype=torch.float64)
    assert (cosine_cutoff(grid, cutoff).diff() <= 0).all()  # monotonically decreasing
    # Zero slope at the cutoff: the energy stays smooth when a neighbour leaves.
    edge = torch.tensor([cutoff - 1e-4], dtype=torch.float64, requires_grad=True)
    cosine_cutoff(edge, cutoff).sum().backward()
    assert abs(float(edge.grad)) < 1e-3


def test_radial_terms_peak_at_their_shift():
    c = COURSE_AEV_CONSTANTS
    shifts = torch.tensor(c["ShfR"], dtype=torch.float64)
    terms = radial_terms(shifts, c["EtaR"], shifts, c["Rcr"])  # distance k at shift k
    assert terms.shape == (16, 16)
    torch.testing.assert_close(terms.diagonal(), 0.25 * cosine_cutoff(shifts, c["Rcr"]))
    assert torch.equal(terms.argmax(dim=1), torch.arange(16))
    assert radial_terms(torch.tensor([c["Rcr"]]), c["EtaR"], shifts, c["Rcr"]).abs().max() == 0


def test_angular_terms_shape_and_peak():
    c = COURSE_AEV_CONSTANTS
    d = torch.tensor([1.2, 1.2], dtype=torch.float64)
    # Angles 0.5 and 2.0 rad once ANI has computed acos(0.95 cos):
    cos = torch.cos(torch.tensor([0.5, 2.0], dtype=torch.float64)) / 0.95
    terms = angular_terms(d, d, cos, c["EtaA"], c["Zeta"], c["ShfA"], c["ShfZ"], c["Rca"])
    assert terms.shape == (2, 32)
    sections = torch.tensor(c["ShfZ"], dtype=torch.float64)
    by_section = terms.view(2, 4, 8).sum(dim=1)
    assert by_section[0].argmax() == (sections - 0.5).abs().argmin()
    assert by_section[1].argmax() == (sections - 2.0).abs().argmin()
    # An angle exactly on a section gives the maximum angular factor 2 (times radial, cutoff).
    on_section = torch.cos(sections[3:4]) / 0.95
    t = angular_terms(
        d[:1], d[:1], on_section, c["EtaA"], c["Zeta"], c["ShfA"], c["ShfZ"], c["Rca"]
    )
    shifts = torch.tensor(c["ShfA"], dtype=torch.float64)
    expected = 2 * torch.exp(-c["EtaA"] * (1.2 - shifts) ** 2) * cosine_cutoff(d[:1], c["Rca"]) ** 2
    torch.testing.assert_close(t.view(4, 8)[:, 3], expected)


# --- from scratch == torchani ---------------------------------------------------------


@pytest.mark.parametrize("molecule", [0, 1, 2])
def test_matches_torchani_on_real_conformations(real_data, computer, molecule):
    assert len(real_data.molecule_names) == 3
    name = real_data.molecule_names[molecule]
    part = sample(real_data.select_molecules([name]), PER_MOLECULE)
    assert len(part) >= 200
    ours = compute_aevs(part.species, part.coordinates)
    with torch.no_grad():
        theirs = computer(part.species, part.coordinates)
    assert ours.shape == theirs.shape == (len(part), part.species.shape[1], 384)
    assert theirs.abs().max() > 0.1  # not trivially zero
    assert (ours - theirs).abs().max() < TOLERANCE


def test_matches_torchani_on_padded_batches(real_data, computer):
    mixed = sample(real_data, 600, seed=1)  # CH4 (5 atoms) with NH3, H2O padded by -1
    assert (mixed.species == -1).any()
    species, coordinates = mixed.species, mixed.coordinates
    # One extra padding column with junk coordinates: must change nothing.
    species = torch.cat([species, torch.full((len(mixed), 1), -1)], dim=1)
    junk = torch.randn(len(mixed), 1, 3, generator=torch.Generator().manual_seed(2))
    coordinates = torch.cat([coordinates, junk], dim=1)
    ours = compute_aevs(species, coordinates)
    with torch.no_grad():
        theirs = computer(species, coordinates)
    assert (ours - theirs).abs().max() < TOLERANCE
    assert ours[species == -1].abs().max() == 0  # zero rows for padding
    # The padded result equals each molecule computed on its own, unpadded.
    for row in (0, 1, 2, len(mixed) - 1):
        n = int((species[row] >= 0).sum())
        alone = compute_aevs(species[row : row + 1, :n], coordinates[row : row + 1, :n])
        torch.testing.assert_close(ours[row : row + 1, :n], alone, atol=1e-6, rtol=0)


def test_edge_cases_match_torchani(computer):
    # An all-padding row, a lone atom, a diatomic and an atom beyond both cutoffs.
    species = torch.tensor([[-1, -1, -1], [1, -1, -1], [1, 0, -1], [3, 0, 0]])
    coordinates = torch.tensor([
        [[0.0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0.3, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0.0, 0, 0], [1.1, 0, 0], [0, 0, 0]],
        [[0.0, 0, 0], [0.96, 0, 0], [0, 6.0, 0]],
    ])
    ours = compute_aevs(species, coordinates)
    with torch.no_grad():
        theirs = computer(species, coordinates)
    assert (ours - theirs).abs().max() < TOLERANCE
    assert ours[0].abs().max() == 0 and ours[1].abs().max() == 0
    assert ours[3, 2].abs().max() == 0  # the far hydrogen sees nothing
    empty = compute_aevs(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, 3))
    assert empty.shape == (0, 3, 384)


def test_float64_matches_float32(real_data):
    part = sample(real_data, 100, seed=3)
    aevs32 = compute_aevs(part.species, part.coordinates)
    aevs64 = compute_aevs(part.species, part.coordinates.double())
    assert aevs64.dtype == torch.float64
    assert (aevs64 - aevs32.double()).abs().max() < TOLERANCE


def test_gradients_are_finite_and_match_torchani(real_data, computer):
    part = sample(real_data, 64, seed=4)
    ours = part.coordinates.clone().requires_grad_()
    compute_aevs(part.species, ours).square().sum().backward()
    theirs = part.coordinates.clone().requires_grad_()
    computer(part.species, theirs).square().sum().backward()
    assert torch.isfinite(ours.grad).all()
    assert ours.grad[part.species == -1].abs().max() == 0
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-4, rtol=1e-4)


# --- invariances ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def invariance_batch(real_data):
    part = sample(real_data, 200, seed=5)
    coordinates = part.coordinates.double()
    return part.species, coordinates, compute_aevs(part.species, coordinates)


def test_rotation_invariance(invariance_batch):
    species, coordinates, aevs = invariance_batch
    rotated = coordinates @ random_rotation(0).T
    assert (rotated - coordinates).abs().max() > 0.1
    assert (compute_aevs(species, rotated) - aevs).abs().max() < 1e-10


def test_translation_invariance(invariance_batch):
    species, coordinates, aevs = invariance_batch
    shifted = coordinates + torch.tensor([3.0, -7.5, 12.0], dtype=torch.float64)
    assert (compute_aevs(species, shifted) - aevs).abs().max() < 1e-10


def test_permutation_equivariance(invariance_batch):
    species, coordinates, aevs = invariance_batch
    # Reverse the real atoms of each conformation (padding stays at the end).
    perm = torch.arange(species.shape[1]).repeat(len(species), 1)
    for row, n in enumerate((species >= 0).sum(dim=1).tolist()):
        perm[row, :n] = torch.arange(n - 1, -1, -1)
    take = perm.unsqueeze(-1)
    permuted = compute_aevs(species.gather(1, perm), coordinates.gather(1, take.expand(-1, -1, 3)))
    expected = aevs.gather(1, take.expand(-1, -1, aevs.shape[-1]))
    assert (permuted - expected).abs().max() < 1e-10


def test_stretching_a_bond_changes_the_aev(real_data):
    part = real_data.select_molecules(["CH4"]).subset([0])
    coordinates = part.coordinates.double()
    before = compute_aevs(part.species, coordinates)
    carbon = int((part.species[0] == 1).nonzero()[0])
    hydrogen = int((part.species[0] == 0).nonzero()[0])
    bond = coordinates[0, hydrogen] - coordinates[0, carbon]
    stretched = coordinates.clone()
    stretched[0, hydrogen] += 0.2 * bond / bond.norm()
    after = compute_aevs(part.species, stretched)
    assert (after[0, carbon] - before[0, carbon]).abs().max() > 1e-3
    assert (after[0, hydrogen] - before[0, hydrogen]).abs().max() > 1e-3


# --- bad input ------------------------------------------------------------------------


def test_bad_inputs_raise_specific_errors():
    species = torch.tensor([[1, 0, 0, 0, 0]])
    coordinates = torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="unsqueeze"):
        compute_aevs(species[0], coordinates[0])
    with pytest.raises(ValueError, match="disagree"):
        compute_aevs(species[:, :4], coordinates)
    with pytest.raises(ValueError, match=r"-1\.\.3"):
        compute_aevs(torch.tensor([[1, 0, 0, 0, 7]]), coordinates)
    with pytest.raises(TypeError, match="integer"):
        compute_aevs(species.float(), coordinates)
    with pytest.raises(TypeError, match="floating"):
        compute_aevs(species, coordinates.long())
    incomplete = {k: v for k, v in COURSE_AEV_CONSTANTS.items() if k != "Zeta"}
    with pytest.raises(KeyError, match="Zeta"):
        compute_aevs(species, coordinates, incomplete)
    with pytest.raises(ValueError, match="Rca"):
        compute_aevs(species, coordinates, dict(COURSE_AEV_CONSTANTS, Rca=6.0))


# --- precompute and cache -------------------------------------------------------------


def test_precompute_aevs_matches_torchani_and_is_cached(real_data, computer):
    part = sample(real_data, 300, seed=6)
    before = set(cache_dir().glob("aev-*.npz"))
    aevs = precompute_aevs(part, batch_size=128)
    created = set(cache_dir().glob("aev-*.npz")) - before
    assert len(created) == 1
    assert aevs.dtype == torch.float32 and aevs.shape == (300, part.species.shape[1], 384)
    with torch.no_grad():
        torch.testing.assert_close(aevs, computer(part.species, part.coordinates))
    again = precompute_aevs(part, batch_size=64)  # served from the cache
    assert set(cache_dir().glob("aev-*.npz")) - before == created
    assert torch.equal(again, aevs)


def test_precompute_key_follows_coordinates_and_constants(real_data):
    part = sample(real_data, 50, seed=7)
    aevs = precompute_aevs(part)
    moved = part.subset(torch.arange(50))
    moved.coordinates = moved.coordinates.clone()
    moved.coordinates[0, 0, 0] += 0.3
    assert not torch.equal(precompute_aevs(moved), aevs)
    other = aev_computer()
    other.radial.eta.fill_(20.0)
    assert not torch.equal(precompute_aevs(part, computer=other), aevs)
    with pytest.raises(ValueError, match="batch_size"):
        precompute_aevs(part, batch_size=0)
