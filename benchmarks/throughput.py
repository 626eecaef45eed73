"""Training throughput: conformations per second for forward + backward + optimizer step.

Three loops over the same training conformations, the same architecture and Adam:

(a) ``engine``: the book's default path (chapter 4): AEVs precomputed once, grouped by
    element once per data set; a step gathers nothing and never touches padding.
(b) ``torchani``: the TorchANI example's step (chapter 6): the AEVComputer runs inside
    every step on the padded batch, then ``ANINetworks``; AdamW on weights + SGD on biases
    (the other loops use Adam: the optimizer step is a small part of a step either way).
(c) ``course``: the course's masked model (``CourseMaskedANIModel``) on padded batches,
    with the AEVs computed in each step as in (b) (``course``), and also on precomputed
    padded AEVs (``course_precomputed``), which separates the cost of the AEVs from the cost
    of the boolean-mask routing.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from anibook_utils.aev import course_aev_computer, precompute_aevs
from anibook_utils.data import ANIData
from anibook_utils.models import ArchitectureSpec, build_model
from anibook_utils.torchani_example import build_example_model, example_optimizers, torchani_example_step
from anibook_utils.training import element_count_matrix, fit_self_energies, prepare_buckets

Step = Callable[[int, int], None]
Epoch = Callable[[torch.Tensor], Step]
"""A loop is prepared per epoch from a permutation, then run batch by batch (start, stop)."""


def _per_batch(step: Callable[[torch.Tensor], None]) -> Epoch:
    """An epoch function for loops that index the padded tensors in every step."""
    def epoch(order: torch.Tensor) -> Step:
        return lambda start, stop: step(order[start:stop])
    return epoch


def _targets(data: ANIData) -> torch.Tensor:
    """Energies minus fitted self energies (Hartree, float32), the quantity every loop learns."""
    return (data.energies - element_count_matrix(data) @ fit_self_energies(data)).float()


def engine_step(data: ANIData, spec: ArchitectureSpec) -> tuple[Epoch, torch.nn.Module]:
    """(a) The engine's fast path: element buckets over precomputed AEVs, reordered once per
    epoch (one gather per element) and sliced into views per batch, as ``train`` does."""
    model = build_model(spec, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the engine's default
    buckets = prepare_buckets(data)
    y = _targets(data)

    def epoch(order: torch.Tensor) -> Callable[[int, int], None]:
        ordered, y_epoch = buckets.select(order), y.index_select(0, order)

        def step(start: int, stop: int) -> None:
            loss = (model.forward_batch(ordered.slice(start, stop)) - y_epoch[start:stop]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    return epoch, model


def torchani_step(data: ANIData, spec: ArchitectureSpec) -> tuple[Epoch, torch.nn.Module]:
    """(b) TorchANI example style (chapter 6's code): AEVComputer inside the model, ANINetworks,
    AdamW on weights and SGD on biases, loss divided by sqrt(atoms)."""
    model = build_example_model(dict(spec.hidden), seed=0)
    optimizers = example_optimizers(model.networks)
    y = _targets(data)

    def step(index: torch.Tensor) -> None:
        species = data.species.index_select(0, index)
        coordinates = data.coordinates.index_select(0, index)
        width = int((species >= 0).sum(1).max())
        torchani_example_step(model, optimizers, species[:, :width], coordinates[:, :width],
                              y.index_select(0, index))

    return _per_batch(step), model


def course_step(data: ANIData, spec: ArchitectureSpec, precomputed: bool) -> tuple[Epoch, torch.nn.Module]:
    """(c) The course's masked model on padded batches (AEVs per step, or precomputed)."""
    model = build_model(spec, seed=0, course=True)
    computer = course_aev_computer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    y = _targets(data)
    aevs = precompute_aevs(data) if precomputed else None

    def step(index: torch.Tensor) -> None:
        species = data.species.index_select(0, index)
        if aevs is not None:
            batch_aevs = aevs.index_select(0, index)
        else:
            with torch.no_grad():
                batch_aevs = computer(species, data.coordinates.index_select(0, index))
        loss = (model(species, batch_aevs) - y.index_select(0, index)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _per_batch(step), model


LOOPS: dict[str, Callable[[ANIData, ArchitectureSpec], tuple[Epoch, torch.nn.Module]]] = {
    "engine": engine_step,
    "torchani": torchani_step,
    "course": lambda data, spec: course_step(data, spec, precomputed=False),
    "course_precomputed": lambda data, spec: course_step(data, spec, precomputed=True),
}


def conformations_per_second(epoch: Epoch, n: int, batch_size: int, min_seconds: float = 3.0,
                             warmup: int = 3, seed: int = 0) -> dict[str, float]:
    """Run shuffled epochs of full batches for at least ``min_seconds`` (after ``warmup`` steps).

    Each epoch's preparation (the engine's reordering) is inside the timed region.
    """
    generator = torch.Generator().manual_seed(seed)

    def steps():
        while True:
            run = epoch(torch.randperm(n, generator=generator))
            for start in range(0, n - batch_size + 1, batch_size):
                yield lambda start=start: run(start, start + batch_size)

    stream = steps()
    for _ in range(warmup):
        next(stream)()
    count, start = 0, time.perf_counter()
    while True:
        next(stream)()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and count >= 5:
            break
    return {"steps": count, "seconds": elapsed, "step_ms": 1e3 * elapsed / count,
            "conformations_per_s": count * batch_size / elapsed}


def measure_throughput(data: ANIData, batch_sizes: tuple[int, ...] = (256, 2560),
                       loops: tuple[str, ...] = tuple(LOOPS), min_seconds: float = 3.0,
                       spec: ArchitectureSpec | None = None) -> list[dict]:
    """Throughput rows for every loop and batch size on ``data`` (the training set)."""
    spec = spec or ArchitectureSpec.course()
    rows = []
    for name in loops:
        epoch, _ = LOOPS[name](data, spec)
        for batch_size in batch_sizes:
            row = conformations_per_second(epoch, len(data), batch_size, min_seconds)
            rows.append({"loop": name, "batch_size": batch_size, **row})
    return rows
