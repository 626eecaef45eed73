"""TorchANI 2.9's current training example, ``examples/training.py``, on the book's data (chapter 6).

TorchANI replaced its tutorial "Train Your Own Neural Network Potential" (the legacy recipe,
:mod:`anibook_utils.torchani_example`) with ``examples/training.py``. This module runs that
example with torchani 2.9's API, as the example does:

- the model: ``torchani.arch.simple_ani(("H", "C", "N", "O"), lot="wb97x-631gd", repulsion=True)``:
  TorchANI's current AEVs (smooth cutoff), networks of 256-192-160 (H), 224-192-160 (C) and
  192-160-128 (N, O) neurons with GELU and no biases, PyTorch's default initialisation, the
  energies of the isolated atoms at ωB97X/6-31G(d), ANI-1's level of theory, added to the
  output as self energies, and an xTB repulsion term; it takes atomic numbers and
  coordinates and predicts total energies, so the targets are the energies as stored;
- the data: batches of 2,560 conformations made once by ``create_batched_dataset``, read back
  with ``ANIBatchedDataset(...).cache()`` and served by ``as_dataloader()``, which shuffles
  the order of the batches every epoch;
- one optimizer, ``AdamW(model.neural_networks.parameters(), lr=0.5e-3, weight_decay=1e-6)``,
  and ``ReduceLROnPlateau(factor=0.5, patience=100, threshold=0)`` stepped with the validation
  RMSE, also once before training; training stops when the rate falls below 1e-10;
- the loss: each conformation's squared error divided by the square root of its number of
  atoms, averaged over the batch (energies only: the example's force term is off by default).

What is adapted, and why: the example reads ANI-1x's ``sample.h5`` and splits it 80/20 itself;
here each part of the book's split is written in TorchANI's format
(:func:`write_torchani_dataset`) and batched as one division of that name
(:func:`batch_splits`), so the three recipes of chapter 6 see the same conformations. The seed
fixes the initial weights, the batches and their order. The best state is kept in memory
(written to ``best_model_state.pt`` only with ``checkpoint_dir``); there is no restart file
and no TensorBoard. The loop is :class:`~anibook_utils.torchani_example.ExampleLoop`, the one
both examples share.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .data import ATOMIC_NUMBERS, ELEMENTS, HARTREE_TO_KCAL, PADDING, ANIData
from .torchani_example import ExampleLoop
from .torchani_shim import torchani

__all__ = [
    "CURRENT_BATCH_SIZE", "CURRENT_LOT", "CurrentExample", "atomic_numbers", "batch_splits",
    "build_current_model", "current_step", "write_torchani_dataset",
]

CURRENT_LOT = "wb97x-631gd"
"""The level of theory whose isolated-atom energies ``simple_ani`` uses as self energies (ANI-1's)."""
CURRENT_BATCH_SIZE = 2560


def atomic_numbers(species: Tensor) -> Tensor:
    """The book's species indices (positions in :data:`ELEMENTS`, -1 for padding) as atomic numbers."""
    table = torch.tensor([ATOMIC_NUMBERS[e] for e in ELEMENTS], dtype=torch.long)
    return torch.where(species >= 0, table[species.clamp(min=0)], torch.full_like(species, PADDING))


def write_torchani_dataset(data: ANIData, path: str | os.PathLike):
    """``data`` written as a new TorchANI data set file (one group per number of atoms).

    Returns the ``torchani.datasets.ANIDataset``. The file must not exist yet.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path.name} exists already: pass a new file name (or delete the old file).")
    dataset = torchani.datasets.ANIDataset(path, grouping="by_num_atoms", verbose=False)
    sizes = data.num_atoms
    for size in sorted(set(sizes.tolist())):
        rows = (sizes == size).nonzero().view(-1)
        dataset.append_conformers(f"{size:03d}", {
            "species": atomic_numbers(data.species[rows, :size]).numpy(),
            "coordinates": data.coordinates[rows, :size].numpy(),
            "energies": data.energies[rows].numpy(),
        })
    return dataset


def batch_splits(splits: Mapping[str, ANIData], folder: str | os.PathLike, batch_size: int = CURRENT_BATCH_SIZE,
                 seed: int = 0) -> dict:
    """Each named part of a split as a division of TorchANI's batched data set, cached in memory.

    ``folder`` receives ``{name}.h5`` and ``batched/{name}/`` for every name; the returned
    ``{name: BatchedDataset}`` no longer needs them. ``seed`` fixes which conformations share a batch.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in splits.items():
        dataset = write_torchani_dataset(data, folder / f"{name}.h5")
        torchani.datasets.create_batched_dataset(
            dataset, dest_path=folder / "batched", batch_size=batch_size, splits={name: 1.0},
            divs_seed=seed, batch_seed=seed, verbose=False)
    return {name: torchani.datasets.ANIBatchedDataset(folder / "batched", split=name).cache(verbose=False)
            for name in splits}


def build_current_model(seed: int = 0, repulsion: bool = True, device: str | torch.device = "cpu"):
    """The example's model, ``simple_ani(("H", "C", "N", "O"), lot="wb97x-631gd", repulsion=True)``,
    in float32, its initial weights drawn with ``torch.manual_seed(seed)`` (the global random
    state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchani.arch.simple_ani(ELEMENTS, lot=CURRENT_LOT, repulsion=repulsion)
    return model.to(dtype=torch.float32, device=device)


def current_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Mapping[str, Tensor]) -> Tensor:
    """One training step of the current example on a batch ``{"species", "coordinates", "energies"}``
    (atomic numbers, Å, Hartree): energies, loss (MSE / sqrt(atoms), Hartree²), backward, AdamW step."""
    species = batch["species"]
    coordinates = batch["coordinates"].float()
    targets = batch["energies"].float()
    num_atoms = (species >= 0).sum(dim=1, dtype=targets.dtype)
    predicted = model((species, coordinates)).energies
    loss = (torch.nn.functional.mse_loss(predicted, targets, reduction="none") / num_atoms.sqrt()).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


class CurrentExample(ExampleLoop):
    """TorchANI 2.9's current training example on an anibook split.

    >>> current = CurrentExample(train_set, val_set, test_set, seed=0)   # doctest: +SKIP
    >>> history = current.run(max_epochs=10)        # validation RMSE per epoch, timed
    >>> current.test_rmse()                         # the best model (on validation) on the test set

    The parts are written to ``workdir`` in TorchANI's format and batched there (a temporary
    folder, deleted once the batches are in memory, if None). ``checkpoint_dir`` (optional)
    receives ``best_model_state.pt`` whenever the validation RMSE improves.
    """

    keep_initial = False  # the example checks for a better model only after an epoch
    checkpoint_name = "best_model_state.pt"

    def __init__(
        self, train_data: ANIData, val_data: ANIData, test_data: ANIData | None = None,
        batch_size: int = CURRENT_BATCH_SIZE, lr: float = 0.5e-3, weight_decay: float = 1e-6,
        plateau_factor: float = 0.5, plateau_patience: int = 100, early_stopping_lr: float = 1e-10,
        repulsion: bool = True, seed: int = 0, device: str | torch.device = "cpu",
        checkpoint_dir: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.device = torch.device(device)
        parts = {"training": train_data, "validation": val_data, **({"test": test_data} if test_data is not None else {})}
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="anibook-torchani-") as folder:
                batched = batch_splits(parts, folder, batch_size, seed)
        else:
            batched = batch_splits(parts, workdir, batch_size, seed)
        self.loaders = {name: ds.as_dataloader(num_workers=0, shuffle=(name == "training"))
                        for name, ds in batched.items()}
        self.loaders["training"].sampler.generator = torch.Generator().manual_seed(seed)  # the batch order
        self.model = build_current_model(seed, repulsion=repulsion, device=self.device)
        self.optimizer = torch.optim.AdamW(self.model.neural_networks.parameters(), lr=lr,
                                           weight_decay=weight_decay)
        self.schedulers = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=plateau_factor, patience=plateau_patience, threshold=0),)
        self.early_stopping_lr = early_stopping_lr
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._start_loop()

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _on_device(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_epoch(self) -> dict[str, float]:
        """One pass of :func:`current_step` over the training batches, in a new random order.

        Returns ``{"loss": mean batch loss, "time": seconds}``; does not validate.
        """
        self.model.train()
        tick = time.perf_counter()
        losses = [current_step(self.model, self.optimizer, self._on_device(b)) for b in self.loaders["training"]]
        loss = float(torch.stack(losses).mean())
        return {"loss": loss, "time": time.perf_counter() - tick}

    def evaluate(self, which: str = "val", model: torch.nn.Module | None = None) -> float:
        """RMSE in kcal/mol of ``model`` (default: the one being trained) on ``"val"``,
        ``"train"`` or ``"test"``, as the example's ``validate`` computes it."""
        name = {"val": "validation", "train": "training"}.get(which, which)
        if name not in self.loaders:
            raise ValueError(f"which must be 'val', 'train' or 'test', got {which!r}"
                             + (" (pass test_data to evaluate a test set)." if which == "test" else "."))
        model = self.model if model is None else model
        was_training = model.training
        model.train(False)
        squared, count = 0.0, 0
        with torch.no_grad():
            for batch in self.loaders[name]:
                batch = self._on_device(batch)
                predicted = model((batch["species"], batch["coordinates"].float())).energies
                squared += float((predicted.double() - batch["energies"].double()).pow(2).sum())
                count += int(predicted.shape[0])
        model.train(was_training)
        return math.sqrt(squared / count) * HARTREE_TO_KCAL

    def _state(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def _load_state(self, model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
        model.load_state_dict(state)
