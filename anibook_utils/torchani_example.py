"""The legacy TorchANI "Train your own neural network potential" recipe the course followed (chapter 6).

TorchANI's tutorial ``examples/nnp_training.py`` (renamed ``legacy_training.py`` in April
2024 and removed from the repository in June 2024; TorchANI's current training example,
``examples/training.py``, builds its model with ``torchani.arch.simple_ani`` instead) trained
the ANI-1x networks on this very data file with NeuroChem's settings. The course followed it.
This module keeps that legacy loop readable and faithful, written with torchani 2.9's classes:

- the model: torchani's ``AEVComputer`` (the course's constants,
  :func:`~anibook_utils.aev.aev_computer`) *inside* the model, so every step computes
  the AEVs of its batch, followed by ``torchani.nn.ANINetworks`` of ``AtomicNetwork``
  (course widths, biases, ``CELU(0.1)``); weights drawn with ``kaiming_normal_(a=1)`` and
  biases set to zero, NeuroChem's initialisation;
- the targets: energies minus per-element self energies fitted on the training set;
- the loss: the squared error of each conformation divided by the square root of its
  number of atoms, averaged over the batch;
- two optimizers: ``AdamW`` (lr 1e-3) on the weights, with decoupled weight decay 1e-4,
  1e-5 and 1e-6 on the three hidden layers and none on the output layer, and plain ``SGD``
  (lr 1e-3) on the biases;
- ``ReduceLROnPlateau(factor=0.5, patience=100, threshold=0)`` on both, stepped with the
  validation RMSE once per epoch; training stops when AdamW's rate falls below 1e-5;
- the best model (lowest validation RMSE) kept and written to ``best.pt``;
- batches of 2560 conformations, shuffled once and then reused in the same order every
  epoch (the example caches its collated batches).

:class:`TorchANIExample` holds all of it; :meth:`TorchANIExample.train_epoch` runs one
epoch of :func:`torchani_example_step` and :meth:`TorchANIExample.evaluate` returns an RMSE,
so chapters and benchmarks can time the pieces. :meth:`TorchANIExample.run` is the
example's outer loop. Energies are in Hartree inside, errors in kcal/mol outside.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .aev import AEV_LENGTH, aev_computer
from .checkpoints import atomic_save
from .data import ELEMENTS, HARTREE_TO_KCAL, ANIData, iterate_batches
from .history import History
from .models import COURSE_HIDDEN, ArchitectureSpec, MaskedANIModel, build_model
from .self_energy import fit_self_energies, shift_energies
from .torchani_shim import ANINetworks, AtomicNetwork

__all__ = [
    "EXAMPLE_FINAL_DECAY", "EXAMPLE_HIDDEN_DECAYS", "ExampleModel", "TorchANIExample",
    "build_example_model", "example_optimizers", "masked_model_from_example",
    "torchani_example_step",
]

EXAMPLE_HIDDEN_DECAYS: tuple[float, ...] = (1e-4, 1e-5, 1e-6)
"""AdamW's decoupled weight decay on the weights of hidden layers 1, 2 and 3 (NeuroChem's "l2")."""
EXAMPLE_FINAL_DECAY = 0.0
"""Weight decay on the output layer's weights: none."""
EXAMPLE_BATCH_SIZE = 2560


class ExampleModel(torch.nn.Module):
    """Species and coordinates (Å) → energies (Hartree, relative to the self energies).

    ``aev_computer`` runs inside :meth:`forward`, as in the TorchANI example, so every call
    computes the AEVs of its batch again.
    """

    def __init__(self, aev_computer: torch.nn.Module, networks: ANINetworks) -> None:
        super().__init__()
        self.aev_computer = aev_computer
        self.networks = networks

    def forward(self, species: Tensor, coordinates: Tensor) -> Tensor:
        aevs = self.aev_computer(species, coordinates)
        return self.networks(species, aevs)


def _init_like_neurochem(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.kaiming_normal_(module.weight, a=1.0)
        torch.nn.init.zeros_(module.bias)


def build_example_model(hidden: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
                        device: str | torch.device = "cpu") -> ExampleModel:
    """The example's model: AEVComputer → ANINetworks (one ``AtomicNetwork`` per element).

    ``hidden`` maps each of H, C, N, O to hidden widths (default :data:`COURSE_HIDDEN`);
    every element needs a network because torchani routes species index ``i`` to the
    ``i``-th one. Weights ~ ``kaiming_normal_(a=1)`` and zero biases, drawn from a generator
    seeded with ``seed`` (the global random state is left alone).
    """
    hidden = dict(COURSE_HIDDEN if hidden is None else hidden)
    missing = [e for e in ELEMENTS if e not in hidden]
    if missing:
        raise ValueError(f"The example needs a network for every element of {ELEMENTS}; missing {missing}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        networks = ANINetworks({
            e: AtomicNetwork([AEV_LENGTH, *hidden[e], 1], activation=torch.nn.CELU(0.1), bias=True)
            for e in ELEMENTS
        })
        networks.apply(_init_like_neurochem)
    return ExampleModel(aev_computer(), networks).to(device)


def _layers(network: AtomicNetwork) -> list[torch.nn.Linear]:
    return [*network.layers, network.final_layer]


def example_optimizers(
    networks: ANINetworks, lr: float = 1e-3, hidden_decays: Sequence[float] = EXAMPLE_HIDDEN_DECAYS,
    final_decay: float = EXAMPLE_FINAL_DECAY,
) -> tuple[torch.optim.AdamW, torch.optim.SGD]:
    """AdamW on the weights (one parameter group per layer, each with its own decay) and SGD on the biases.

    Hidden layer ``i`` gets ``hidden_decays[i]`` (the last value for deeper layers), the
    output layer ``final_decay``.
    """
    if not hidden_decays:
        raise ValueError("hidden_decays needs at least one value, e.g. (1e-4, 1e-5, 1e-6).")
    weight_groups, bias_groups = [], []
    for network in networks.atomics.values():
        layers = _layers(network)
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            decay = final_decay if last else hidden_decays[min(i, len(hidden_decays) - 1)]
            weight_groups.append({"params": [layer.weight], "weight_decay": decay})
            bias_groups.append({"params": [layer.bias]})
    return torch.optim.AdamW(weight_groups, lr=lr), torch.optim.SGD(bias_groups, lr=lr)


def torchani_example_step(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                          species: Tensor, coordinates: Tensor, targets: Tensor) -> Tensor:
    """One training step of the example: forward (AEVs included), loss, backward, both optimizers.

    The loss is the mean over the batch of ``(predicted - target)**2 / sqrt(atoms)``, in
    Hartree². Returns the loss (detached).
    """
    num_atoms = (species >= 0).sum(dim=1, dtype=targets.dtype)
    predicted = model(species, coordinates)
    loss = ((predicted - targets).pow(2) / num_atoms.sqrt()).mean()
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


@dataclass
class _Batch:
    species: Tensor
    coordinates: Tensor
    targets: Tensor


class TorchANIExample:
    """The TorchANI example's recipe on an anibook training/validation split.

    >>> example = TorchANIExample(train_set, val_set, seed=0)   # doctest: +SKIP
    >>> example.train_epoch(), example.evaluate()                # one epoch, validation RMSE
    >>> history = example.run(max_epochs=100)                    # the example's outer loop

    ``checkpoint_dir`` (optional) receives ``best.pt`` (the networks' state dict) whenever
    the validation RMSE improves. ``reshuffle=True`` draws new batches every epoch instead
    of the example's fixed ones.
    """

    def __init__(
        self, train_data: ANIData, val_data: ANIData, hidden: Mapping[str, Sequence[int]] | None = None,
        batch_size: int = EXAMPLE_BATCH_SIZE, lr: float = 1e-3,
        hidden_decays: Sequence[float] = EXAMPLE_HIDDEN_DECAYS, final_decay: float = EXAMPLE_FINAL_DECAY,
        plateau_factor: float = 0.5, plateau_patience: int = 100, early_stopping_lr: float = 1e-5,
        seed: int = 0, device: str | torch.device = "cpu", checkpoint_dir: str | os.PathLike | None = None,
        self_energies: Tensor | None = None, reshuffle: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.seed = seed
        self.reshuffle = reshuffle
        self.early_stopping_lr = early_stopping_lr
        self.self_energies = (fit_self_energies(train_data, warn=False).as_tensor() if self_energies is None
                              else torch.as_tensor(self_energies, dtype=torch.float64))
        self.train_data, self.val_data = train_data, val_data
        self._shuffler = torch.Generator().manual_seed(seed)
        self.train_batches = self._batches(train_data, shuffle=True)
        self.val_batches = self._batches(val_data, shuffle=False)
        self.model = build_example_model(hidden, seed=seed, device=self.device)
        self.adamw, self.sgd = example_optimizers(self.model.networks, lr, hidden_decays, final_decay)
        self.optimizers = (self.adamw, self.sgd)
        self.schedulers = tuple(
            torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=plateau_factor, patience=plateau_patience,
                                                       threshold=0)
            for opt in self.optimizers)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.history = History()
        self.epoch = 0
        self.elapsed = 0.0
        self.best_val_rmse = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.initial_val_rmse: float | None = None  # before any training (set by run)
        self.stop_reason = ""

    # --- data -------------------------------------------------------------------------
    def _batches(self, data: ANIData, shuffle: bool) -> list[_Batch]:
        targets = shift_energies(data, self_energies=self.self_energies).float()
        batches = []
        for b in iterate_batches(data, self.batch_size, shuffle=shuffle, generator=self._shuffler):
            batches.append(_Batch(b.species.to(self.device), b.coordinates.to(self.device),
                                  targets[b.indices].to(self.device)))
        return batches

    @property
    def learning_rate(self) -> float:
        """AdamW's current learning rate (the example's stopping criterion)."""
        return float(self.adamw.param_groups[0]["lr"])

    # --- one epoch, one evaluation ----------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One pass of :func:`torchani_example_step` over the training batches.

        Returns ``{"loss": mean batch loss, "time": seconds}``; does not validate.
        """
        if self.reshuffle and self.epoch > 0:
            self.train_batches = self._batches(self.train_data, shuffle=True)
        self.model.train()
        tick = time.perf_counter()
        losses = [torchani_example_step(self.model, self.optimizers, b.species, b.coordinates, b.targets)
                  for b in self.train_batches]
        loss = float(torch.stack(losses).mean())  # the only synchronisation of the epoch
        return {"loss": loss, "time": time.perf_counter() - tick}

    def evaluate(self, which: str = "val") -> float:
        """RMSE in kcal/mol on ``"val"`` or ``"train"`` (no gradients, batches of ``batch_size``)."""
        if which == "val":
            batches = self.val_batches
        elif which == "train":
            batches = self.train_batches
        else:
            raise ValueError(f"which must be 'val' or 'train', got {which!r}.")
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in batches:
                predicted = self.model(b.species, b.coordinates)
                total += float((predicted.double() - b.targets.double()).pow(2).sum())
                count += int(b.targets.shape[0])
        self.model.train()
        return math.sqrt(total / count) * HARTREE_TO_KCAL

    # --- the example's outer loop -----------------------------------------------------
    def _consider_best(self, val_rmse: float) -> None:
        # The example asks ``scheduler.is_better(rmse, scheduler.best)``; with threshold=0
        # that is a plain comparison with the best RMSE the scheduler has seen.
        if val_rmse < self.schedulers[0].best:
            self.best_val_rmse, self.best_epoch = val_rmse, self.epoch
            self.best_state = copy.deepcopy(self.model.networks.state_dict())
            if self.checkpoint_dir is not None:
                atomic_save(self.best_state, self.checkpoint_dir / "best.pt")

    def run(self, max_epochs: int, train_metrics: bool = True, progress: bool = True,
            callback: Callable[[dict[str, Any]], Any] | None = None,
            max_time: float | None = None) -> History:
        """The example's loop for up to ``max_epochs`` epochs in total; returns the :class:`History`.

        Each iteration: validate, stop if AdamW's rate is below ``early_stopping_lr``,
        checkpoint if the validation RMSE improved, step both schedulers with it, train one
        epoch. (The validation at the top of an iteration is the one computed at the end of
        the previous epoch; the last epoch's model is also considered for the best one.)

        Records per epoch: ``epoch``, ``train_rmse`` (the training set re-evaluated after the
        epoch, if ``train_metrics``), ``val_rmse``, ``loss``, ``lr``, ``step_time`` (training
        steps), ``val_time``, ``epoch_time`` (both), ``time`` (cumulative ``epoch_time``).
        ``max_time`` stops after the epoch during which that many seconds were used.
        """
        from tqdm.auto import tqdm

        tick = time.perf_counter()
        val_rmse = self.history[-1]["val_rmse"] if self.history else self.evaluate("val")
        initial_val_time = 0.0 if self.history else time.perf_counter() - tick
        if self.initial_val_rmse is None:
            self.initial_val_rmse = val_rmse
        bar = tqdm(total=max_epochs, initial=self.epoch, desc="torchani example", unit="epoch",
                   disable=not progress)
        self.stop_reason = "completed"
        try:
            while self.epoch < max_epochs:
                if self.learning_rate < self.early_stopping_lr:
                    self.stop_reason = "early_stopping"
                    break
                self._consider_best(val_rmse)
                for scheduler in self.schedulers:
                    scheduler.step(val_rmse)
                lr = self.learning_rate
                stats = self.train_epoch()
                self.epoch += 1
                tick = time.perf_counter()
                val_rmse = self.evaluate("val")
                val_time = time.perf_counter() - tick + initial_val_time
                initial_val_time = 0.0
                train_rmse = self.evaluate("train") if train_metrics else math.nan
                epoch_time = stats["time"] + val_time
                self.elapsed += epoch_time
                record = {"epoch": self.epoch, "train_rmse": train_rmse, "val_rmse": val_rmse,
                          "loss": stats["loss"], "lr": lr, "step_time": stats["time"], "val_time": val_time,
                          "epoch_time": epoch_time, "time": self.elapsed}
                self.history.append(record)
                bar.update(1)
                bar.set_postfix(val_rmse=f"{val_rmse:.3f}")
                if callback is not None:
                    callback(dict(record))
                if max_time is not None and self.elapsed >= max_time:
                    self.stop_reason = "time_budget"
                    break
            self._consider_best(val_rmse)
        finally:
            bar.close()
        return self.history

    def best_model(self) -> ExampleModel:
        """A copy of the model with the best networks (lowest validation RMSE) loaded."""
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.networks.load_state_dict(self.best_state)
        return model.eval()


def masked_model_from_example(model: ExampleModel, spec: ArchitectureSpec | None = None) -> MaskedANIModel:
    """The example's networks copied into a :class:`~anibook_utils.models.MaskedANIModel`.

    So the book's engine can start from exactly the example's initial weights. ``spec``
    defaults to the course's architecture; its widths must match the example's networks.
    """
    spec = spec or ArchitectureSpec.course()
    masked = build_model(spec, aev_dim=AEV_LENGTH)
    with torch.no_grad():
        for element, target in masked.networks.items():
            src = _layers(model.networks.atomics[element])
            dst = [m for m in target if isinstance(m, torch.nn.Linear)]
            if [tuple(m.weight.shape) for m in src] != [tuple(m.weight.shape) for m in dst]:
                raise ValueError(f"The {element} network's layers differ from spec {spec.hidden[element]}.")
            for s, d in zip(src, dst):
                d.weight.copy_(s.weight)
                d.bias.copy_(s.bias)
    return masked.to(next(model.parameters()).device)
