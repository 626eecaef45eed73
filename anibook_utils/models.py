"""The masked ANI model: one network per element, atoms routed by masks (chapter 4).

An ANI potential predicts a molecule's energy as the sum of atomic energies, each
computed by the network of that atom's element from the atom's AEV. This module holds

- :class:`ArchitectureSpec`: the per-element layer widths and activation as *data*
  (validated, serialisable), so chapters, widgets and experiments build models from dicts;
- :class:`MaskedANIModel`: the clean model built from a spec (:func:`build_model`);
- :class:`CourseMaskedANIModel`: the course's forward pass as its report prints it (a
  ``-1``-filled buffer written through boolean masks), kept so chapters and benchmarks can
  train and compare it;
- :class:`ElementBuckets` / :class:`ElementBatch`: the training engine's fast data layout,
  each element's AEV rows stored once with the conformation that owns them, so a step
  gathers rows, runs the element's network and adds atomic energies into molecular ones
  without touching padding;
- :func:`to_torchani`: the same networks as a torchani ``ANINetworks`` (weights copied).

Species are element indices in :data:`anibook_utils.data.ELEMENTS` order (H=0, C=1, N=2,
O=3) with ``-1`` for padding; AEVs are ``(conformations, atoms, features)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .data import ELEMENTS

__all__ = [
    "ACTIVATIONS", "COURSE_HIDDEN", "ArchitectureError", "ArchitectureSpec", "CourseMaskedANIModel",
    "ElementBatch", "ElementBuckets", "MaskedANIModel", "UnsupportedSpeciesError", "build_model",
    "flush_tiny", "to_torchani",
]

COURSE_HIDDEN: dict[str, tuple[int, ...]] = {
    "H": (160, 128, 96),
    "C": (144, 112, 96),
    "N": (128, 112, 96),
    "O": (128, 112, 96),
}
"""The course's hidden-layer widths per element (the ANI-1x networks)."""

ACTIVATIONS: tuple[str, ...] = ("celu", "gelu", "silu", "softplus", "tanh", "relu")
"""Activation names an :class:`ArchitectureSpec` accepts."""


class ArchitectureError(ValueError):
    """An architecture spec that cannot be built (the message says what to change)."""


class UnsupportedSpeciesError(ValueError):
    """The input holds an element the model has no network for."""


def _activation(name: str, celu_alpha: float, inplace: bool = False) -> torch.nn.Module:
    # In place, the activation overwrites its Linear layer's output (which autograd does not
    # need): one large allocation less per layer and step.
    if name == "celu":
        return torch.nn.CELU(celu_alpha, inplace=inplace)
    if name in ("silu", "relu"):
        return {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU}[name](inplace=inplace)
    return {"gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "softplus": torch.nn.Softplus,
            "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[name]()


@dataclass(frozen=True)
class ArchitectureSpec:
    """Per-element hidden-layer widths and the activation: an ANI architecture as data.

    ``hidden`` maps element symbols (a subset of ``ELEMENTS``) to hidden-layer widths; every
    network ends in one linear output (the atomic energy). Build the model with
    :func:`build_model`. Specs are validated on creation and round-trip through
    :meth:`to_dict` / :meth:`from_dict` (plain JSON-able dicts for widgets and checkpoints).

    >>> spec = ArchitectureSpec.course()
    >>> spec.hidden["H"]
    (160, 128, 96)
    >>> ArchitectureSpec({"H": (64, 32), "C": (64, 32)}, activation="gelu").num_parameters()
    55042
    """

    hidden: Mapping[str, tuple[int, ...]]
    activation: str = "celu"
    celu_alpha: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, Mapping) or len(self.hidden) == 0:
            raise ArchitectureError(
                "An architecture needs at least one element network: pass hidden={'H': (160, 128, 96), ...} "
                f"with element symbols from {ELEMENTS}."
            )
        normalised: dict[str, tuple[int, ...]] = {}
        unknown = [e for e in self.hidden if e not in ELEMENTS]
        if unknown:
            raise ArchitectureError(
                f"Unknown element(s) {unknown} in the architecture: this book's data use only {ELEMENTS}."
            )
        for element in ELEMENTS:  # canonical order, whatever order the caller used
            if element not in self.hidden:
                continue
            widths = self.hidden[element]
            if isinstance(widths, (int, str)) or not isinstance(widths, Sequence):
                raise ArchitectureError(
                    f"The layers of {element} must be a sequence of widths such as (160, 128, 96), "
                    f"got {widths!r}."
                )
            if len(widths) == 0:
                raise ArchitectureError(
                    f"The network of {element} has no hidden layers: give at least one width, e.g. (64,)."
                )
            for width in widths:
                if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
                    raise ArchitectureError(
                        f"Layer widths must be positive integers; {element} has {tuple(widths)!r}."
                    )
            normalised[element] = tuple(int(w) for w in widths)
        object.__setattr__(self, "hidden", normalised)
        if self.activation not in ACTIVATIONS:
            raise ArchitectureError(
                f"Unknown activation {self.activation!r}: choose one of {ACTIVATIONS}."
            )
        if not float(self.celu_alpha) > 0:
            raise ArchitectureError(f"celu_alpha must be positive, got {self.celu_alpha}.")
        object.__setattr__(self, "celu_alpha", float(self.celu_alpha))

    @classmethod
    def course(cls) -> "ArchitectureSpec":
        """The course's networks: CELU(0.1) and :data:`COURSE_HIDDEN` widths for H, C, N, O."""
        return cls(dict(COURSE_HIDDEN), activation="celu", celu_alpha=0.1)

    @property
    def elements(self) -> tuple[str, ...]:
        """The elements that have a network, in ``ELEMENTS`` order."""
        return tuple(self.hidden)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, strings, floats) for JSON, widgets and checkpoints."""
        return {"hidden": {e: list(w) for e, w in self.hidden.items()},
                "activation": self.activation, "celu_alpha": self.celu_alpha}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ArchitectureSpec":
        """The spec written by :meth:`to_dict` (unknown keys are an error)."""
        allowed = {"hidden", "activation", "celu_alpha"}
        extra = set(values) - allowed
        if extra:
            raise ArchitectureError(f"Unknown architecture field(s) {sorted(extra)}; expected {sorted(allowed)}.")
        if "hidden" not in values:
            raise ArchitectureError("An architecture dict needs a 'hidden' entry mapping elements to widths.")
        hidden = values["hidden"]
        if not isinstance(hidden, Mapping):
            raise ArchitectureError(f"'hidden' must map element symbols to widths, got {hidden!r}.")
        return cls({e: tuple(w) if isinstance(w, (list, tuple)) else w for e, w in hidden.items()},
                   **{k: v for k, v in values.items() if k != "hidden"})

    def num_parameters(self, aev_dim: int = 384) -> int:
        """Trainable parameters (weights and biases) of the model built with ``aev_dim`` inputs."""
        total = 0
        for widths in self.hidden.values():
            dims = (aev_dim, *widths, 1)
            total += sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))
        return total

    def label(self) -> str:
        """The layers in a few characters: ``"all 64-32"``, or elements with the same layers
        grouped, e.g. ``"H 160-128-96 · C 144-112-96 · N,O 128-112-96"``."""
        groups: dict[str, list[str]] = {}
        for element, widths in self.hidden.items():
            groups.setdefault("-".join(map(str, widths)), []).append(element)
        if len(groups) == 1 and len(self.hidden) > 1:
            return f"all {next(iter(groups))}"
        return " · ".join(f"{','.join(elements)} {layers}" for layers, elements in groups.items())

    def describe(self) -> str:
        """One line per element, e.g. ``H: 384 → 160 → 128 → 96 → 1``."""
        return "\n".join(
            f"{e}: " + " → ".join(str(d) for d in ("AEV", *w, 1)) for e, w in self.hidden.items()
        ) + f"\nactivation: {self.activation}" + (
            f"({self.celu_alpha:g})" if self.activation == "celu" else "")


TINY_FEATURE = 1e-20
"""AEV entries smaller than this (in magnitude) are set to 0 before training (see :func:`flush_tiny`)."""


def flush_tiny(x: Tensor, threshold: float = TINY_FEATURE) -> Tensor:
    """``x`` with entries below ``threshold`` in magnitude set to exactly 0.

    The far tails of the AEV Gaussians hold values down to 1e-38. Multiplied by small
    weights or gradients inside a matrix product they underflow to *subnormal* numbers,
    which x86 CPUs process tens of times more slowly: with 3 % of the nonzero AEV entries
    below 1e-30, a training step took 1.4x as long. An entry of 1e-20 changes a float32
    pre-activation (about 0.1 in size, resolved to 1e-8) by nothing at all, so zeroing them
    leaves every result the same.
    """
    if not x.is_floating_point():
        return x
    return x.masked_fill(x.abs() < threshold, 0.0)


@dataclass
class ElementBatch:
    """A batch of conformations in element-bucketed form (the fast path's input).

    ``features[i]`` holds the AEV rows of all atoms of element ``i`` in the batch (or None if
    there are none) and ``owners[i]`` the batch position (``0..num_conformations-1``) of the
    conformation each row belongs to.
    """

    features: list[Tensor | None]
    owners: list[Tensor | None]
    num_conformations: int


@dataclass
class ElementBuckets:
    """A data set's AEVs grouped by element once, so batches need no masks and no padding.

    For element ``i``: ``features[i]`` is ``(atoms_i, F)``, the AEV rows of that element's
    atoms, conformation by conformation; ``owners[i]`` is ``(atoms_i,)``, the conformation
    each row belongs to (non-decreasing); ``offsets[i]`` is ``(N + 1,)``: conformation ``n``
    owns rows ``offsets[i][n]:offsets[i][n + 1]``. Build with :meth:`from_padded`.

    The training engine reorders a set once per epoch with :meth:`select` (one gather per
    element) and then takes each batch with :meth:`slice`, which returns views: a step
    gathers nothing, masks nothing and never sees padding.
    """

    features: list[Tensor]
    owners: list[Tensor]
    offsets: list[Tensor]
    num_conformations: int
    _bounds: list[list[int]] | None = field(default=None, repr=False)

    @classmethod
    def from_padded(cls, species: Tensor, aevs: Tensor, num_elements: int = len(ELEMENTS)) -> "ElementBuckets":
        """Bucket padded ``species`` (N, A) and ``aevs`` (N, A, F) by element (tiny entries flushed, see :func:`flush_tiny`)."""
        if species.shape != aevs.shape[:-1]:
            raise ValueError(
                f"species {tuple(species.shape)} and aevs {tuple(aevs.shape)} disagree: the AEVs must "
                "have shape (conformations, atoms, features) matching the species."
            )
        n, a = species.shape
        bad = (species < -1) | (species >= num_elements)
        if bool(bad.any()):
            raise UnsupportedSpeciesError(
                f"Species indices must lie in -1..{num_elements - 1}; found {species[bad].unique().tolist()}."
            )
        flat_species = species.reshape(-1)
        flat_aevs = aevs.reshape(n * a, -1)
        features, owners, offsets = [], [], []
        for i in range(num_elements):
            rows = (flat_species == i).nonzero().view(-1)  # sorted, hence grouped by conformation
            owner = torch.div(rows, a, rounding_mode="floor")
            features.append(flush_tiny(flat_aevs.index_select(0, rows)).contiguous())
            owners.append(owner)
            offsets.append(_offsets(owner, n))
        return cls(features, owners, offsets, n)

    def __len__(self) -> int:
        return self.num_conformations

    def to(self, device: str | torch.device) -> "ElementBuckets":
        """A copy on ``device``."""
        return ElementBuckets([f.to(device) for f in self.features], [o.to(device) for o in self.owners],
                              [o.to(device) for o in self.offsets], self.num_conformations)

    def select(self, index: Tensor) -> "ElementBuckets":
        """The conformations at ``index``, in that order (conformation ``index[k]`` becomes ``k``).

        One ``index_select`` per element copies the rows; use it once per epoch with a random
        permutation, then :meth:`slice` the batches.
        """
        index = index.to(self.offsets[0].device)
        m = int(index.shape[0])
        positions = torch.arange(m, device=index.device)
        features, owners, offsets = [], [], []
        for f, ptr in zip(self.features, self.offsets):
            start = ptr.index_select(0, index)
            counts = ptr.index_select(0, index + 1) - start
            total = int(ptr[-1]) if m == self.num_conformations else int(counts.sum())
            owner = torch.repeat_interleave(positions, counts, output_size=total)
            first = torch.cumsum(counts, 0) - counts  # where each conformation's block starts
            rows = start.index_select(0, owner) + torch.arange(total, device=index.device) - first.index_select(0, owner)
            features.append(f.index_select(0, rows))
            owners.append(owner)
            offsets.append(_offsets(owner, m))
        return ElementBuckets(features, owners, offsets, m)

    def _row_bounds(self) -> list[list[int]]:
        if self._bounds is None:  # offsets as Python ints: slicing then needs no device syncs
            self._bounds = [ptr.tolist() for ptr in self.offsets]
        return self._bounds

    def slice(self, start: int, stop: int) -> ElementBatch:
        """Conformations ``start:stop`` as an :class:`ElementBatch` of views (no copies)."""
        stop = min(stop, self.num_conformations)
        feats: list[Tensor | None] = []
        owners: list[Tensor | None] = []
        for f, owner, bounds in zip(self.features, self.owners, self._row_bounds()):
            lo, hi = bounds[start], bounds[stop]
            if hi == lo:
                feats.append(None)
                owners.append(None)
            else:
                feats.append(f[lo:hi])
                owners.append(owner[lo:hi] - start if start else owner[lo:hi])
        return ElementBatch(feats, owners, stop - start)

    def batch(self, index: Tensor | None = None) -> ElementBatch:
        """The conformations at ``index`` (all if None) as one :class:`ElementBatch`."""
        if index is None:
            return self.slice(0, self.num_conformations)
        return self.select(index).slice(0, int(index.shape[0]))


def _offsets(owner: Tensor, n: int) -> Tensor:
    ptr = torch.zeros(n + 1, dtype=torch.long, device=owner.device)
    ptr[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)
    return ptr


class MaskedANIModel(torch.nn.Module):
    """Molecular energy = sum over atoms of the atom's element network applied to its AEV.

    Built from an :class:`ArchitectureSpec` (see :func:`build_model`). Each atom is routed to
    its element's network; padding atoms (species ``-1``) are never evaluated and contribute
    exactly zero; the atomic energies are added straight into the molecular energies with
    ``index_add_``. The output is multiplied by the buffer ``output_scale`` (1 unless the
    training engine standardised the targets), so energies come out in the target's unit
    (Hartree, relative to the self energies).

    Two entry points compute the same function:

    - ``model(species, aevs)``: padded ``(N, A)`` species and ``(N, A, F)`` AEVs, as torchani;
    - ``model.forward_batch(batch)``: an :class:`ElementBatch` (the training engine's fast path).
    """

    def __init__(self, spec: ArchitectureSpec, aev_dim: int = 384) -> None:
        super().__init__()
        if not isinstance(spec, ArchitectureSpec):
            raise TypeError(f"MaskedANIModel needs an ArchitectureSpec, got {type(spec).__name__}.")
        if aev_dim <= 0:
            raise ArchitectureError(f"aev_dim must be positive, got {aev_dim}.")
        self.spec = spec
        self.aev_dim = int(aev_dim)
        networks = {}
        for element, widths in spec.hidden.items():
            dims = (self.aev_dim, *widths)
            layers: list[torch.nn.Module] = []
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers += [torch.nn.Linear(d_in, d_out), _activation(spec.activation, spec.celu_alpha, inplace=True)]
            layers.append(torch.nn.Linear(dims[-1], 1))
            networks[element] = torch.nn.Sequential(*layers)
        self.networks = torch.nn.ModuleDict(networks)
        self.register_buffer("output_scale", torch.tensor(1.0))
        # (species index, network) pairs, so forward loops need no dict lookups
        self._routes = [(ELEMENTS.index(e), net) for e, net in self.networks.items()]

    @property
    def elements(self) -> tuple[str, ...]:
        return self.spec.elements

    def _missing(self, index: int) -> UnsupportedSpeciesError:
        symbol = ELEMENTS[index] if 0 <= index < len(ELEMENTS) else f"index {index}"
        return UnsupportedSpeciesError(
            f"The input contains {symbol} but this model only has networks for {self.elements}: "
            "add it to the ArchitectureSpec or select molecules without it."
        )

    def _check_species(self, species: Tensor) -> None:
        present = torch.unique(species).tolist()
        for s in present:
            if s != -1 and (s < 0 or s >= len(ELEMENTS) or ELEMENTS[s] not in self.networks):
                raise self._missing(int(s))

    def forward(self, species: Tensor, aevs: Tensor) -> Tensor:
        """Molecular energies ``(N,)`` from padded species ``(N, A)`` and AEVs ``(N, A, F)``."""
        if species.shape != aevs.shape[:-1] or aevs.shape[-1] != self.aev_dim:
            raise ValueError(
                f"Expected species (N, A) and AEVs (N, A, {self.aev_dim}); got {tuple(species.shape)} "
                f"and {tuple(aevs.shape)}."
            )
        self._check_species(species)
        n, a = species.shape
        flat_species = species.reshape(-1)
        flat_aevs = aevs.reshape(n * a, self.aev_dim)
        energies = aevs.new_zeros(n)
        for index, net in self._routes:
            rows = (flat_species == index).nonzero().view(-1)
            if rows.shape[0] == 0:
                continue
            owners = torch.div(rows, a, rounding_mode="floor")
            energies = energies.index_add(0, owners, net(flat_aevs.index_select(0, rows)).view(-1))
        return energies * self.output_scale

    def atomic_energies(self, species: Tensor, aevs: Tensor) -> Tensor:
        """Atomic energies ``(N, A)``: exactly 0 at padding (for teaching and analysis)."""
        self._check_species(species)
        out = aevs.new_zeros(species.shape)
        for index, net in self._routes:
            mask = species == index
            if bool(mask.any()):
                out = out.masked_scatter(mask, net(aevs[mask]).view(-1))
        return out * self.output_scale

    def forward_batch(self, batch: ElementBatch) -> Tensor:
        """Molecular energies ``(batch.num_conformations,)`` from an :class:`ElementBatch`."""
        first = next(f for f in batch.features if f is not None)
        energies = first.new_zeros(batch.num_conformations)
        covered = set()
        for index, net in self._routes:
            covered.add(index)
            x = batch.features[index] if index < len(batch.features) else None
            if x is None:
                continue
            energies = energies.index_add(0, batch.owners[index], net(x).view(-1))
        for index, x in enumerate(batch.features):
            if x is not None and index not in covered:
                raise self._missing(index)
        return energies * self.output_scale

    def extra_repr(self) -> str:
        return f"elements={self.elements}, aev_dim={self.aev_dim}, parameters={self.spec.num_parameters(self.aev_dim):,}"


class CourseMaskedANIModel(MaskedANIModel):
    """The course's forward pass, as in its report's appendix (``ANIModel.mask_aevs``), kept
    so chapters and benchmarks can train, time and compare it (chapter 4).

    The atoms of the batch are flattened; a buffer with one entry per atom is made on the
    AEVs' device and in their dtype and filled with ``-1``; each element's network writes its
    atoms' energies into it through a boolean mask; the buffer is reshaped to the padded
    species and summed over atoms::

        species_1d, aevs = species.flatten(), aevs.flatten(0, 1)
        energies = torch.empty(aevs.shape[0], dtype=aevs.dtype, device=aevs.device).fill_(-1)
        for symbol, net in networks.items():            # H, C, N, O
            mask = species_1d == {"H": 0, "C": 1, "N": 2, "O": 3}[symbol]
            atom_indices = torch.where(mask)[0]
            if atom_indices.shape[0] > 0:
                energies[mask] = net(aevs[atom_indices]).flatten()
        return energies.reshape(species.shape).sum(dim=1)

    Nothing overwrites the ``-1`` at padding atoms (species ``-1``), so a conformation padded
    with ``k`` atoms gets ``-k`` (Hartree) added: its energy depends on how wide its batch was
    padded. Everything else follows the inputs' device and dtype, as the course's code did.
    One addition: an element without a network raises :class:`UnsupportedSpeciesError`, where
    the course's code would silently leave its ``-1`` in the sum.
    The course's model had no output scale, so ``output_scale`` is not applied (with
    ``TrainConfig(standardize=True)`` the engine then only rescales the loss). Same networks,
    parameters and state-dict keys as :class:`MaskedANIModel`; it has no bucketed path, so
    train it with ``TrainConfig(feed="padded")`` (the course's padded batches) or ``"in_step"``.
    """

    def forward(self, species: Tensor, aevs: Tensor) -> Tensor:
        """Molecular energies ``(N,)``: the course's masked sum, ``-1`` per padding atom included."""
        if species.shape != aevs.shape[:-1] or aevs.shape[-1] != self.aev_dim:
            raise ValueError(
                f"Expected species (N, A) and AEVs (N, A, {self.aev_dim}); got {tuple(species.shape)} "
                f"and {tuple(aevs.shape)}."
            )
        self._check_species(species)
        species_1d = species.flatten()
        flat_aevs = aevs.flatten(0, 1)
        energies = torch.empty(flat_aevs.shape[0], dtype=flat_aevs.dtype, device=flat_aevs.device).fill_(-1)
        for symbol, net in self.networks.items():
            mask = species_1d == ELEMENTS.index(symbol)
            atom_indices = torch.where(mask)[0]
            if atom_indices.shape[0] > 0:
                energies[mask] = net(flat_aevs[atom_indices]).flatten()
        return energies.reshape(species.shape).sum(dim=1)

    def atomic_energies(self, species: Tensor, aevs: Tensor) -> Tensor:
        """The course's per-atom buffer ``(N, A)`` before the sum: ``-1`` at padding atoms."""
        self._check_species(species)
        energies = torch.empty(species.shape, dtype=aevs.dtype, device=aevs.device).fill_(-1)
        for symbol, net in self.networks.items():
            mask = species == ELEMENTS.index(symbol)
            if bool(mask.any()):
                energies[mask] = net(aevs[mask]).flatten()
        return energies

    def forward_batch(self, batch: ElementBatch) -> Tensor:
        raise NotImplementedError(
            "CourseMaskedANIModel only has the course's padded forward(species, aevs); train it with "
            "TrainConfig(feed='padded') or use MaskedANIModel."
        )


def build_model(spec: ArchitectureSpec | Mapping[str, Any] | None = None, aev_dim: int = 384,
                seed: int | None = None, course: bool = False) -> MaskedANIModel:
    """A fresh :class:`MaskedANIModel` (or :class:`CourseMaskedANIModel` with ``course=True``).

    ``spec`` may be an :class:`ArchitectureSpec`, its :meth:`~ArchitectureSpec.to_dict` form,
    or None for :meth:`ArchitectureSpec.course`. With ``seed`` the initial weights are drawn
    from a generator seeded with it (the global RNG is left untouched).
    """
    if spec is None:
        spec = ArchitectureSpec.course()
    elif isinstance(spec, Mapping):
        spec = ArchitectureSpec.from_dict(spec)
    elif not isinstance(spec, ArchitectureSpec):
        raise TypeError(f"build_model needs an ArchitectureSpec or a dict, got {type(spec).__name__}.")
    cls = CourseMaskedANIModel if course else MaskedANIModel
    if seed is None:
        return cls(spec, aev_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(spec, aev_dim)


def to_torchani(model: MaskedANIModel) -> torch.nn.Module:
    """The same networks as a torchani ``ANINetworks`` (``AtomicNetwork``, bias, same activation).

    Weights are copied, so both compute the same function (up to float rounding); the
    ``output_scale`` is folded into the final layers.
    """
    from .torchani_shim import ANINetworks, AtomicNetwork

    if any(e not in model.networks for e in ELEMENTS[: len(model.networks)]):
        raise ArchitectureError(
            "torchani routes species index i to its i-th network, so the model needs networks for the "
            f"first elements of {ELEMENTS} without gaps; it has {model.elements}."
        )
    modules = {}
    for element, net in model.networks.items():
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        dims = [linears[0].in_features] + [lin.out_features for lin in linears]
        atomic = AtomicNetwork(dims, activation=_activation(model.spec.activation, model.spec.celu_alpha),
                               bias=True).to(device=linears[0].weight.device, dtype=linears[0].weight.dtype)
        targets = [*atomic.layers, atomic.final_layer]
        with torch.no_grad():
            for src, dst in zip(linears, targets):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            targets[-1].weight.mul_(model.output_scale)
            targets[-1].bias.mul_(model.output_scale)
        modules[element] = atomic
    return ANINetworks(modules)
