"""A deterministic, seeded train/validation split (chapter 1)."""

from __future__ import annotations

import torch

from .dataset import ANIData
from .errors import EmptySelectionError


def split_indices(
    data: ANIData, train_fraction: float = 0.8, seed: int = 0, by: str = "conformation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and validation conformations.

    ``by="conformation"`` shuffles conformations with a seeded generator;
    ``by="molecule"`` keeps every molecule whole on one side (an extrapolation test).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}.")
    generator = torch.Generator().manual_seed(seed)
    n = len(data)
    if by == "conformation":
        order = torch.randperm(n, generator=generator)
        n_train = int(round(train_fraction * n))
        train, val = order[:n_train], order[n_train:]
    elif by == "molecule":
        molecules = torch.unique(data.molecule_ids)
        shuffled = molecules[torch.randperm(len(molecules), generator=generator)]
        sizes = torch.stack([(data.molecule_ids == m).sum() for m in shuffled])
        take = (torch.cumsum(sizes, 0) - sizes) < train_fraction * n
        in_train = torch.isin(data.molecule_ids, shuffled[take])
        train, val = in_train.nonzero().view(-1), (~in_train).nonzero().view(-1)
    else:
        raise ValueError(f"by must be 'conformation' or 'molecule', got {by!r}.")
    if len(train) == 0 or len(val) == 0:
        raise EmptySelectionError(
            f"A {train_fraction:.0%} split by {by} of {n} conformations leaves one side "
            "empty: use more data, another fraction, or split by conformation."
        )
    return train.sort().values, val.sort().values


def split_dataset(
    data: ANIData, train_fraction: float = 0.8, seed: int = 0, by: str = "conformation"
) -> tuple[ANIData, ANIData]:
    """The training and validation subsets of ``data`` (see :func:`split_indices`)."""
    train, val = split_indices(data, train_fraction, seed, by)
    return data.subset(train), data.subset(val)
