"""Deterministic, seeded splits: training / validation (/ test) (chapter 1).

The book's method (from chapter 4 on): the model is fitted on the training set, every choice
(the best epoch, early stopping, settings compared in an experiment) is made on the validation
set, and the error reported is measured on a test set that no choice has seen:
:data:`BOOK_SPLIT` = 80/10/10 by conformation. The course split 80/20 (training/validation)
and reported validation errors; chapters reproducing the course use :data:`COURSE_SPLIT` and
say so.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from .dataset import ANIData
from .errors import EmptySelectionError

BOOK_SPLIT: tuple[float, float, float] = (0.8, 0.1, 0.1)
"""The book's training / validation / test fractions."""

COURSE_SPLIT = 0.8
"""The course's training fraction (the other 20 % validated and reported)."""


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fractions(fractions: float | Sequence[float]) -> tuple[float, ...]:
    if _is_number(fractions):
        if not 0.0 < fractions < 1.0:
            raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {fractions}.")
        return float(fractions), 1.0 - float(fractions)
    try:
        items = [] if isinstance(fractions, (str, bytes)) else list(fractions)
    except TypeError:  # not iterable
        items = []
    parts = tuple(float(f) for f in items) if all(_is_number(f) for f in items) else ()
    if len(parts) < 2 or any(not 0.0 < f < 1.0 for f in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-9):
        raise ValueError(
            f"fractions must be two or more numbers between 0 and 1 that add up to 1, e.g. (0.8, 0.1, 0.1); "
            f"got {fractions!r}.")
    return parts


def split_indices(
    data: ANIData, fractions: float | Sequence[float] = COURSE_SPLIT, seed: int = 0, by: str = "conformation"
) -> tuple[torch.Tensor, ...]:
    """Sorted indices of each part: ``fractions`` is the training fraction (two parts:
    training and validation) or one fraction per part, e.g. :data:`BOOK_SPLIT`.

    ``by="conformation"`` shuffles conformations with a seeded generator;
    ``by="molecule"`` keeps every molecule whole in one part (an extrapolation test).
    """
    parts = _fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0 (e.g. seed=0), got {seed!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    n = len(data)
    bounds = [round(n * c) for c in (0.0, *torch.tensor(parts, dtype=torch.float64).cumsum(0).tolist())]
    if by == "conformation":
        order = torch.randperm(n, generator=generator)
        pieces = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    elif by == "molecule":
        molecules = torch.unique(data.molecule_ids)
        shuffled = molecules[torch.randperm(len(molecules), generator=generator)]
        sizes = torch.stack([(data.molecule_ids == m).sum() for m in shuffled])
        starts = torch.cumsum(sizes, 0) - sizes  # where each molecule's conformations begin
        part_of = torch.bucketize(starts, torch.tensor(bounds[1:-1]), right=True)
        pieces = [torch.isin(data.molecule_ids, shuffled[part_of == k]).nonzero().view(-1)
                  for k in range(len(parts))]
    else:
        raise ValueError(f"by must be 'conformation' or 'molecule', got {by!r}.")
    if any(len(piece) == 0 for piece in pieces):
        raise EmptySelectionError(
            f"A {'/'.join(f'{f:.0%}' for f in parts)} split by {by} of {n} conformations leaves a part "
            "empty: use more data, other fractions, or split by conformation.")
    return tuple(piece.sort().values for piece in pieces)


def split_dataset(
    data: ANIData, fractions: float | Sequence[float] = COURSE_SPLIT, seed: int = 0, by: str = "conformation"
) -> tuple[ANIData, ...]:
    """The parts of ``data`` (see :func:`split_indices`): ``train, val = split_dataset(data, 0.8)``
    or ``train, val, test = split_dataset(data, BOOK_SPLIT)``."""
    return tuple(data.subset(index) for index in split_indices(data, fractions, seed, by))
