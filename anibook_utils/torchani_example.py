"""TorchANI's removed legacy example, "Train Your Own Neural Network Potential", the recipe the course followed (chapter 6).

TorchANI's tutorial ``examples/nnp_training.py`` trained the ANI-1x networks on this very data
file, ``ani_gdb_s01.h5``, with the settings of NeuroChem (its ``inputtrain.ipt``). It was renamed
``examples/legacy_training.py`` on 2024-04-14 (TorchANI pull request #256) and removed on
2024-06-11 (#414); TorchANI's current example, ``examples/training.py``, is
:mod:`anibook_utils.torchani_current`. The course ran the legacy tutorial. This module keeps its
loop readable and faithful, written with torchani 2.9's classes:

- the model: torchani's ``AEVComputer`` (ANI-1x's constants, which are the course's,
  :func:`~anibook_utils.aev.aev_computer`) *inside* the model, so every step computes the AEVs
  of its batch, followed by ``torchani.nn.ANINetworks`` of ``AtomicNetwork`` (course widths,
  biases, ``CELU(0.1)``); weights drawn with ``kaiming_normal_(a=1)`` and biases set to zero,
  NeuroChem's initialisation;
- the targets: energies minus per-element self energies (the tutorial fits them on the whole
  file before splitting; here they are fitted on the training set only);
- the loss: the squared error of each conformation divided by the square root of its number
  of atoms, averaged over the batch;
- two optimizers: ``AdamW`` (lr 1e-3) on the weights and plain ``SGD`` (lr 1e-3) on the
  biases. The tutorial gives the second and third layers' weights NeuroChem's decays, 1e-5 and
  1e-6, and the first and last layers' weights no decay of their own, so they take AdamW's
  default, 1e-2 (:data:`EXAMPLE_HIDDEN_DECAYS`, :data:`EXAMPLE_FINAL_DECAY`);
- ``ReduceLROnPlateau(factor=0.5, patience=100, threshold=0)`` on both, stepped with the
  validation RMSE once per epoch; training stops when AdamW's rate falls below 1e-5;
- the best model (lowest validation RMSE) kept and written to ``best.pt``;
- batches of 2560 conformations, shuffled once and then reused in the same order every
  epoch (the tutorial collates and caches its batches).

:class:`ExampleLoop` is the outer loop both TorchANI examples share (validate, keep the best,
step the plateau schedule, train an epoch), timed per epoch. :class:`TorchANIExample` is the
legacy recipe on it: :meth:`~TorchANIExample.train_epoch` runs one epoch of
:func:`torchani_example_step` and :meth:`~TorchANIExample.evaluate` returns an RMSE, so
chapters and benchmarks can time the pieces; :func:`time_step_parts` times the parts of one
step. Energies are in Hartree inside, errors in kcal/mol outside.
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
from .feeding import prepare_buckets
from .history import History
from .models import COURSE_HIDDEN, ArchitectureSpec, MaskedANIModel, build_model, flush_tiny
from .self_energy import fit_self_energies, shift_energies
from .timing import best_time
from .torchani_shim import ANINetworks, AtomicNetwork

__all__ = [
    "ADAMW_DEFAULT_DECAY", "EXAMPLE_BATCH_SIZE", "EXAMPLE_FINAL_DECAY", "EXAMPLE_HIDDEN_DECAYS", "ExampleLoop",
    "ExampleModel", "TorchANIExample", "build_example_model", "example_optimizers", "masked_model_from_example",
    "subnormal_energy_change", "time_step_parts", "torchani_example_step",
]

ADAMW_DEFAULT_DECAY = 1e-2
"""``torch.optim.AdamW``'s default weight decay, which parameter groups without their own take."""
EXAMPLE_HIDDEN_DECAYS: tuple[float, ...] = (ADAMW_DEFAULT_DECAY, 1e-5, 1e-6)
"""AdamW's decoupled weight decay on the weights of hidden layers 1, 2 and 3, as in the tutorial:
NeuroChem's "l2" values for layers 2 and 3; layer 1 has none of its own, so AdamW's default."""
EXAMPLE_FINAL_DECAY = ADAMW_DEFAULT_DECAY
"""Weight decay on the output layer's weights: none of its own in the tutorial, so AdamW's default."""
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
        raise ValueError("hidden_decays needs at least one value, e.g. (1e-2, 1e-5, 1e-6).")
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


class ExampleLoop:
    """The outer loop of TorchANI's training examples, legacy and current (chapter 6).

    Each iteration stops if the learning rate has fallen below ``early_stopping_lr``, keeps the
    model if its validation RMSE is the best so far (the examples' ``best.pt``), steps the
    plateau schedulers with that RMSE, trains one epoch and validates. A subclass sets
    ``model``, ``schedulers``, ``early_stopping_lr``, ``checkpoint_dir`` and ``checkpoint_name``,
    calls :meth:`_start_loop`, and provides :attr:`learning_rate`, :meth:`train_epoch`,
    :meth:`evaluate` (``"val"``, ``"train"`` and, when given, ``"test"``), :meth:`_state` (what
    the checkpoint holds) and :meth:`_load_state`. ``keep_initial``: whether the untrained
    model may be kept as the best (the legacy example checkpoints it, the current one does not).
    """

    keep_initial: bool = True
    model: torch.nn.Module
    schedulers: Sequence[torch.optim.lr_scheduler.ReduceLROnPlateau]
    early_stopping_lr: float
    checkpoint_dir: Path | None
    checkpoint_name: str = "best.pt"

    def _start_loop(self) -> None:
        self.history = History()
        self.epoch = 0
        self.elapsed = 0.0
        self.best_val_rmse = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.initial_val_rmse: float | None = None  # before any training (set by run)
        self.stop_reason = ""

    @property
    def learning_rate(self) -> float:
        raise NotImplementedError

    def train_epoch(self) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, which: str = "val", model: torch.nn.Module | None = None) -> float:
        raise NotImplementedError

    def _state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _load_state(self, model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def _consider_best(self, val_rmse: float) -> None:
        # The examples ask ``scheduler.is_better(rmse, scheduler.best)``; with threshold=0 that is
        # a plain comparison with the best RMSE the scheduler has seen (and torch 2.13 has made
        # ``is_better`` private, ``_is_better``).
        if self.epoch == 0 and not self.keep_initial:
            return
        if val_rmse < self.schedulers[0].best:
            self.best_val_rmse, self.best_epoch = val_rmse, self.epoch
            self.best_state = copy.deepcopy(self._state())
            if self.checkpoint_dir is not None:
                atomic_save(self.best_state, self.checkpoint_dir / self.checkpoint_name)

    def _epoch_record(self, stats: Mapping[str, float], lr: float, train_metrics: bool,
                      extra_val_time: float) -> dict[str, Any]:
        tick = time.perf_counter()
        val_rmse = self.evaluate("val")
        val_time = time.perf_counter() - tick + extra_val_time
        train_rmse = self.evaluate("train") if train_metrics else math.nan
        self.elapsed += stats["time"] + val_time
        return {"epoch": self.epoch, "train_rmse": train_rmse, "val_rmse": val_rmse, "loss": stats["loss"],
                "lr": lr, "step_time": stats["time"], "val_time": val_time,
                "epoch_time": stats["time"] + val_time, "time": self.elapsed}

    def run(self, max_epochs: int, train_metrics: bool = True, progress: bool = True,
            callback: Callable[[dict[str, Any]], Any] | None = None,
            max_time: float | None = None) -> History:
        """The example's loop for up to ``max_epochs`` epochs in total; returns the :class:`History`.

        Records per epoch: ``epoch``, ``train_rmse`` (the training set re-evaluated after the
        epoch, if ``train_metrics``, not timed), ``val_rmse``, ``loss``, ``lr``, ``step_time``
        (training steps), ``val_time``, ``epoch_time`` (both), ``time`` (cumulative
        ``epoch_time``; the first epoch also counts the validation before training).
        ``max_time`` stops after the epoch during which that many seconds were used. A second
        call continues where the first stopped.
        """
        from tqdm.auto import tqdm

        tick = time.perf_counter()
        val_rmse = self.history[-1]["val_rmse"] if self.history else self.evaluate("val")
        extra_val_time = 0.0 if self.history else time.perf_counter() - tick
        if self.initial_val_rmse is None:
            self.initial_val_rmse = val_rmse
        bar = tqdm(total=max_epochs, initial=self.epoch, desc=type(self).__name__, unit="epoch",
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
                record = self._epoch_record(stats, lr, train_metrics, extra_val_time)
                extra_val_time, val_rmse = 0.0, record["val_rmse"]
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

    def best_model(self) -> torch.nn.Module:
        """A copy of the model with the best state (lowest validation RMSE) loaded, in eval mode."""
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            self._load_state(model, self.best_state)
        return model.eval()

    def test_rmse(self) -> float:
        """RMSE (kcal/mol) of the best model (selected on validation) on the test set."""
        return self.evaluate("test", model=self.best_model())


@dataclass
class _Batch:
    species: Tensor
    coordinates: Tensor
    targets: Tensor


class TorchANIExample(ExampleLoop):
    """The legacy TorchANI example's recipe on an anibook training/validation split.

    >>> example = TorchANIExample(train_set, val_set, test_set, seed=0)   # doctest: +SKIP
    >>> example.train_epoch(), example.evaluate()                # one epoch, validation RMSE
    >>> history = example.run(max_epochs=10)                     # the example's outer loop
    >>> example.test_rmse()                                      # the best model on the test set

    ``test_data`` (optional) is only ever evaluated, never used for a choice.
    ``checkpoint_dir`` (optional) receives ``best.pt`` (the networks' state dict) whenever
    the validation RMSE improves. ``reshuffle=True`` draws new batches every epoch instead
    of the example's fixed ones.
    """

    def __init__(
        self, train_data: ANIData, val_data: ANIData, test_data: ANIData | None = None,
        hidden: Mapping[str, Sequence[int]] | None = None, batch_size: int = EXAMPLE_BATCH_SIZE,
        lr: float = 1e-3, hidden_decays: Sequence[float] = EXAMPLE_HIDDEN_DECAYS,
        final_decay: float = EXAMPLE_FINAL_DECAY, plateau_factor: float = 0.5, plateau_patience: int = 100,
        early_stopping_lr: float = 1e-5, seed: int = 0, device: str | torch.device = "cpu",
        checkpoint_dir: str | os.PathLike | None = None, self_energies: Tensor | None = None,
        reshuffle: bool = False,
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
        self.train_data = train_data
        self._shuffler = torch.Generator().manual_seed(seed)
        self.batches = {"train": self._batches(train_data, shuffle=True),
                        "val": self._batches(val_data, shuffle=False)}
        if test_data is not None:
            self.batches["test"] = self._batches(test_data, shuffle=False)
        self.model = build_example_model(hidden, seed=seed, device=self.device)
        self.adamw, self.sgd = example_optimizers(self.model.networks, lr, hidden_decays, final_decay)
        self.optimizers = (self.adamw, self.sgd)
        self.schedulers = tuple(
            torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=plateau_factor, patience=plateau_patience,
                                                       threshold=0)
            for opt in self.optimizers)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._start_loop()

    def _batches(self, data: ANIData, shuffle: bool) -> list[_Batch]:
        targets = shift_energies(data, self_energies=self.self_energies).float()
        batches = []
        for b in iterate_batches(data, self.batch_size, shuffle=shuffle, generator=self._shuffler):
            batches.append(_Batch(b.species.to(self.device), b.coordinates.to(self.device),
                                  targets[b.indices].to(self.device)))
        return batches

    @property
    def train_batches(self) -> list[_Batch]:
        return self.batches["train"]

    @property
    def learning_rate(self) -> float:
        """AdamW's current learning rate (the example's stopping criterion)."""
        return float(self.adamw.param_groups[0]["lr"])

    def train_epoch(self) -> dict[str, float]:
        """One pass of :func:`torchani_example_step` over the training batches.

        Returns ``{"loss": mean batch loss, "time": seconds}``; does not validate.
        """
        if self.reshuffle and self.epoch > 0:
            self.batches["train"] = self._batches(self.train_data, shuffle=True)
        self.model.train()
        tick = time.perf_counter()
        losses = [torchani_example_step(self.model, self.optimizers, b.species, b.coordinates, b.targets)
                  for b in self.batches["train"]]
        loss = float(torch.stack(losses).mean())  # the only synchronisation of the epoch
        return {"loss": loss, "time": time.perf_counter() - tick}

    def evaluate(self, which: str = "val", model: torch.nn.Module | None = None) -> float:
        """RMSE in kcal/mol on ``"val"``, ``"train"`` or ``"test"`` (no gradients, batches of
        ``batch_size``), of ``model`` (default: the model being trained)."""
        if which not in self.batches:
            raise ValueError(f"which must be one of {sorted(self.batches)}, got {which!r}"
                             + (" (pass test_data to evaluate a test set)." if which == "test" else "."))
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in self.batches[which]:
                predicted = model(b.species, b.coordinates)
                total += float((predicted.double() - b.targets.double()).pow(2).sum())
                count += int(b.targets.shape[0])
        model.train(was_training)
        return math.sqrt(total / count) * HARTREE_TO_KCAL

    def _state(self) -> dict[str, Tensor]:
        return self.model.networks.state_dict()

    def _load_state(self, model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
        model.networks.load_state_dict(state)


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


# --------------------------------------------------------------------------------------
# Where the time of a step goes (chapter 6, "Where the time goes")
# --------------------------------------------------------------------------------------


def _forward_backward(networks: torch.nn.Module, species: Tensor, features: Tensor, targets: Tensor,
                      sqrt_atoms: Tensor) -> Callable[[], None]:
    def run() -> None:
        networks.zero_grad()
        (((networks(species, features) - targets) ** 2) / sqrt_atoms).mean().backward()
    return run


def _example_step(trained: ExampleModel, species: Tensor, coordinates: Tensor, targets: Tensor,
                  flush_denormal: bool = False) -> Callable[[], None]:
    model = copy.deepcopy(trained).train()  # its own copy: its steps change only its weights
    optimizers = example_optimizers(model.networks)

    def run() -> None:
        torch.set_flush_denormal(flush_denormal)  # True: the CPU treats subnormal numbers as zero
        try:
            torchani_example_step(model, optimizers, species, coordinates, targets)
        finally:
            torch.set_flush_denormal(False)
    return run


def _engine_step(trained: ExampleModel, probe: ANIData, targets: Tensor, sqrt_atoms: Tensor) -> Callable[[], None]:
    model = masked_model_from_example(trained)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = prepare_buckets(probe).batch()  # precomputed, flushed AEVs grouped by element

    def run() -> None:
        loss = (((model.forward_batch(batch) - targets) ** 2) / sqrt_atoms).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run


def step_parts(trained: ExampleModel, probe: ANIData, self_energies: Tensor) -> dict[str, Callable[[], Any]]:
    """The parts of one step of the legacy example on the batch ``probe``, as callables to time.

    The AEVs; the networks' forward and backward pass on precomputed AEVs, with TorchANI's
    ``ANINetworks`` and with the course's masked model (same weights), as computed and with
    entries below 1e-20 zeroed (:func:`~anibook_utils.models.flush_tiny`); the two optimizers'
    steps; the example's whole step, plain and with ``torch.set_flush_denormal(True)``; and
    the engine's whole step on precomputed element buckets. ``trained`` is left unchanged.
    """
    species, coordinates = probe.species, probe.coordinates
    targets = shift_energies(probe, self_energies=self_energies).float()
    sqrt_atoms = probe.num_atoms.float().sqrt()
    with torch.no_grad():
        aevs = trained.aev_computer(species, coordinates)
    flushed = flush_tiny(aevs)
    course = build_model(ArchitectureSpec.course(), course=True)  # the course's masked forward ...
    course.load_state_dict(masked_model_from_example(trained).state_dict())  # ... with the same weights
    networks = copy.deepcopy(trained.networks)
    stepped = copy.deepcopy(trained.networks)
    optimizers = example_optimizers(stepped)
    _forward_backward(stepped, species, aevs, targets, sqrt_atoms)()  # gradients for the optimizer timing
    return {
        "AEVs (AEVComputer, no gradient)": lambda: trained.aev_computer(species, coordinates),
        "ANINetworks forward + backward": _forward_backward(networks, species, aevs, targets, sqrt_atoms),
        "course's masked model forward + backward": _forward_backward(course, species, aevs, targets, sqrt_atoms),
        "AdamW + SGD steps": lambda: [opt.step() for opt in optimizers],
        "legacy tutorial: whole step": _example_step(trained, species, coordinates, targets),
        "ANINetworks forward + backward, tiny AEV entries zeroed":
            _forward_backward(networks, species, flushed, targets, sqrt_atoms),
        "course's masked model forward + backward, tiny entries zeroed":
            _forward_backward(course, species, flushed, targets, sqrt_atoms),
        "legacy tutorial: whole step, set_flush_denormal(True)":
            _example_step(trained, species, coordinates, targets, flush_denormal=True),
        "engine: whole step (precomputed AEVs, element buckets)": _engine_step(trained, probe, targets, sqrt_atoms),
    }


def time_step_parts(trained: ExampleModel, probe: ANIData, self_energies: Tensor,
                    repeats: int = 5) -> dict[str, float]:
    """Milliseconds of each of :func:`step_parts`, the fastest of ``repeats`` calls after a warm-up
    (:func:`~anibook_utils.timing.best_time`)."""
    return {label: 1e3 * best_time(fn, repeats=repeats) for label, fn in step_parts(trained, probe, self_energies).items()}


def subnormal_energy_change(trained: ExampleModel, probe: ANIData) -> float:
    """The largest change (Hartree) of an energy of ``probe`` when the AEVs' tiny entries are zeroed
    or the CPU flushes subnormal numbers to zero: how much those two speed-ups cost in accuracy."""
    with torch.no_grad():
        aevs = trained.aev_computer(probe.species, probe.coordinates)
        plain = trained.networks(probe.species, aevs)
        zeroed = trained.networks(probe.species, flush_tiny(aevs))
        torch.set_flush_denormal(True)
        try:
            flushed = trained.networks(probe.species, aevs)
        finally:
            torch.set_flush_denormal(False)
    return max(float((zeroed - plain).abs().max()), float((flushed - plain).abs().max()))
