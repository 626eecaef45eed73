"""How the training engine feeds conformations to a model, and how it scores one (chapter 4).

Three *feeds* (``TrainConfig.feed``) compute the same energies in different ways:

- ``"buckets"`` (the default): the AEVs of the whole set are computed once (they do not
  depend on the weights), grouped by element once (:class:`~anibook_utils.models.ElementBuckets`),
  and each batch is a set of views; needs a :class:`~anibook_utils.models.MaskedANIModel`;
- ``"padded"``: AEVs computed once, batches as padded ``(species, aevs)`` for any model
  with ``forward(species, aevs)`` (the course's model, for instance);
- ``"in_step"``: the AEV computer runs inside every step from the coordinates, as
  TorchANI's examples do (and as training on forces must).

:func:`predict_energies` and :func:`evaluate` score a trained model on a data set.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .aev import COURSE_AEV_CONSTANTS, aev_computer, precompute_aevs
from .data import HARTREE_TO_KCAL, ANIData
from .models import ElementBuckets, MaskedANIModel, flush_tiny
from .self_energy import unshift_energies

__all__ = ["FEEDS", "FeedError", "Feeder", "energy_metrics", "evaluate", "force_metrics", "predict_energies", "prepare_buckets",
           "supports_buckets"]

FEEDS = ("buckets", "padded", "in_step")
"""The ways :class:`Feeder` gives conformations to a model (see the module's description)."""


class FeedError(ValueError):
    """A model that cannot be fed the way asked (the message says which feed to use)."""


def supports_buckets(model: torch.nn.Module) -> bool:
    """True for models whose ``forward_batch`` takes element buckets (:class:`MaskedANIModel`'s own)."""
    return getattr(type(model), "forward_batch", None) is MaskedANIModel.forward_batch


def _aevs(data: ANIData, aev_constants: Mapping[str, Any]) -> Tensor:
    computer = None if dict(aev_constants) == COURSE_AEV_CONSTANTS else aev_computer(aev_constants)
    return precompute_aevs(data, computer=computer)


_BUCKETS: "OrderedDict[tuple[str, str], ElementBuckets]" = OrderedDict()


def prepare_buckets(data: ANIData, aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS) -> ElementBuckets:
    """AEVs of ``data`` (cached on disk by :func:`~anibook_utils.aev.precompute_aevs`) grouped by
    element; the last few are also kept in memory, so grids of runs prepare a set only once."""
    key = (data.fingerprint(), repr(sorted(dict(aev_constants).items())))
    if key in _BUCKETS:
        _BUCKETS.move_to_end(key)
        return _BUCKETS[key]
    buckets = ElementBuckets.from_padded(data.species, _aevs(data, aev_constants))
    _BUCKETS[key] = buckets
    while len(_BUCKETS) > 4:
        _BUCKETS.popitem(last=False)
    return buckets


class Feeder:
    """Predicts the energies (model units, relative to self energies) of conformations by index."""

    def __init__(self, model: torch.nn.Module, data: ANIData, feed: str, device: torch.device,
                 aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS) -> None:
        if feed not in FEEDS:
            raise FeedError(f"Unknown feed {feed!r}: choose one of {FEEDS}.")
        self.model, self.n, self.feed = model, len(data), feed
        # what training predictions call: the model itself, or (several processes) a DistributedDataParallel
        # wrapper of anibook_utils.distributed.ModelStep, set by the engine
        self.forward: Callable[..., Tensor] = model.forward_batch if feed == "buckets" else model
        if feed == "buckets":
            if not supports_buckets(model):
                raise FeedError(
                    f"feed='buckets' needs a MaskedANIModel; {type(model).__name__} only has a padded "
                    "forward(species, aevs): pass TrainConfig(feed='padded').")
            self.buckets = prepare_buckets(data, aev_constants).to(device)
            return
        self.species = data.species.to(device)
        if feed == "padded":
            self.aevs = flush_tiny(_aevs(data, aev_constants)).to(device)
        else:
            self.coordinates = data.coordinates.to(device)
            self.computer = aev_computer(aev_constants, device=device)
            self.forces = data.forces.to(device) if data.forces is not None else None

    def ordered(self, order: Tensor | None = None) -> Callable[[int, int], Tensor]:
        """A function ``(start, stop) -> energies`` of conformations ``order[start:stop]``.

        With buckets the rows are gathered here, once (per epoch), and each batch is a set of
        views; the other feeds index the padded tensors in each call.
        """
        forward = self.forward
        if self.feed == "buckets":
            buckets = self.buckets if order is None else self.buckets.select(order)
            return lambda start, stop: forward(buckets.slice(start, stop))
        index = order if order is not None else torch.arange(self.n, device=self.species.device)
        if self.feed == "padded":
            def padded(start: int, stop: int) -> Tensor:
                rows = index[start:stop]
                return forward(self.species.index_select(0, rows), self.aevs.index_select(0, rows))
            return padded

        def in_step(start: int, stop: int) -> Tensor:
            rows = index[start:stop]
            species = self.species.index_select(0, rows)
            with torch.no_grad():
                aevs = self.computer(species, self.coordinates.index_select(0, rows))
            return forward(species, aevs)
        return in_step

    def with_forces(self, order: Tensor | None = None) -> Callable[[int, int, bool], tuple[Tensor, Tensor]]:
        """A function ``(start, stop, create_graph) -> (energies, forces)`` of conformations
        ``order[start:stop]`` (feed ``"in_step"`` only): the AEVs are computed from coordinates
        that require a gradient, and the forces are ``-dE/dx`` by autograd through them. With
        ``create_graph`` the forces themselves can be differentiated (training on forces)."""
        if self.feed != "in_step":
            raise FeedError(f"Forces need the AEVs computed in the step: use feed='in_step', not {self.feed!r}.")
        forward = self.forward
        index = order if order is not None else torch.arange(self.n, device=self.species.device)

        def step(start: int, stop: int, create_graph: bool) -> tuple[Tensor, Tensor]:
            rows = index[start:stop]
            species = self.species.index_select(0, rows)
            coordinates = self.coordinates.index_select(0, rows).requires_grad_(True)
            with torch.enable_grad():
                energies = forward(species, self.computer(species, coordinates))
                (gradient,) = torch.autograd.grad(energies.sum(), coordinates, create_graph=create_graph)
            return energies, -gradient
        return step

    def target_forces(self, order: Tensor | None = None) -> Tensor:
        """The reference forces (Hartree/Å) in ``order`` (all conformations if None)."""
        if getattr(self, "forces", None) is None:
            raise FeedError("This data set has no forces: load a file with a 'forces' dataset in every group.")
        return self.forces if order is None else self.forces.index_select(0, order)

    def predict_all_with_forces(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Energies and forces of every conformation (eval mode; gradients only for the forces)."""
        was_training, forward = self.model.training, self.forward
        self.model.eval()
        self.forward = self.model  # no DDP here
        step = self.with_forces(None)
        try:
            parts = [step(s, min(s + batch_size, self.n), False) for s in range(0, self.n, batch_size)]
        finally:
            self.model.train(was_training)
            self.forward = forward
        return torch.cat([e.detach() for e, _ in parts]), torch.cat([f.detach() for _, f in parts])

    def predict_all(self, batch_size: int) -> Tensor:
        """Energies of every conformation (eval mode, no gradients)."""
        was_training, forward = self.model.training, self.forward
        self.model.eval()
        self.forward = self.model.forward_batch if self.feed == "buckets" else self.model  # no DDP here
        predict = self.ordered(None)
        try:
            with torch.no_grad():
                parts = [predict(s, min(s + batch_size, self.n)) for s in range(0, self.n, batch_size)]
        finally:
            self.model.train(was_training)
            self.forward = forward
        return torch.cat(parts)


def energy_metrics(errors_hartree: Tensor) -> tuple[float, float]:
    """RMSE and MAE in kcal/mol of energy errors given in Hartree."""
    errors = errors_hartree.double()
    rmse = float(errors.pow(2).mean().sqrt()) * HARTREE_TO_KCAL
    mae = float(errors.abs().mean()) * HARTREE_TO_KCAL
    return rmse, mae


def force_metrics(errors: Tensor, species: Tensor) -> tuple[float, float]:
    """RMSE and MAE per force component in kcal/mol/Å of force errors in Hartree/Å (padding left out)."""
    real = (species >= 0).unsqueeze(-1).expand_as(errors)
    components = errors.double()[real]
    return (float(components.pow(2).mean().sqrt()) * HARTREE_TO_KCAL,
            float(components.abs().mean()) * HARTREE_TO_KCAL)


def predict_energies(model: torch.nn.Module, data: ANIData, self_energies: Tensor,
                     aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS,
                     batch_size: int = 8192) -> Tensor:
    """Total energies (Hartree, float64, on the CPU) of ``data``: model + self energies."""
    device = next(model.parameters()).device
    feed = "buckets" if supports_buckets(model) else "padded"
    learned = Feeder(model, data, feed, device, aev_constants).predict_all(batch_size).double().cpu()
    return unshift_energies(data, learned, self_energies=self_energies.cpu())


def evaluate(model: torch.nn.Module, data: ANIData, self_energies: Tensor,
             aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS, batch_size: int = 2048) -> dict[str, float]:
    """``{"rmse": ..., "mae": ...}`` of ``model``'s energies on ``data`` in kcal/mol; with forces in
    ``data`` also ``force_rmse`` and ``force_mae`` per component in kcal/mol/Å."""
    rmse, mae = energy_metrics(predict_energies(model, data, self_energies, aev_constants) - data.energies.double())
    metrics = {"rmse": rmse, "mae": mae}
    if data.forces is not None:
        device = next(model.parameters()).device
        _, forces = Feeder(model, data, "in_step", device, aev_constants).predict_all_with_forces(batch_size)
        metrics["force_rmse"], metrics["force_mae"] = force_metrics(forces.cpu() - data.forces, data.species)
    return metrics
