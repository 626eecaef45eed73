"""The training engine: one :func:`train` for every chapter (chapter 4).

>>> from anibook_utils.data import load_dataset, split_dataset
>>> from anibook_utils.models import ArchitectureSpec
>>> from anibook_utils.training import TrainConfig, train
>>> train_set, val_set = split_dataset(load_dataset(), 0.8, seed=0)
>>> result = train(ArchitectureSpec.course(), train_set, val_set, TrainConfig.fast())  # doctest: +SKIP
>>> result.best_val_rmse, result.history.plot()                                      # doctest: +SKIP

What :func:`train` does:

1. fits per-element self energies on the training set (:func:`fit_self_energies`) and
   trains on the energies minus the self energies (optionally also divided by their
   standard deviation, ``TrainConfig.standardize``);
2. computes the AEVs of both sets once (they do not depend on the weights) and groups each
   element's AEV rows once (:class:`~anibook_utils.models.ElementBuckets`), so a step only
   gathers rows, runs each element's network and adds atomic energies into molecular
   energies (``TrainConfig.fast_path``; ``precompute_aevs=False`` instead runs the AEV
   computer inside every step, as torchani's examples do);
3. runs the epochs with the chosen optimizer and schedule, reporting RMSE and MAE in
   kcal/mol on the training and validation sets to a :class:`History`, a ``tqdm`` bar and
   an optional ``callback(record)``;
4. keeps the best model (lowest validation RMSE), checkpoints ``latest.pt``/``best.pt``
   (:mod:`anibook_utils.checkpoints`), stops early, on a time budget, on a target RMSE,
   on ``stop_event`` or on Ctrl-C, and returns a :class:`TrainResult` with the best model.

Energies are in Hartree inside models; metrics are in kcal/mol.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from .aev import COURSE_AEV_CONSTANTS, aev_length, precompute_aevs
from .checkpoints import BEST, CHECKPOINT_FORMAT, LATEST, atomic_save, check_architecture, load_file
from .data import ELEMENTS, ANIData
from .models import ArchitectureSpec, ElementBuckets, MaskedANIModel, build_model, flush_tiny
from .potential import ANIPotential, aev_computer_from_constants
from .self_energy import fit_self_energies as _fit_self_energies

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The extensions")
    from torchani.units import hartree2kcalpermol

__all__ = [
    "LOSSES", "OPTIMIZERS", "SCHEDULES", "ConfigError", "History", "TrainConfig", "TrainResult",
    "configure_threads", "evaluate", "fit_self_energies", "predict_energies", "prepare_buckets",
    "resolve_device", "train",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "torchani")
"""``torchani`` = the TorchANI example's recipe: AdamW on the weights, SGD on the biases."""
SCHEDULES = ("none", "cosine", "onecycle", "plateau")
LOSSES = ("mse", "mse_sqrt_atoms")
"""``mse_sqrt_atoms``: each conformation's squared error divided by sqrt(atoms), as TorchANI does."""

HARTREE_TO_KCAL = float(hartree2kcalpermol(1.0))


class ConfigError(ValueError):
    """A training configuration that cannot run (the message says what to change)."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run; build from dicts with :meth:`from_dict`.

    Optimisation: ``optimizer`` (one of :data:`OPTIMIZERS`), ``lr``, ``weight_decay`` (L2:
    added to the gradient for Adam/SGD, decoupled for AdamW and the torchani recipe's
    weights), ``momentum`` (SGD), ``batch_size`` (conformations), ``epochs``.

    Schedule (:data:`SCHEDULES`): ``cosine`` anneals from ``lr`` to ``lr * final_lr_fraction``
    over all steps; ``onecycle`` warms up for ``warmup_fraction`` of the steps then anneals to
    ``lr * final_lr_fraction``; ``plateau`` multiplies the rate by ``plateau_factor`` after
    ``plateau_patience`` epochs without a better validation RMSE.

    Target: ``loss`` (:data:`LOSSES`) on energies minus self energies; with ``standardize``
    the model's output is scaled by the training targets' standard deviation, so the
    networks learn numbers of order one (the trained model still outputs Hartree).

    Stopping: ``early_stopping`` (epochs without the validation RMSE improving by more than
    ``min_improvement`` kcal/mol), ``max_time`` (seconds of
    training; checked after each epoch), ``target_val_rmse`` (kcal/mol).

    Engine: ``fast_path`` (element buckets, needs a :class:`MaskedANIModel`),
    ``precompute_aevs`` (False: AEVs inside each step), ``device`` (``"auto"``: CUDA if
    available), ``num_threads`` (CPU threads; None: leave torch's setting, capped at the
    cores available), ``exact_train_metrics`` (re-evaluate the training set after each epoch
    instead of averaging the errors seen during the epoch), ``checkpoint_every`` (epochs).
    """

    epochs: int = 20
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "none"
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    loss: str = "mse"
    standardize: bool = False
    early_stopping: int | None = None
    min_improvement: float = 0.0
    max_time: float | None = None
    target_val_rmse: float | None = None
    seed: int = 0
    device: str = "auto"
    fast_path: bool = True
    precompute_aevs: bool = True
    num_threads: int | None = None
    exact_train_metrics: bool = False
    eval_batch_size: int = 8192
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")

        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "plateau_patience"):
            positive_int(name)
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"Unknown {name} {getattr(self, name)!r}: choose one of {choices}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}.")
        if self.min_improvement < 0:
            raise ConfigError(f"min_improvement must be >= 0 (kcal/mol), got {self.min_improvement}.")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}.")
        if not 0 < self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must lie strictly between 0 and 1, got {self.warmup_fraction}.")
        if not 0 < self.final_lr_fraction <= 1:
            raise ConfigError(f"final_lr_fraction must lie in (0, 1], got {self.final_lr_fraction}.")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor must lie strictly between 0 and 1, got {self.plateau_factor}.")
        if self.early_stopping is not None:
            positive_int("early_stopping")
        if self.num_threads is not None:
            positive_int("num_threads")
        for name in ("max_time", "target_val_rmse"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive or None, got {value!r}.")
        if self.fast_path and not self.precompute_aevs:
            raise ConfigError("fast_path=True needs precompute_aevs=True (set fast_path=False as well).")

    @classmethod
    def course(cls, **overrides: Any) -> "TrainConfig":
        """The course's settings: Adam, batch 2560, lr 1e-3, weight decay 1e-4, 20 epochs, plain MSE."""
        values = dict(epochs=20, batch_size=2560, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                      schedule="none", loss="mse", standardize=False)
        return cls(**{**values, **overrides})

    @classmethod
    def fast(cls, **overrides: Any) -> "TrainConfig":
        """The book's default recipe (chosen in chapter 4 from a few quick trials on ani_gdb_s01).

        AdamW (weight decay 1e-5) with a one-cycle schedule peaking at 5e-3, batches of 128
        conformations, 40 epochs and standardised targets. On the 80/20 split it passed
        1 kcal/mol after about 7 epochs, 0.3 kcal/mol after about 15 and ended near
        0.1 kcal/mol (three seeds); an epoch takes a fraction of a second on two CPU cores.
        """
        values = dict(epochs=40, batch_size=128, optimizer="adamw", lr=5e-3, weight_decay=1e-5,
                      schedule="onecycle", warmup_fraction=0.05, final_lr_fraction=0.001,
                      loss="mse", standardize=True)
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON, widgets and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """A config from a dict; unknown keys are an error that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"Unknown TrainConfig field(s) {unknown}; valid fields: {sorted(names)}.")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


# --------------------------------------------------------------------------------------
# History and result
# --------------------------------------------------------------------------------------

METRICS = ("train_rmse", "train_mae", "val_rmse", "val_mae")


class History:
    """Per-epoch records: ``epoch``, ``train_rmse``, ``train_mae``, ``val_rmse``, ``val_mae``
    (kcal/mol), ``loss`` (mean training loss), ``lr``, ``time`` (training seconds so far) and
    ``epoch_time``."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = [dict(r) for r in records or []]

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def column(self, name: str) -> list[Any]:
        """One field over the epochs, e.g. ``history.column("val_rmse")``."""
        return [r[name] for r in self.records]

    def best(self, metric: str = "val_rmse") -> dict[str, Any] | None:
        """The record with the lowest ``metric`` (None if empty)."""
        return min(self.records, key=lambda r: r[metric]) if self.records else None

    def first_reaching(self, value: float, metric: str = "val_rmse") -> dict[str, Any] | None:
        """The first record whose ``metric`` is at most ``value`` (None if never)."""
        return next((r for r in self.records if r[metric] <= value), None)

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records]

    def to_frame(self):
        """The records as a pandas DataFrame indexed by epoch."""
        import pandas as pd

        frame = pd.DataFrame(self.records)
        return frame.set_index("epoch") if "epoch" in frame else frame

    def plot(self, ax=None, metric: str = "rmse", log: bool = True, x: str = "epoch", title: str | None = None,
             label: str | None = None, mark_best: bool = True):
        """Learning curves (training and validation ``metric``, kcal/mol); returns the Figure.

        ``x`` is ``"epoch"`` or ``"time"`` (training seconds); pass ``ax`` and ``label`` to
        draw several runs on one plot.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.6))
        else:
            fig = ax.figure
        prefix = f"{label}: " if label else ""
        if self.records:
            xs = self.column(x)
            line = ax.plot(xs, self.column(f"val_{metric}"), "-", label=f"{prefix}validation")[0]
            ax.plot(xs, self.column(f"train_{metric}"), "--", color=line.get_color() if label else None,
                    alpha=0.8, label=f"{prefix}training")
            best = self.best(f"val_{metric}")
            if mark_best:
                ax.plot([best[x]], [best[f"val_{metric}"]], "o", color=line.get_color(),
                        label=f"{prefix}best {best[f'val_{metric}']:.3g} kcal/mol")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel({"epoch": "epoch", "time": "training time (s)"}.get(x, x))
        ax.set_ylabel(f"energy {metric.upper()} (kcal/mol)")
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        if not self.records:
            return "History(empty)"
        last = self.records[-1]
        return (f"History({len(self)} epochs, last val RMSE {last['val_rmse']:.3f} kcal/mol, "
                f"best {self.best()['val_rmse']:.3f})")


@dataclass
class TrainResult:
    """What :func:`train` returns; ``model`` holds the best weights (lowest validation RMSE).

    ``stop_reason`` is one of ``completed``, ``early_stopping``, ``time_budget``,
    ``target_reached``, ``stopped`` (``stop_event``) or ``interrupted`` (Ctrl-C);
    ``interrupted`` is True for the last two. ``wall_time`` is the whole call in seconds,
    ``train_time`` the epochs alone (without preparing AEVs), ``setup_time`` the rest.
    """

    model: torch.nn.Module
    history: History
    best_epoch: int | None
    best_val_rmse: float
    interrupted: bool
    wall_time: float
    train_time: float
    setup_time: float
    stop_reason: str
    self_energies: Tensor
    config: TrainConfig
    device: str
    aev_constants: dict = field(default_factory=lambda: dict(COURSE_AEV_CONSTANTS))
    checkpoint_dir: Path | None = None

    def potential(self) -> ANIPotential:
        """The best model as an :class:`~anibook_utils.potential.ANIPotential` (energies + forces)."""
        if not isinstance(self.model, MaskedANIModel):
            raise TypeError("Only MaskedANIModel results can become potentials.")
        return ANIPotential(self.model, self.self_energies, self.aev_constants)

    def predict(self, data: ANIData) -> Tensor:
        """Total energies of ``data`` in Hartree (float64), self energies added back."""
        return predict_energies(self.model, data, self.self_energies, self.aev_constants)

    def evaluate(self, data: ANIData) -> dict[str, float]:
        """RMSE and MAE (kcal/mol) of the model on ``data``."""
        return evaluate(self.model, data, self.self_energies, self.aev_constants)

    def summary(self) -> str:
        return (f"best validation RMSE {self.best_val_rmse:.3f} kcal/mol at epoch {self.best_epoch} "
                f"({len(self.history)} epochs, {self.train_time:.1f} s of training, stop: {self.stop_reason})")


# --------------------------------------------------------------------------------------
# Helpers: threads, device, self energies, data preparation
# --------------------------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's CPU threads to ``num_threads`` (capped at the cores available) and return it.

    With None, torch's current setting is kept unless it exceeds the cores available.
    """
    cores = available_cores()
    wanted = min(num_threads, cores) if num_threads else min(torch.get_num_threads(), cores)
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
    return wanted


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available: use device='auto' or 'cpu'.")
    return resolved


def element_count_matrix(data: ANIData) -> Tensor:
    """``(N, 4)`` float64: atoms of each element in each conformation."""
    one_hot = torch.nn.functional.one_hot(data.species.clamp(min=0), len(ELEMENTS))
    return (one_hot * (data.species >= 0).unsqueeze(-1)).sum(dim=1).to(torch.float64)


def fit_self_energies(data: ANIData) -> Tensor:
    """Per-element self energies (Hartree, float64 tensor of shape (4,)) for training.

    The least-squares fit of chapter 2 (:func:`anibook_utils.self_energy.fit_self_energies`),
    as a tensor. With only CH4, NH3 and H2O (four elements, three molecules) the data cannot
    split the energy among the elements; the minimum-norm solution is taken, which is fine
    for training because every molecule's *sum* of self energies is still the fitted one.
    Elements absent from ``data`` get 0.
    """
    fit = _fit_self_energies(data, warn=False)
    values = torch.from_numpy(fit.values.astype("float64"))
    return torch.nan_to_num(values, nan=0.0)


def _fingerprint(data: ANIData) -> str:
    digest = hashlib.sha256(data.source_sha256.encode())
    digest.update(data.species.contiguous().numpy().tobytes())
    digest.update(data.coordinates.contiguous().numpy().tobytes())
    return digest.hexdigest()


_BUCKETS: "OrderedDict[tuple[str, str], ElementBuckets]" = OrderedDict()


def _aevs(data: ANIData, aev_constants: Mapping[str, Any]) -> Tensor:
    computer = None if dict(aev_constants) == COURSE_AEV_CONSTANTS else aev_computer_from_constants(aev_constants)
    return precompute_aevs(data, computer=computer)


def prepare_buckets(data: ANIData, aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS) -> ElementBuckets:
    """AEVs of ``data`` (cached on disk by :func:`~anibook_utils.aev.precompute_aevs`) grouped by
    element; the last few are also kept in memory, so grids of runs prepare a set only once."""
    key = (_fingerprint(data), repr(sorted(dict(aev_constants).items())))
    if key in _BUCKETS:
        _BUCKETS.move_to_end(key)
        return _BUCKETS[key]
    buckets = ElementBuckets.from_padded(data.species, _aevs(data, aev_constants))
    _BUCKETS[key] = buckets
    while len(_BUCKETS) > 4:
        _BUCKETS.popitem(last=False)
    return buckets


class _Feeder:
    """Predicts the energies (Hartree, relative to self energies) of conformations by index."""

    def __init__(self, model: torch.nn.Module, data: ANIData, config: TrainConfig, device: torch.device,
                 aev_constants: Mapping[str, Any]) -> None:
        self.model = model
        self.n = len(data)
        self.mode = "buckets" if config.fast_path else ("padded" if config.precompute_aevs else "on_the_fly")
        if self.mode == "buckets":
            if not hasattr(model, "forward_batch") or type(model).forward_batch is not MaskedANIModel.forward_batch:
                raise ConfigError(
                    f"fast_path=True needs a MaskedANIModel; {type(model).__name__} only has a padded "
                    "forward(species, aevs): pass TrainConfig(fast_path=False)."
                )
            self.buckets = prepare_buckets(data, aev_constants).to(device)
        elif self.mode == "padded":
            self.species = data.species.to(device)
            self.aevs = flush_tiny(_aevs(data, aev_constants)).to(device)
        else:
            self.species = data.species.to(device)
            self.coordinates = data.coordinates.to(device)
            self.computer = aev_computer_from_constants(aev_constants).to(device)

    def ordered(self, order: Tensor | None = None) -> Callable[[int, int], Tensor]:
        """A function ``(start, stop) -> energies`` of conformations ``order[start:stop]``.

        In the bucket mode the rows are gathered here, once (per epoch), and each batch is a
        set of views; otherwise each call indexes the padded tensors.
        """
        model = self.model
        if self.mode == "buckets":
            buckets = self.buckets if order is None else self.buckets.select(order)
            return lambda start, stop: model.forward_batch(buckets.slice(start, stop))
        index = order if order is not None else torch.arange(self.n, device=self.species.device)
        if self.mode == "padded":
            def padded(start: int, stop: int) -> Tensor:
                rows = index[start:stop]
                return model(self.species.index_select(0, rows), self.aevs.index_select(0, rows))
            return padded

        def on_the_fly(start: int, stop: int) -> Tensor:
            rows = index[start:stop]
            species = self.species.index_select(0, rows)
            with torch.no_grad():
                aevs = self.computer(species, self.coordinates.index_select(0, rows))
            return model(species, aevs)
        return on_the_fly

    def predict_all(self, batch_size: int) -> Tensor:
        """Energies of every conformation (eval mode, no gradients)."""
        was_training = self.model.training
        self.model.eval()
        predict = self.ordered(None)
        try:
            with torch.no_grad():
                parts = [predict(s, min(s + batch_size, self.n)) for s in range(0, self.n, batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(parts)


def _errors_to_metrics(errors_hartree: Tensor) -> tuple[float, float]:
    errors = errors_hartree.double()
    rmse = float(errors.pow(2).mean().sqrt()) * HARTREE_TO_KCAL
    mae = float(errors.abs().mean()) * HARTREE_TO_KCAL
    return rmse, mae


def _targets(data: ANIData, self_energies: Tensor) -> Tensor:
    """Energies minus self energies (Hartree, float64)."""
    return data.energies.to(torch.float64) - element_count_matrix(data) @ self_energies.to(torch.float64)


def predict_energies(model: torch.nn.Module, data: ANIData, self_energies: Tensor,
                     aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS,
                     batch_size: int = 8192) -> Tensor:
    """Total energies (Hartree, float64, on the CPU) of ``data``: model + self energies."""
    device = next(model.parameters()).device
    fast = isinstance(model, MaskedANIModel) and type(model).forward_batch is MaskedANIModel.forward_batch
    feeder = _Feeder(model, data, TrainConfig(fast_path=fast), device, aev_constants)
    learned = feeder.predict_all(batch_size).double().cpu()
    return learned + element_count_matrix(data) @ self_energies.to(torch.float64).cpu()


def evaluate(model: torch.nn.Module, data: ANIData, self_energies: Tensor,
             aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS) -> dict[str, float]:
    """``{"rmse": ..., "mae": ...}`` of ``model`` on ``data`` in kcal/mol."""
    errors = predict_energies(model, data, self_energies, aev_constants) - data.energies.double()
    rmse, mae = _errors_to_metrics(errors)
    return {"rmse": rmse, "mae": mae}


# --------------------------------------------------------------------------------------
# Optimizers and schedules
# --------------------------------------------------------------------------------------


def _fused(params: list[Tensor]) -> dict[str, bool]:
    """``fused=True`` where torch has fused Adam/AdamW kernels for the parameters' device."""
    device = params[0].device.type if params else "cpu"
    return {"fused": True} if device in ("cpu", "cuda") else {}


def _optimizers(model: torch.nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return [torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **_fused(params))]
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **_fused(params))]
    if config.optimizer == "sgd":
        return [torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)]
    # TorchANI's example: AdamW (decoupled decay) on weights, plain SGD on biases.
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    return [torch.optim.AdamW(weights, lr=config.lr, weight_decay=config.weight_decay, **_fused(weights)),
            torch.optim.SGD(biases, lr=config.lr)]


def _schedulers(optimizers: list[torch.optim.Optimizer], config: TrainConfig, total_steps: int) -> list:
    if config.schedule == "none":
        return []
    scheds = []
    for opt in optimizers:
        if config.schedule == "cosine":
            scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=total_steps, eta_min=config.lr * config.final_lr_fraction))
        elif config.schedule == "onecycle":
            scheds.append(torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.lr, total_steps=total_steps, pct_start=config.warmup_fraction,
                div_factor=10.0, final_div_factor=1.0 / (10.0 * config.final_lr_fraction),
                cycle_momentum=False))
        else:
            scheds.append(torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=config.plateau_factor, patience=config.plateau_patience,
                min_lr=config.lr * config.final_lr_fraction))
    return scheds


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


class _StopRequested(Exception):
    pass


def _should_stop(stop_event: Any) -> bool:
    if stop_event is None:
        return False
    if hasattr(stop_event, "is_set"):
        return bool(stop_event.is_set())
    return bool(stop_event())


def _clone_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


_RESUME_IGNORED = {"epochs", "max_time", "target_val_rmse", "early_stopping", "min_improvement", "num_threads",
                   "checkpoint_every", "device", "eval_batch_size"}


def train(
    model_or_spec: MaskedANIModel | torch.nn.Module | ArchitectureSpec | Mapping[str, Any] | None,
    train_data: ANIData,
    val_data: ANIData,
    config: TrainConfig | Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    stop_event: threading.Event | Callable[[], bool] | None = None,
    progress: bool = True,
    self_energies: Tensor | None = None,
    aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS,
) -> TrainResult:
    """Train an ANI model on energies and return the best model and its history.

    Args:
        model_or_spec: an :class:`ArchitectureSpec` (or its dict, or None for the course's),
            built with ``seed=config.seed``; or a model to train in place (a
            :class:`MaskedANIModel`, or any module with ``forward(species, aevs)`` together
            with ``fast_path=False``).
        train_data, val_data: :class:`~anibook_utils.data.ANIData` sets.
        config: a :class:`TrainConfig` or a dict of its fields (default ``TrainConfig()``).
        checkpoint_dir: folder for ``latest.pt`` and ``best.pt``, written atomically every
            ``config.checkpoint_every`` epochs (and after the last one).
        resume: continue from ``checkpoint_dir/latest.pt`` if it exists (same architecture
            required, else :class:`~anibook_utils.checkpoints.CheckpointMismatchError`); the
            continued run reproduces the uninterrupted one.
        callback: called after every epoch with the epoch's record (a dict, see :class:`History`).
        stop_event: a ``threading.Event`` (or a function returning True) checked after every
            batch; when set, training stops and the best model so far is returned.
        progress: show a ``tqdm`` progress bar.
        self_energies: per-element self energies (Hartree); fitted on ``train_data`` if None.
        aev_constants: AEV constants (default the course's).

    Ctrl-C (KeyboardInterrupt, also raised from ``callback``) ends training the same way
    as ``stop_event``: the best model and the history so far are returned.
    """
    started = time.perf_counter()
    if config is None:
        config = TrainConfig()
    elif isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}.")
    configure_threads(config.num_threads)
    device = resolve_device(config.device)
    aev_dim = aev_length(aev_constants)

    # The model
    if model_or_spec is None or isinstance(model_or_spec, (ArchitectureSpec, Mapping)):
        model = build_model(model_or_spec, aev_dim=aev_dim, seed=config.seed)
        fresh = True
    elif isinstance(model_or_spec, torch.nn.Module):
        model, fresh = model_or_spec, False
    else:
        raise TypeError(f"train needs an ArchitectureSpec, a dict or a model, got {type(model_or_spec).__name__}.")
    model.to(device)
    spec = getattr(model, "spec", None)
    spec_dict = spec.to_dict() if spec is not None else None

    # Checkpoint to resume from
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = None
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("resume=True needs the checkpoint_dir of the run to continue.")
        if (checkpoint_dir / LATEST).is_file():
            state = load_file(checkpoint_dir / LATEST)
            check_architecture(state, spec_dict, getattr(model, "aev_dim", aev_dim),
                               source=str(checkpoint_dir / LATEST))
            saved = TrainConfig.from_dict(state["config"])
            changed = [f for f in saved.to_dict() if f not in _RESUME_IGNORED
                       and saved.to_dict()[f] != config.to_dict()[f]]
            if changed:
                warnings.warn(f"Resuming with different settings for {changed}: the continued run will "
                              "not match an uninterrupted one.")

    # Targets: energies minus self energies, in the model's output unit
    if state is not None:
        self_energies = state["self_energies"].to(torch.float64)
    elif self_energies is None:
        self_energies = fit_self_energies(train_data)
    self_energies = torch.as_tensor(self_energies, dtype=torch.float64).cpu()
    train_targets = _targets(train_data, self_energies)
    val_targets = _targets(val_data, self_energies)
    if fresh and config.standardize and isinstance(model, MaskedANIModel):
        model.output_scale.fill_(float(train_targets.std()))
    unit = float(model.output_scale) if hasattr(model, "output_scale") else 1.0
    y_train = train_targets.to(device, torch.float32)
    y_val = val_targets.to(device, torch.float32)
    sqrt_atoms = train_data.num_atoms.to(device, torch.float32).sqrt()

    train_feed = _Feeder(model, train_data, config, device, aev_constants)
    val_feed = _Feeder(model, val_data, config, device, aev_constants)

    # Optimisation
    n_train = len(train_data)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    optimizers = _optimizers(model, config)
    schedulers = _schedulers(optimizers, config, total_steps=steps_per_epoch * config.epochs)
    per_batch_schedule = config.schedule in ("cosine", "onecycle")
    shuffle = torch.Generator().manual_seed(config.seed)

    history = History()
    start_epoch, best_epoch, best_rmse, best_state, bad_epochs, elapsed = 0, None, math.inf, None, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        for opt, s in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        history = History(state["history"])
        start_epoch, bad_epochs, elapsed = int(state["epoch"]), int(state["bad_epochs"]), float(state["elapsed"])
        if state.get("best"):
            best_epoch, best_rmse = int(state["best"]["epoch"]), float(state["best"]["val_rmse"])
            best_state = {k: v.to(device) for k, v in state["best"]["model"].items()}
        unit = float(model.output_scale) if hasattr(model, "output_scale") else 1.0

    def save(epoch: int, improved: bool) -> None:
        if checkpoint_dir is None:
            return
        best = None if best_state is None else {"epoch": best_epoch, "val_rmse": best_rmse,
                                                 "model": _cpu(best_state)}
        payload = {
            "format": CHECKPOINT_FORMAT, "version": 1, "spec": spec_dict,
            "aev_dim": getattr(model, "aev_dim", aev_dim), "config": config.to_dict(), "epoch": epoch,
            "model": _cpu(model.state_dict()), "optimizers": [_cpu(o.state_dict()) for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers], "history": history.to_list(),
            "best": best, "bad_epochs": bad_epochs, "elapsed": elapsed,
            "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()},
            "self_energies": self_energies, "aev_constants": dict(aev_constants),
        }
        atomic_save(payload, checkpoint_dir / LATEST)
        if improved and spec_dict is not None:
            atomic_save({**payload, "optimizers": [], "schedulers": []}, checkpoint_dir / BEST)

    setup_time = time.perf_counter() - started
    stop_reason = "completed"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=min(start_epoch, config.epochs), desc="training", unit="epoch")
    model.train()
    try:
        if start_epoch >= config.epochs:
            stop_reason = "completed"
        for epoch in range(start_epoch, config.epochs):
            if _should_stop(stop_event):
                raise _StopRequested
            tick = time.perf_counter()
            order = torch.randperm(n_train, generator=shuffle).to(device)
            predict = train_feed.ordered(order)
            y_epoch = y_train.index_select(0, order)
            w_epoch = sqrt_atoms.index_select(0, order)
            sum_sq = torch.zeros((), dtype=torch.float64, device=device)
            sum_abs = torch.zeros((), dtype=torch.float64, device=device)
            sum_loss = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, n_train, config.batch_size):
                stop = min(start + config.batch_size, n_train)
                error = (predict(start, stop) - y_epoch[start:stop]) / unit
                if config.loss == "mse":
                    loss = error.pow(2).mean()
                else:
                    loss = (error.pow(2) / w_epoch[start:stop]).mean()
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                if per_batch_schedule:
                    for sched in schedulers:
                        sched.step()
                with torch.no_grad():
                    e = error.detach().double()
                    sum_sq += e.pow(2).sum()
                    sum_abs += e.abs().sum()
                    sum_loss += loss.detach().double() * (stop - start)
                if _should_stop(stop_event):
                    raise _StopRequested
            if config.exact_train_metrics:
                train_rmse, train_mae = _errors_to_metrics(train_feed.predict_all(config.eval_batch_size).double()
                                                           - y_train.double())
            else:
                train_rmse = math.sqrt(float(sum_sq) / n_train) * unit * HARTREE_TO_KCAL
                train_mae = float(sum_abs) / n_train * unit * HARTREE_TO_KCAL
            val_rmse, val_mae = _errors_to_metrics(val_feed.predict_all(config.eval_batch_size).double()
                                                   - y_val.double())
            if not math.isfinite(val_rmse):
                raise FloatingPointError(
                    f"The validation error became {val_rmse} at epoch {epoch + 1}: training diverged. "
                    "Lower the learning rate (lr) or enable standardize=True.")
            if config.schedule == "plateau":
                for sched in schedulers:
                    sched.step(val_rmse)
            epoch_time = time.perf_counter() - tick
            elapsed += epoch_time
            record = {"epoch": epoch + 1, "train_rmse": train_rmse, "train_mae": train_mae,
                      "val_rmse": val_rmse, "val_mae": val_mae, "loss": float(sum_loss) / n_train,
                      "lr": optimizers[0].param_groups[0]["lr"], "time": elapsed, "epoch_time": epoch_time}
            history.append(record)
            improved = val_rmse < best_rmse
            if val_rmse < best_rmse - config.min_improvement:
                bad_epochs = 0
            else:
                bad_epochs += 1
            if improved:
                best_epoch, best_rmse, best_state = epoch + 1, val_rmse, _clone_state(model)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                save(epoch + 1, improved)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_rmse=f"{val_rmse:.3f}", best=f"{best_rmse:.3f}")
            if callback is not None:
                callback(dict(record))
            if config.target_val_rmse is not None and val_rmse <= config.target_val_rmse:
                stop_reason = "target_reached"
                break
            if config.early_stopping is not None and bad_epochs >= config.early_stopping:
                stop_reason = "early_stopping"
                break
            if config.max_time is not None and elapsed >= config.max_time:
                stop_reason = "time_budget"
                break
    except _StopRequested:
        stop_reason = "stopped"
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    if stop_reason in ("target_reached", "early_stopping", "time_budget") and history and checkpoint_dir:
        if int(history[-1]["epoch"]) % config.checkpoint_every:
            save(int(history[-1]["epoch"]), False)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model, history=history, best_epoch=best_epoch,
        best_val_rmse=best_rmse if best_epoch is not None else math.nan,
        interrupted=stop_reason in ("stopped", "interrupted"), wall_time=time.perf_counter() - started,
        train_time=elapsed, setup_time=setup_time, stop_reason=stop_reason, self_energies=self_energies,
        config=config, device=str(device), aev_constants=dict(aev_constants), checkpoint_dir=checkpoint_dir,
    )
