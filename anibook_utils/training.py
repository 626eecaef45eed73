"""The training engine: one :func:`train` for every chapter (chapter 4).

>>> from anibook_utils.data import load_dataset, split_dataset
>>> from anibook_utils.models import ArchitectureSpec
>>> from anibook_utils.training import TrainConfig, train
>>> train_set, val_set, test_set = split_dataset(load_dataset(), (0.8, 0.1, 0.1), seed=0)
>>> result = train(ArchitectureSpec.course(), train_set, val_set, TrainConfig.fast())  # doctest: +SKIP
>>> result.evaluate(test_set), result.history.plot()                                 # doctest: +SKIP

What :func:`train` does:

1. fits per-element self energies on the training set and trains on the energies minus the
   self energies (:mod:`anibook_utils.self_energy`), optionally also divided by their
   standard deviation (``TrainConfig.standardize``);
2. feeds the conformations to the model in one of three ways (``TrainConfig.feed``, see
   :mod:`anibook_utils.feeding`): AEVs computed once and grouped by element (the default),
   AEVs computed once and padded, or AEVs computed inside every step;
3. runs the epochs with the chosen optimizer and schedule, reporting RMSE and MAE in
   kcal/mol on the training and validation sets to a :class:`~anibook_utils.history.History`,
   a ``tqdm`` bar and an optional ``callback(record)``;
4. keeps the best model (lowest validation RMSE; the validation set *selects*, so report a
   separate test set's error), checkpoints ``latest.pt``/``best.pt``
   (:mod:`anibook_utils.checkpoints`), stops early, on a time budget, on a target RMSE, on
   ``stop_event`` or on Ctrl-C, and returns a :class:`TrainResult` holding the best model
   (or the last one, ``TrainConfig(restore_best=False)``).

Energies are in Hartree inside models; metrics are in kcal/mol.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .aev import COURSE_AEV_CONSTANTS, aev_length
from .checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LATEST, CheckpointMismatchError,
                          check_architecture, check_keys, load_file, save_checkpoint)
from .data import HARTREE_TO_KCAL, ANIData, NonFiniteValueError
from .distributed import Distributed
from .feeding import FEEDS, Feeder, energy_metrics, evaluate, force_metrics, predict_energies, supports_buckets
from .history import History
from .models import ArchitectureSpec, MaskedANIModel, build_model
from .potential import ANIPotential
from .self_energy import fit_self_energies, shift_energies
from .streaming import H5Stream, StreamFeeder, stream_self_energies, stream_target_scale

__all__ = [
    "FEEDS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "ConfigError", "TrainConfig", "TrainResult",
    "configure_threads", "resolve_device", "train",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "torchani")
"""``torchani`` = the TorchANI example's recipe: AdamW on the weights, SGD on the biases."""
SCHEDULES = ("none", "cosine", "onecycle", "plateau")
LOSSES = ("mse", "mse_sqrt_atoms")
"""``mse_sqrt_atoms``: each conformation's squared error divided by sqrt(atoms), as TorchANI does."""
PER_STEP_SCHEDULES = ("cosine", "onecycle")


class ConfigError(ValueError):
    """A training configuration that cannot run (the message says what to change)."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _check_integer(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {wanted}, got {value!r}.")


def _check_number(name: str, value: Any, low: float, high: float = math.inf, *,
                  low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must be a finite real number in the interval (open or closed at each end)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if ok:
        return
    if high == math.inf:
        wanted = "a positive number" if low == 0 and low_open else f"a number >= {low:g}"
    else:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"{name} must be {wanted}, got {value!r}.")


def _check_device(value: Any) -> None:
    if not isinstance(value, (str, torch.device)):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}.")
    if str(value) == "auto":
        return
    try:
        kind = torch.device(value).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown device {value!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(value)!r} is not supported: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


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
    ``force_weight`` (Å², default 0: energies only) adds that multiple of the forces' mean
    squared component error to the loss (chapter 9); forces are ``-dE/dx`` by autograd
    through the AEVs, so it needs ``feed="in_step"`` and data with forces.

    Stopping: ``early_stopping`` (epochs without the validation RMSE improving by more than
    ``min_improvement`` kcal/mol), ``max_time`` (seconds of training; checked after each
    epoch), ``target_val_rmse`` (kcal/mol). ``restore_best``: the result holds the weights of
    the best validation epoch (True) or of the last epoch (False, to continue training them).

    Engine: ``feed`` (:data:`~anibook_utils.feeding.FEEDS`), ``device`` (``"auto"``: CUDA if
    available), ``num_threads`` (CPU threads; None: leave torch's setting, capped at the
    cores available), ``exact_train_metrics`` (re-evaluate the training set after each epoch
    instead of averaging the errors seen during the epoch), ``checkpoint_every`` (epochs).

    Fields are checked when the config is made and again when :func:`train` starts (a field
    assigned later is checked too); :class:`ConfigError` says what to change.
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
    restore_best: bool = True
    force_weight: float = 0.0
    seed: int = 0
    device: str = "auto"
    feed: str = "buckets"
    num_threads: int | None = None
    exact_train_metrics: bool = False
    eval_batch_size: int = 8192
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for any field that cannot run; return the config."""
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "plateau_patience"):
            _check_integer(name, getattr(self, name))
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES),
                              ("feed", FEEDS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"Unknown {name} {getattr(self, name)!r}: choose one of {choices}.")
        _check_number("lr", self.lr, 0, low_open=True)
        _check_number("weight_decay", self.weight_decay, 0)
        _check_number("min_improvement (kcal/mol)", self.min_improvement, 0)
        _check_number("momentum", self.momentum, 0, 1, high_open=True)
        _check_number("warmup_fraction", self.warmup_fraction, 0, 1, low_open=True, high_open=True)
        _check_number("final_lr_fraction", self.final_lr_fraction, 0, 1, low_open=True)
        _check_number("plateau_factor", self.plateau_factor, 0, 1, low_open=True, high_open=True)
        for name in ("early_stopping", "num_threads"):
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name))
        for name in ("max_time", "target_val_rmse"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0, low_open=True)
        for name in ("standardize", "restore_best", "exact_train_metrics"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        _check_number("force_weight (Å²)", self.force_weight, 0)
        if self.force_weight > 0 and self.feed != "in_step":
            raise ConfigError(f"force_weight={self.force_weight} trains on forces, which need the AEVs computed in "
                              f"the step: set feed='in_step' (not {self.feed!r}).")
        _check_integer("seed", self.seed, low=0)
        _check_device(self.device)
        return self

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
        conformations, 40 epochs and standardised targets; an epoch takes a fraction of a
        second on two CPU cores.
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

    def changes(self) -> dict[str, Any]:
        """The fields that differ from :class:`TrainConfig`'s defaults (a short description)."""
        defaults = TrainConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != defaults[k]}

    def __repr__(self) -> str:
        return f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in self.changes().items())})"


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns; ``model`` holds the best weights (lowest validation RMSE),
    or the last epoch's with ``TrainConfig(restore_best=False)``.

    ``stop_reason`` is one of ``completed``, ``early_stopping``, ``time_budget``,
    ``target_reached``, ``stopped`` (``stop_event``) or ``interrupted`` (Ctrl-C);
    ``interrupted`` is True for the last two. ``wall_time`` is the whole call in seconds,
    ``train_time`` the epochs alone (without preparing AEVs), ``setup_time`` the rest.
    The best validation RMSE is what selected the model: report :meth:`evaluate` on a test
    set that took no part in any choice.
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
        """The model as an :class:`~anibook_utils.potential.ANIPotential` (energies + forces)."""
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
# Threads and devices
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
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)``.

    CUDA is initialised here (a tiny allocation), so a run's clock does not count its start-up.
    """
    _check_device(device)
    resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" \
        else torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA GPU is available: use device='auto' or 'cpu'.")
        torch.zeros(1, device=resolved)
    elif resolved.type != "cpu":
        raise ConfigError(f"device {str(device)!r} is not supported: use 'auto', 'cpu' or 'cuda'.")
    return resolved


# --------------------------------------------------------------------------------------
# Optimisers and schedules
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


def _warmup(fraction: float, total_steps: int) -> float:
    """OneCycleLR's ``pct_start``: ``fraction``, except for a warm-up of exactly one step (e.g. 0.05 of 20
    steps), on which torch divides by zero: that one is written as the steps start, peak (or, in a run of
    two steps, as start, end)."""
    if not math.isclose(fraction * total_steps, 1.0):
        return fraction
    return 2.0 / total_steps if total_steps > 2 else 0.75


def _schedulers(optimizers: list[torch.optim.Optimizer], config: TrainConfig, total_steps: int) -> list:
    if config.schedule == "none":
        return []
    scheds = []
    for opt in optimizers:
        if config.schedule == "cosine":
            scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=total_steps, eta_min=config.lr * config.final_lr_fraction))
        elif config.schedule == "onecycle":
            warmup = _warmup(config.warmup_fraction, total_steps)
            scheds.append(torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.lr, total_steps=total_steps, pct_start=warmup,
                div_factor=10.0, final_div_factor=1.0 / (10.0 * config.final_lr_fraction),
                cycle_momentum=False))
        else:
            scheds.append(torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=config.plateau_factor, patience=config.plateau_patience,
                min_lr=config.lr * config.final_lr_fraction))
    return scheds


class _Optimisation:
    """The optimizers, their schedules and the shuffling generator of a run."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizers = _optimizers(model, config)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * config.epochs
        self.schedulers = _schedulers(self.optimizers, config, total_steps=self.total_steps)
        self.per_step_schedule = config.schedule in PER_STEP_SCHEDULES
        self.plateau = config.schedule == "plateau"
        self.shuffle = torch.Generator().manual_seed(config.seed)

    def step(self, loss: Tensor) -> None:
        """One optimisation step on ``loss`` (and a step of a per-step schedule)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        if self.per_step_schedule:
            for sched in self.schedulers:
                sched.step()

    def end_epoch(self, val_rmse: float) -> None:
        if self.plateau:
            for sched in self.schedulers:
                sched.step(val_rmse)

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [_cpu(o.state_dict()) for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers], "total_steps": self.total_steps,
                "shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        for sched, saved in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(saved)
        self.shuffle.set_state(state["shuffle"])


@dataclass
class _RunState:
    """How far a run got: what a checkpoint holds besides the weights and the optimisers."""

    history: History = field(default_factory=History)
    epoch: int = 0
    best_epoch: int | None = None
    best_rmse: float = math.inf
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    elapsed: float = 0.0

    def record(self, record: dict[str, Any], model: torch.nn.Module, min_improvement: float) -> bool:
        """Add an epoch's record; keep the model if it is the best so far (returned)."""
        self.history.append(record)
        self.epoch = int(record["epoch"])
        val_rmse = record["val_rmse"]
        improved = val_rmse < self.best_rmse
        self.bad_epochs = 0 if val_rmse < self.best_rmse - min_improvement else self.bad_epochs + 1
        if improved:
            self.best_epoch, self.best_rmse = self.epoch, val_rmse
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return improved


class _StopRequested(Exception):
    pass


def _should_stop(stop_event: Any) -> bool:
    if stop_event is None:
        return False
    if hasattr(stop_event, "is_set"):
        return bool(stop_event.is_set())
    return bool(stop_event())


def _stop_requested(stop_event: Any, distributed: Distributed | None) -> bool:
    """A stop event (or, with several processes, Ctrl-C or a stop event on any rank)."""
    if distributed is None:
        return _should_stop(stop_event)
    return distributed.any(_should_stop(stop_event) or distributed.interrupted)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# Pieces of a run: the model, the targets, an epoch, a checkpoint, a restore
# --------------------------------------------------------------------------------------


def _as_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}.")
    return config.validate()  # fields may have been assigned since the config was made


def _check_sets(train_data: Any, val_data: Any) -> None:
    """Refuse sets that are not :class:`ANIData` or hold NaN/infinite energies or coordinates (which
    would otherwise surface epochs later as a "diverged" run or train on garbage)."""
    for label, data in (("train_data", train_data), ("val_data", val_data)):
        if isinstance(data, H5Stream):
            continue  # read from disk batch by batch: its reader checks each chunk
        if not isinstance(data, ANIData):
            raise TypeError(f"{label} must be an ANIData (from load_dataset or split_dataset) or an H5Stream, "
                            f"got {type(data).__name__}.")
        for name in ("energies", "coordinates"):
            finite = torch.isfinite(getattr(data, name).reshape(len(data), -1)).all(dim=1)
            if not bool(finite.all()):
                raise NonFiniteValueError(
                    f"{label} has NaN or infinite {name} in {int((~finite).sum())} conformation(s) (the first at "
                    f"index {int((~finite).nonzero()[0])}). Drop them before training, e.g. "
                    f"data = data.subset(torch.isfinite(data.{name}).reshape(len(data), -1).all(dim=1)).")


def _checkpoint_folder(checkpoint_dir: str | os.PathLike | None) -> Path | None:
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise ConfigError(f"checkpoint_dir must be a folder name (a str or Path), got {checkpoint_dir!r}.")
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"checkpoint_dir {folder} is a file, not a folder: pass a folder (it is created "
                          "if missing), e.g. checkpoint_dir='checkpoints/run1'.")
    return folder


def _model_for(model_or_spec: Any, config: TrainConfig, aev_dim: int) -> tuple[torch.nn.Module, bool]:
    """The model to train and whether it is new (built here from a spec)."""
    if model_or_spec is None or isinstance(model_or_spec, (ArchitectureSpec, Mapping)):
        return build_model(model_or_spec, aev_dim=aev_dim, seed=config.seed), True
    if isinstance(model_or_spec, torch.nn.Module):
        return model_or_spec, False
    raise TypeError(f"train needs an ArchitectureSpec, a dict or a model, got {type(model_or_spec).__name__}.")


@dataclass
class _Targets:
    """Training and validation targets in the model's output unit, on the training device."""

    train: Tensor
    val: Tensor
    sqrt_atoms: Tensor
    unit: float
    atoms: Tensor


def _targets(model: torch.nn.Module, train_data: ANIData | H5Stream, val_data: ANIData | H5Stream,
             self_energies: Tensor, standardize: bool, device: torch.device) -> _Targets:
    """Energies minus self energies; with ``standardize`` (a new model) its output scale is set
    to the training targets' standard deviation, the unit the errors are measured in. Data
    streamed from disk keep their targets there (computed per batch); only the scale is set."""
    streamed = isinstance(train_data, H5Stream)
    train_targets = None if streamed else shift_energies(train_data, self_energies=self_energies)
    if standardize and hasattr(model, "output_scale"):
        if streamed:
            scale = stream_target_scale(train_data, self_energies)
        else:
            scale = float(train_targets.std()) if len(train_targets) > 1 else math.nan
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(
                f"standardize=True divides by the spread of the training energies, but the {len(train_data)} "
                "training conformation(s) have none: use a larger training set, or standardize=False.")
        model.output_scale.fill_(scale)
    unit = float(model.output_scale) if hasattr(model, "output_scale") else 1.0
    val = None if isinstance(val_data, H5Stream) else shift_energies(val_data, self_energies=self_energies)
    if streamed:
        empty = torch.zeros(0, device=device)
        return _Targets(empty, empty if val is None else val.to(device, torch.float32), empty, unit, empty)
    atoms = train_data.num_atoms.to(device, torch.float32)
    return _Targets(train_targets.to(device, torch.float32),
                    torch.zeros(0, device=device) if val is None else val.to(device, torch.float32),
                    atoms.sqrt(), unit, atoms)


def _batch_loss(energies: Tensor, targets: Tensor, sqrt_atoms: Tensor, config: TrainConfig, unit: float,
                forces: Tensor | None = None, target_forces: Tensor | None = None,
                atoms: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loss of one batch (energy term, plus the force term when training on forces), the
    energy errors and the force errors, all in units of ``unit`` (the targets' scale)."""
    error = (energies - targets) / unit
    loss = error.pow(2).mean() if config.loss == "mse" else (error.pow(2) / sqrt_atoms).mean()
    force_error = None
    if forces is not None:
        force_error = (forces - target_forces) / unit  # zero at padding
        loss = loss + config.force_weight * (force_error.pow(2).sum(dim=(1, 2)) / (3 * atoms)).mean()
    return loss, error, force_error


def _epoch_plan(order: Tensor, batch_size: int, distributed: Distributed | None) -> tuple[Tensor, list]:
    """This process's rows of the shuffled epoch, and per batch ``(start, stop, rows in the whole
    batch)`` into them; with several processes each takes its shard of every global batch."""
    n = len(order)
    if distributed is None:
        return order, [(s, min(s + batch_size, n), min(s + batch_size, n) - s) for s in range(0, n, batch_size)]
    mine, plan, position = [], [], 0
    for start in range(0, n, batch_size):
        rows = distributed.shard(order[start:start + batch_size])
        if len(rows) == 0:  # a last batch smaller than the world: take a row, weigh it 0
            rows = order[start:start + 1]
            plan.append((position, position + 1, -1))
        else:
            plan.append((position, position + len(rows), min(start + batch_size, n) - start))
        mine.append(rows)
        position += len(rows)
    return torch.cat(mine), plan


def _train_epoch(feed: Feeder, targets: _Targets, opt: _Optimisation, config: TrainConfig,
                 stop_event: Any, distributed: Distributed | None = None) -> dict[str, float]:
    """One pass over the shuffled training set; the training RMSE, MAE and mean loss (and the
    force RMSE when training on forces). With several processes, each computes its shard of
    every batch and the metrics are summed over them."""
    forces = config.force_weight > 0
    device = targets.train.device
    order, plan = _epoch_plan(torch.randperm(feed.n, generator=opt.shuffle).to(device), config.batch_size,
                              distributed)
    predict = feed.with_forces(order) if forces else feed.ordered(order)
    y_epoch = targets.train.index_select(0, order)
    w_epoch = targets.sqrt_atoms.index_select(0, order)
    if forces:
        f_epoch, a_epoch = feed.target_forces(order), targets.atoms.index_select(0, order)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # squared, absolute, loss, force squared, rows
    world = distributed.world_size if distributed is not None else 1
    for start, stop, rows in plan:
        if forces:
            energies, predicted_forces = predict(start, stop, True)
        else:
            energies = predict(start, stop)
        loss, error, force_error = _batch_loss(
            energies, y_epoch[start:stop], w_epoch[start:stop], config, targets.unit,
            *((predicted_forces, f_epoch[start:stop], a_epoch[start:stop]) if forces else ()))
        weight = 0.0 if rows < 0 else world * (stop - start) / rows  # DDP averages: N x share of the batch
        opt.step(loss * weight if world > 1 else loss)
        if rows >= 0:
            with torch.no_grad():
                e = error.detach().double()
                sums += torch.stack([e.pow(2).sum(), e.abs().sum(), loss.detach().double() * (stop - start),
                                     force_error.detach().double().pow(2).sum() if forces else e.new_zeros(()),
                                     e.new_tensor(stop - start)])
        if _stop_requested(stop_event, distributed):
            raise _StopRequested
    return _train_metrics(feed, targets, config, sums if distributed is None else distributed.sum(sums))


def _train_epoch_stream(feed: StreamFeeder, targets: _Targets, opt: _Optimisation, config: TrainConfig,
                        stop_event: Any, distributed: Distributed | None, epoch: int) -> dict[str, float]:
    """One pass over a stream read from disk: every rank reads its own share of every batch of
    the epoch's order, so memory holds one batch at a time; losses are weighted as in memory
    (DDP's average is the whole batch's mean gradient) and metrics summed over the ranks."""
    forces, device = config.force_weight > 0, feed.device
    rank, world = (distributed.rank, distributed.world_size) if distributed is not None else (0, 1)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    atoms_total = torch.zeros((), dtype=torch.float64, device=device)
    for species, coordinates, y, f_target, total in feed.batches(config.batch_size, epoch, config.seed, rank, world):
        atoms = (species >= 0).sum(dim=1).float()
        energies, predicted_forces = feed.predict(species, coordinates, forces, create_graph=True)
        loss, error, force_error = _batch_loss(energies, y, atoms.sqrt(), config, targets.unit,
                                               *((predicted_forces, f_target, atoms) if forces else ()))
        weight = world * len(y) / total if total > 0 else 0.0  # a placeholder row (total 0) weighs nothing
        opt.step(loss * weight if world > 1 else loss)
        if total > 0:
            with torch.no_grad():
                e = error.detach().double()
                sums += torch.stack([e.pow(2).sum(), e.abs().sum(), loss.detach().double() * len(e),
                                     force_error.detach().double().pow(2).sum() if forces else e.new_zeros(()),
                                     e.new_tensor(len(e))])
                atoms_total += atoms.double().sum()
        if _stop_requested(stop_event, distributed):
            raise _StopRequested
    if distributed is not None:
        sums, atoms_total = distributed.sum(sums), distributed.sum(atoms_total)
    targets.atoms = atoms_total.reshape(1).float()
    return _train_metrics(feed, targets, config, sums)


def _train_metrics(feed: Feeder, targets: _Targets, config: TrainConfig, sums: Tensor) -> dict[str, float]:
    squared, absolute, loss, force_squared, n = (float(v) for v in sums)
    if config.exact_train_metrics and isinstance(feed, Feeder):
        rmse, mae = energy_metrics(feed.predict_all(config.eval_batch_size).double() - targets.train.double())
    else:
        rmse = math.sqrt(squared / n) * targets.unit * HARTREE_TO_KCAL
        mae = absolute / n * targets.unit * HARTREE_TO_KCAL
    metrics = {"train_rmse": rmse, "train_mae": mae, "loss": loss / n}
    if config.force_weight > 0:
        components = 3 * float(targets.atoms.sum())
        metrics["train_force_rmse"] = math.sqrt(force_squared / components) * targets.unit * HARTREE_TO_KCAL
    return metrics


def _validation_metrics(feed: Feeder | StreamFeeder, targets: _Targets, config: TrainConfig, epoch: int,
                        distributed: Distributed | None = None) -> dict[str, float]:
    forces = config.force_weight > 0
    if isinstance(feed, StreamFeeder):
        return _stream_metrics(feed, config, forces, epoch, distributed)
    if forces:
        energies, predicted_forces = feed.predict_all_with_forces(config.eval_batch_size)
    else:
        energies = feed.predict_all(config.eval_batch_size)
    rmse, mae = energy_metrics(energies.double() - targets.val.double())
    if not math.isfinite(rmse):
        raise FloatingPointError(
            f"The validation error became {rmse} at epoch {epoch}: training diverged. "
            "Lower the learning rate (lr) or enable standardize=True.")
    metrics = {"val_rmse": rmse, "val_mae": mae}
    if forces:
        metrics["val_force_rmse"], metrics["val_force_mae"] = force_metrics(
            predicted_forces - feed.target_forces(), feed.species)
    return metrics


def _stream_metrics(feed: StreamFeeder, config: TrainConfig, forces: bool, epoch: int,
                    distributed: Distributed | None) -> dict[str, float]:
    rank, world = (distributed.rank, distributed.world_size) if distributed is not None else (0, 1)
    sums = feed.error_sums(config.eval_batch_size, forces, rank, world)
    squared, absolute, f_squared, f_absolute, n, components = (
        float(v) for v in (distributed.sum(sums) if distributed is not None else sums))
    rmse = math.sqrt(squared / n) * HARTREE_TO_KCAL
    if not math.isfinite(rmse):
        raise FloatingPointError(f"The validation error became {rmse} at epoch {epoch}: training diverged. "
                                 "Lower the learning rate (lr) or enable standardize=True.")
    metrics = {"val_rmse": rmse, "val_mae": absolute / n * HARTREE_TO_KCAL}
    if forces:
        metrics["val_force_rmse"] = math.sqrt(f_squared / components) * HARTREE_TO_KCAL
        metrics["val_force_mae"] = f_absolute / components * HARTREE_TO_KCAL
    return metrics


def _stop_reason(config: TrainConfig, run: _RunState) -> str | None:
    """Why training should stop after this epoch (None: go on)."""
    val_rmse = run.history[-1]["val_rmse"]
    if config.target_val_rmse is not None and val_rmse <= config.target_val_rmse:
        return "target_reached"
    if config.early_stopping is not None and run.bad_epochs >= config.early_stopping:
        return "early_stopping"
    if config.max_time is not None and run.elapsed >= config.max_time:
        return "time_budget"
    return None


@dataclass
class _Checkpointer:
    """Writes a run's checkpoints: what stays the same for the whole run, and :meth:`save`."""

    folder: Path | None
    model: torch.nn.Module
    config: TrainConfig
    aev_dim: int
    self_energies: Tensor
    aev_constants: dict
    data: dict[str, str]

    @property
    def spec(self) -> dict | None:
        spec = getattr(self.model, "spec", None)
        return spec.to_dict() if spec is not None else None

    def payload(self, opt: _Optimisation, run: _RunState) -> dict[str, Any]:
        best = None if run.best_state is None else {
            "epoch": run.best_epoch, "val_rmse": run.best_rmse, "model": _cpu(run.best_state)}
        rng = {"shuffle": opt.shuffle.get_state(), "torch": torch.get_rng_state()}
        if _on_cuda(self.model):
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = opt.state_dict()
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": self.spec,
            "aev_dim": self.aev_dim, "config": self.config.to_dict(), "epoch": run.epoch,
            "model": _cpu(self.model.state_dict()), "optimizers": state["optimizers"],
            "schedulers": state["schedulers"], "total_steps": state["total_steps"],
            "history": run.history.to_list(), "best": best, "bad_epochs": run.bad_epochs,
            "elapsed": run.elapsed, "rng": rng, "self_energies": self.self_energies,
            "aev_constants": self.aev_constants, "data": self.data,
        }

    def save(self, opt: _Optimisation, run: _RunState, improved: bool) -> None:
        if self.folder is not None:
            save_checkpoint(self.folder, self.payload(opt, run), improved)


def _on_cuda(model: torch.nn.Module) -> bool:
    return any(p.device.type == "cuda" for p in model.parameters())


_RESUME_IGNORED = {"epochs", "max_time", "target_val_rmse", "early_stopping", "min_improvement", "num_threads",
                   "checkpoint_every", "device", "eval_batch_size", "restore_best"}


_RESUME_KEYS = ("config", "epoch", "model", "optimizers", "schedulers", "total_steps", "history", "best",
                "bad_epochs", "elapsed", "rng", "self_energies", "data")


def _read_resume_point(folder: Path | None, model: torch.nn.Module, config: TrainConfig, aev_dim: int,
                       data: dict[str, str]) -> dict[str, Any] | None:
    """The checkpoint to continue from (None when there is none yet), checked against this run."""
    if folder is None:
        raise ConfigError("resume=True needs the checkpoint_dir of the run to continue.")
    if not (folder / LATEST).is_file():
        return None
    state = load_file(folder / LATEST)
    source = f"{folder.name}/{LATEST}"
    check_architecture(state, getattr(model, "spec", None) and model.spec.to_dict(),
                       getattr(model, "aev_dim", aev_dim), source=source)
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(
            f"{source} was written by an older version of anibook_utils (checkpoint version "
            f"{state.get('version')}, now {CHECKPOINT_VERSION}); start a new run in another checkpoint_dir.")
    check_keys(state, _RESUME_KEYS, folder / LATEST)
    if state["data"] != data:
        raise CheckpointMismatchError(
            f"{source} was trained on other data (its training/validation sets differ from these). Resume "
            "with the same sets; to train its model further on new data, pass the model itself, "
            "train(load_potential(best.pt).model, new_train, new_val, config), with a new checkpoint_dir.")
    try:
        saved = TrainConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointMismatchError(f"{source} holds settings this version cannot use ({exc}); start a new run "
                                      "in another checkpoint_dir.") from None
    changed = [f for f, v in saved.to_dict().items() if f not in _RESUME_IGNORED and v != getattr(config, f)]
    if changed:
        warnings.warn(f"Resuming with different settings for {changed}: the continued run will "
                      "not match an uninterrupted one.")
    return state


def _restore(state: Mapping[str, Any], model: torch.nn.Module, opt: _Optimisation, device: torch.device,
             config: TrainConfig) -> _RunState:
    """Put a checkpoint's weights, optimisers, random states and progress back."""
    if config.schedule in PER_STEP_SCHEDULES and state["total_steps"] != opt.total_steps:
        raise ConfigError(
            f"This checkpoint's {config.schedule} schedule was planned for {state['total_steps']} steps and "
            f"this run has {opt.total_steps} (other epochs or batch size). Resume with epochs="
            f"{state['config']['epochs']} and batch_size={state['config']['batch_size']}; to train longer, "
            "start a new run from its weights: train(load_potential(best.pt).model, ...) in a new checkpoint_dir.")
    model.load_state_dict(state["model"])
    opt.load_state_dict({**state, "shuffle": state["rng"]["shuffle"]})
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run = _RunState(History(state["history"]), int(state["epoch"]), bad_epochs=int(state["bad_epochs"]),
                    elapsed=float(state["elapsed"]))
    if state.get("best"):
        run.best_epoch, run.best_rmse = int(state["best"]["epoch"]), float(state["best"]["val_rmse"])
        run.best_state = {k: v.to(device) for k, v in state["best"]["model"].items()}
    return run


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class _Session:
    """Everything a run sets up before its first epoch."""

    model: torch.nn.Module
    device: torch.device
    folder: Path | None
    self_energies: Tensor
    targets: _Targets
    train_feed: Feeder
    val_feed: Feeder
    opt: _Optimisation
    run: _RunState
    checkpoints: _Checkpointer


def _prepare(model_or_spec: Any, train_data: ANIData, val_data: ANIData, config: TrainConfig,
             checkpoint_dir: str | os.PathLike | None, resume: bool, self_energies: Tensor | None,
             aev_constants: Mapping[str, Any], distributed: Distributed | None) -> _Session:
    """The model, targets, feeds, optimisers and progress of a run (restored when resuming)."""
    configure_threads(config.num_threads)
    device = distributed.device if distributed is not None else resolve_device(config.device)
    aev_dim = aev_length(aev_constants)
    _check_sets(train_data, val_data)
    folder = _checkpoint_folder(checkpoint_dir)
    model, fresh = _model_for(model_or_spec, config, aev_dim)
    model.to(device)
    data_ids = {"train": train_data.fingerprint(), "val": val_data.fingerprint()}
    state = _read_resume_point(folder, model, config, aev_dim, data_ids) if resume else None
    streamed = isinstance(train_data, H5Stream)
    if streamed and config.feed != "in_step":
        raise ConfigError("Data streamed from disk have no precomputed AEVs: pass TrainConfig(feed='in_step').")
    if state is not None:
        self_energies = state["self_energies"]
    elif self_energies is None:
        self_energies = (stream_self_energies(train_data) if streamed
                         else fit_self_energies(train_data, warn=False).as_tensor())
    self_energies = torch.as_tensor(self_energies, dtype=torch.float64).cpu()
    if config.force_weight > 0 and not (_has_forces(train_data) and _has_forces(val_data)):
        raise ConfigError(f"force_weight={config.force_weight} needs forces in the training and validation data; "
                          "these sets have none (load a file with forces, e.g. the bundled anibook_nms_s01).")
    if config.feed == "buckets" and not supports_buckets(model):
        raise ConfigError(f"feed='buckets' needs a MaskedANIModel; {type(model).__name__} only has a padded "
                          "forward(species, aevs): pass TrainConfig(feed='padded') (or 'in_step').")
    targets = _targets(model, train_data, val_data, self_energies, fresh and config.standardize, device)
    train_feed = _feeder(model, train_data, config.feed, device, aev_constants, self_energies)
    if distributed is not None:
        train_feed.forward = distributed.wrap(model)
    opt = _Optimisation(model, config, steps_per_epoch=_steps_per_epoch(train_data, config))
    run = _restore(state, model, opt, device, config) if state is not None else _RunState()
    targets.unit = float(model.output_scale) if hasattr(model, "output_scale") else targets.unit
    writes = folder if distributed is None or distributed.is_main else None  # rank 0 alone writes
    checkpoints = _Checkpointer(writes, model, config, getattr(model, "aev_dim", aev_dim), self_energies,
                                dict(aev_constants), data_ids)
    return _Session(model, device, folder, self_energies, targets, train_feed,
                    _feeder(model, val_data, config.feed, device, aev_constants, self_energies), opt, run, checkpoints)


def _steps_per_epoch(data: ANIData | H5Stream, config: TrainConfig) -> int:
    """Optimiser steps per epoch (what a per-step schedule is planned for): one per batch of the
    whole data set, however many processes share each batch."""
    return data.steps(config.batch_size) if isinstance(data, H5Stream) else math.ceil(len(data) / config.batch_size)


def _has_forces(data: ANIData | H5Stream) -> bool:
    return data.has_forces if isinstance(data, H5Stream) else data.forces is not None


def _feeder(model: torch.nn.Module, data: ANIData | H5Stream, feed: str, device: torch.device,
            aev_constants: Mapping[str, Any], self_energies: Tensor) -> Feeder | StreamFeeder:
    """How the engine gives ``data`` to the model: from memory, or from disk (a stream)."""
    if isinstance(data, H5Stream):
        return StreamFeeder(model, data, self_energies, device, aev_constants)
    return Feeder(model, data, feed, device, aev_constants)


def train(
    model_or_spec: MaskedANIModel | torch.nn.Module | ArchitectureSpec | Mapping[str, Any] | None,
    train_data: ANIData | H5Stream,
    val_data: ANIData | H5Stream,
    config: TrainConfig | Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    stop_event: threading.Event | Callable[[], bool] | None = None,
    progress: bool = True,
    self_energies: Tensor | None = None,
    aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS,
    distributed: Distributed | None = None,
) -> TrainResult:
    """Train an ANI model on energies (and forces) and return the best model and its history.

    Args:
        model_or_spec: an :class:`ArchitectureSpec` (or its dict, or None for the course's),
            built with ``seed=config.seed``; or a model to train further in place (a
            :class:`MaskedANIModel`, or any module with ``forward(species, aevs)`` together
            with ``feed="padded"`` or ``"in_step"``).
        train_data, val_data: :class:`~anibook_utils.data.ANIData` sets held in memory, or
            :class:`~anibook_utils.streaming.H5Stream` views read from disk batch by batch
            (chapter 10; needs ``feed="in_step"``); the validation set selects the best epoch
            (and drives early stopping and the plateau schedule).
        config: a :class:`TrainConfig` or a dict of its fields (default ``TrainConfig()``).
        checkpoint_dir: folder for ``latest.pt`` and ``best.pt``, written atomically every
            ``config.checkpoint_every`` epochs (and after the last one).
        resume: continue from ``checkpoint_dir/latest.pt`` if it exists (same architecture
            and data required, else :class:`~anibook_utils.checkpoints.CheckpointMismatchError`);
            on the CPU the continued run reproduces the uninterrupted one exactly.
        callback: called after every epoch with the epoch's record (a dict, see :class:`History`).
        stop_event: a ``threading.Event`` (or a function returning True) checked after every
            batch; when set, training stops and the best model so far is returned.
        progress: show a ``tqdm`` progress bar.
        self_energies: per-element self energies (Hartree); fitted on ``train_data`` if None.
        aev_constants: AEV constants (default the course's).
        distributed: this process's place among several (:mod:`anibook_utils.distributed`,
            chapter 10): each rank trains on its shard of every batch, rank 0 writes.

    Ctrl-C (KeyboardInterrupt, also raised from ``callback``) ends training the same way
    as ``stop_event``: the best model and the history so far are returned.
    """
    started = time.perf_counter()
    config = _as_config(config)
    s = _prepare(model_or_spec, train_data, val_data, config, checkpoint_dir, resume, self_energies,
                 aev_constants, distributed)
    run, main = s.run, distributed is None or distributed.is_main
    setup_time = time.perf_counter() - started
    stop_reason, bar = "completed", _progress_bar(progress and main, config.epochs, run.epoch)
    best_unsaved = False
    s.model.train()
    try:
        for epoch in range(run.epoch + 1, config.epochs + 1):
            if _stop_requested(stop_event, distributed):
                raise _StopRequested
            tick = time.perf_counter()
            if isinstance(s.train_feed, StreamFeeder):
                metrics = _train_epoch_stream(s.train_feed, s.targets, s.opt, config, stop_event, distributed, epoch)
            else:
                metrics = _train_epoch(s.train_feed, s.targets, s.opt, config, stop_event, distributed)
            record = {"epoch": epoch, **metrics}
            record.update(_validation_metrics(s.val_feed, s.targets, config, epoch, distributed))
            s.opt.end_epoch(record["val_rmse"])
            record["epoch_time"] = time.perf_counter() - tick
            run.elapsed += record["epoch_time"]
            record.update(lr=s.opt.lr, time=run.elapsed)
            best_unsaved |= run.record(record, s.model, config.min_improvement)
            reason = _stop_reason(config, run)
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs or reason is not None:
                s.checkpoints.save(s.opt, run, best_unsaved)
                best_unsaved = False
            _report(bar, callback if main else None, record, run.best_rmse)
            if reason is not None:
                stop_reason = reason
                break
    except _StopRequested:
        stop_reason = "stopped"
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    if config.restore_best and run.best_state is not None:
        s.model.load_state_dict(run.best_state)
    s.model.eval()
    return TrainResult(
        model=s.model, history=run.history, best_epoch=run.best_epoch,
        best_val_rmse=run.best_rmse if run.best_epoch is not None else math.nan,
        interrupted=stop_reason in ("stopped", "interrupted"), wall_time=time.perf_counter() - started,
        train_time=run.elapsed, setup_time=setup_time, stop_reason=stop_reason, self_energies=s.self_energies,
        config=config, device=str(s.device), aev_constants=dict(aev_constants), checkpoint_dir=s.folder,
    )


def _progress_bar(show: bool, epochs: int, done: int):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=min(done, epochs), desc="training", unit="epoch")


def _report(bar, callback: Callable[[dict[str, Any]], Any] | None, record: dict[str, Any], best: float) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(val_rmse=f"{record['val_rmse']:.3f}", best=f"{best:.3f}")
    if callback is not None:
        callback(dict(record))
