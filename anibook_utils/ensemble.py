"""Ensembles of ANI models and the committee's disagreement as an uncertainty (chapter 11).

An *ensemble* is K models of the same architecture trained on the same data from different
random seeds (each member's seed fixes its initial weights and the order in which it sees the
conformations). Its prediction is the members' mean; where the members were pinned down by
data they agree, and where they extrapolate each extrapolates its own way. ANI-1x turned that
into *query by committee* (QBC): the uncertainty of a conformation with N atoms is

    ρ = σ / √N,   σ = the standard deviation of the K members' energies,

(TorchANI's ``energies_qbcs``: the unbiased standard deviation, over K - 1), and the
conformations with the largest ρ are the ones worth labelling next
(:mod:`anibook_utils.active_learning`).

- :func:`train_ensemble` trains the members with :func:`anibook_utils.training.train`
  (self energies fitted once, shared by all members, as TorchANI's ensembles share one
  ``SelfEnergy``); :class:`Ensemble` predicts (:class:`EnsemblePrediction`: mean, σ, ρ) and
  converts to ``torchani.nn.Ensemble`` (:meth:`Ensemble.to_torchani`);
- :func:`qbc_uncertainty`, :func:`spearman`, :func:`caught_fraction` and
  :func:`calibration_table` ask whether the uncertainty means anything: does it rank
  conformations by their actual error, and is its size the size of the error?
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .aev import COURSE_AEV_CONSTANTS, aev_computer
from .data import HARTREE_TO_KCAL, ANIData
from .feeding import predict_energies
from .history import History
from .models import ArchitectureSpec, MaskedANIModel, to_torchani
from .potential import ANIPotential
from .self_energy import fit_self_energies
from .training import ConfigError, TrainConfig, train

__all__ = [
    "Ensemble", "EnsemblePrediction", "calibration_table", "caught_fraction", "member_seeds",
    "qbc_uncertainty", "spearman", "train_ensemble",
]


def qbc_uncertainty(member_energies: Tensor, num_atoms: Tensor, unbiased: bool = True) -> Tensor:
    """ANI-1x's ρ = σ / √N per conformation from the members' energies ``(K, N)``.

    σ is the standard deviation over members (``unbiased``: divided by K - 1, TorchANI's
    default); a one-member "ensemble" has no disagreement, so ρ is 0, as in TorchANI.
    """
    energies = torch.as_tensor(member_energies, dtype=torch.float64)
    if energies.dim() != 2:
        raise ValueError(f"member_energies must be (members, conformations), got shape {tuple(energies.shape)}.")
    atoms = torch.as_tensor(num_atoms, dtype=torch.float64)
    if atoms.shape != energies.shape[1:]:
        raise ValueError(f"num_atoms has shape {tuple(atoms.shape)}, expected ({energies.shape[1]},).")
    if energies.shape[0] == 1:
        return torch.zeros_like(energies[0])
    return energies.std(dim=0, unbiased=unbiased) / atoms.sqrt()


@dataclass
class EnsemblePrediction:
    """The members' total energies ``members`` (K, N) in Hartree and each conformation's atoms.

    ``mean`` is the ensemble's prediction, ``std`` the members' standard deviation σ and
    ``rho`` ANI-1x's ρ = σ/√N (all Hartree); ``*_kcal`` give them in kcal/mol.
    """

    members: Tensor
    num_atoms: Tensor

    @property
    def mean(self) -> Tensor:
        return self.members.mean(dim=0)

    @property
    def std(self) -> Tensor:
        return qbc_uncertainty(self.members, torch.ones_like(self.num_atoms))

    @property
    def rho(self) -> Tensor:
        return qbc_uncertainty(self.members, self.num_atoms)

    @property
    def std_kcal(self) -> np.ndarray:
        return self.std.numpy() * HARTREE_TO_KCAL

    @property
    def rho_kcal(self) -> np.ndarray:
        return self.rho.numpy() * HARTREE_TO_KCAL

    def errors_kcal(self, data: ANIData) -> np.ndarray:
        """The ensemble mean's errors (prediction - reference) on ``data``, kcal/mol."""
        if len(data) != self.members.shape[1]:
            raise ValueError(f"{len(data)} conformations but {self.members.shape[1]} predictions: pass the data "
                             "these predictions were made for.")
        return (self.mean - data.energies.double()).numpy() * HARTREE_TO_KCAL

    def member_errors_kcal(self, data: ANIData) -> np.ndarray:
        """Each member's errors ``(K, N)`` on ``data``, kcal/mol."""
        return (self.members - data.energies.double()).numpy() * HARTREE_TO_KCAL


def member_seeds(members: int, seed: int = 0) -> list[int]:
    """The seeds of an ensemble's members: ``seed, seed + 1, ...`` (weights and data order)."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigError(f"An ensemble needs a positive whole number of members, got {members!r}.")
    return [int(seed) + k for k in range(members)]


@dataclass
class Ensemble:
    """K trained members sharing one set of self energies (Hartree) and AEV constants."""

    models: list[MaskedANIModel]
    self_energies: Tensor
    aev_constants: dict = field(default_factory=lambda: dict(COURSE_AEV_CONSTANTS))
    seeds: list[int] = field(default_factory=list)
    histories: list[History] = field(default_factory=list)
    train_time: float = 0.0

    def __len__(self) -> int:
        return len(self.models)

    def member_energies(self, data: ANIData) -> Tensor:
        """Total energies ``(K, N)`` of ``data`` by each member, Hartree (float64)."""
        return torch.stack([predict_energies(m, data, self.self_energies, self.aev_constants) for m in self.models])

    def predict(self, data: ANIData) -> EnsemblePrediction:
        """Members' energies, mean, σ and ρ on ``data``."""
        return EnsemblePrediction(self.member_energies(data), data.num_atoms.double())

    def evaluate(self, data: ANIData) -> dict[str, Any]:
        """RMSE and MAE (kcal/mol) of the ensemble mean, and each member's RMSE, on ``data``."""
        prediction = self.predict(data)
        errors = prediction.errors_kcal(data)
        members = prediction.member_errors_kcal(data)
        return {"rmse": float(np.sqrt(np.mean(errors**2))), "mae": float(np.mean(np.abs(errors))),
                "member_rmse": [float(r) for r in np.sqrt(np.mean(members**2, axis=1))]}

    def potentials(self) -> list[ANIPotential]:
        """Each member as an :class:`~anibook_utils.potential.ANIPotential` (energies and forces)."""
        return [ANIPotential(m, self.self_energies, self.aev_constants) for m in self.models]

    def to_torchani(self) -> torch.nn.Module:
        """The members as a ``torchani.nn.Ensemble`` of ``ANINetworks`` (weights copied).

        Called as ``ensemble(species, aevs)`` it returns the mean of the members' network
        energies; with ``ensemble_values=True`` each member's, ``(K, N)``. The self energies
        are not part of it (TorchANI adds them in a separate ``SelfEnergy`` module):
        :meth:`torchani_energies` adds them back.
        """
        from .torchani_shim import torchani

        return torchani.nn.Ensemble([to_torchani(m) for m in self.models])

    def torchani_energies(self, data: ANIData, module: torch.nn.Module | None = None) -> Tensor:
        """Each member's total energy ``(K, N)`` (Hartree) computed by the TorchANI ensemble."""
        module = module if module is not None else self.to_torchani()
        device = next(module.parameters()).device
        species = data.species.to(device)
        computer = aev_computer(self.aev_constants, device=device)
        with torch.no_grad():
            aevs = computer(species, data.coordinates.to(device, torch.float32))
            networks = module(species, aevs, ensemble_values=True).double().cpu()
        shifts = torch.as_tensor(self.self_energies, dtype=torch.float64).cpu()
        species = species.cpu()
        offsets = torch.where(species >= 0, shifts[species.clamp(min=0)], torch.zeros((), dtype=torch.float64))
        return networks + offsets.sum(dim=1)


def train_ensemble(
    spec: ArchitectureSpec | Mapping[str, Any] | None,
    train_data: ANIData,
    val_data: ANIData,
    config: TrainConfig | None = None,
    members: int = 4,
    seed: int | None = None,
    self_energies: Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, Any], Any] | None = None,
) -> Ensemble:
    """Train ``members`` models of ``spec`` on the same data, seeds ``seed, seed + 1, ...``.

    Each member is one :func:`~anibook_utils.training.train` run with ``config`` (default
    ``TrainConfig.fast()``) and its own seed (``seed`` defaults to ``config.seed``), keeping its
    best validation epoch. The self energies are fitted once on ``train_data`` (or given) and
    shared. ``callback(k, result)`` runs after member ``k``.
    """
    config = config if config is not None else TrainConfig.fast()
    seeds = member_seeds(members, config.seed if seed is None else seed)
    if self_energies is None:
        self_energies = fit_self_energies(train_data, warn=False).as_tensor()
    started = time.perf_counter()
    models, histories = [], []
    for k, member_seed in enumerate(seeds):
        result = train(spec, train_data, val_data, config.replace(seed=member_seed), progress=progress,
                       self_energies=self_energies)
        models.append(result.model)
        histories.append(result.history)
        if callback is not None:
            callback(k, result)
    return Ensemble(models, torch.as_tensor(self_energies, dtype=torch.float64), dict(COURSE_AEV_CONSTANTS),
                    seeds, histories, time.perf_counter() - started)


# --------------------------------------------------------------------------------------
# Does the uncertainty mean anything?
# --------------------------------------------------------------------------------------


def _pair(uncertainty: Any, errors: Any) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    e = np.abs(np.asarray(errors, dtype=np.float64).reshape(-1))
    if u.shape != e.shape or len(u) < 2:
        raise ValueError(f"Need one uncertainty per error, at least two of each; got {u.shape} and {e.shape}.")
    if not (np.isfinite(u).all() and np.isfinite(e).all()):
        raise ValueError("Uncertainties and errors must be finite numbers.")
    return u, e


def spearman(uncertainty: Any, errors: Any) -> float:
    """Spearman's rank correlation between an uncertainty and the absolute errors.

    1: the uncertainty orders the conformations exactly as their errors do; 0: no relation.
    """
    from scipy.stats import spearmanr

    u, e = _pair(uncertainty, errors)
    return float(spearmanr(u, e).statistic)


def caught_fraction(uncertainty: Any, errors: Any, fraction: float = 0.05) -> float:
    """The share of the worst ``fraction`` of errors that the top ``fraction`` of uncertainty flags.

    Chance level is ``fraction`` itself; 1 means every one of the worst errors is among the most
    uncertain conformations.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    u, e = _pair(uncertainty, errors)
    k = max(1, int(round(fraction * len(u))))
    worst = set(np.argsort(-e, kind="stable")[:k].tolist())
    flagged = set(np.argsort(-u, kind="stable")[:k].tolist())
    return len(worst & flagged) / k


def calibration_table(uncertainty: Any, errors: Any, bins: int = 8):
    """Conformations in ``bins`` groups of equal size by uncertainty: each group's mean
    uncertainty, the RMSE of its errors, and its size (a pandas DataFrame).

    For a calibrated σ (same unit as the errors) the RMSE in each bin equals the mean σ.
    """
    import pandas as pd

    u, e = _pair(uncertainty, errors)
    bins = max(1, min(int(bins), len(u)))
    order = np.argsort(u, kind="stable")
    rows = []
    for chunk in np.array_split(order, bins):
        rows.append({"uncertainty": float(u[chunk].mean()), "rmse": float(np.sqrt(np.mean(e[chunk] ** 2))),
                     "count": int(len(chunk))})
    return pd.DataFrame(rows)
