"""Training throughput: conformations per second for forward + backward + optimizer step.

Three loops over the same training conformations, the same architecture and Adam:

(a) ``engine``: the book's default path (chapter 4): AEVs precomputed once, grouped by
    element once per data set; a step gathers nothing and never touches padding.
(b) ``torchani``: the TorchANI example's step (chapter 6): the AEVComputer runs inside
    every step on the padded batch, then ``ANINetworks``; AdamW on weights + SGD on biases
    (the other loops use Adam: the optimizer step is a small part of a step either way).
(c) ``course``: the course's masked model (``CourseMaskedANIModel``) on padded batches,
    with the AEVs computed in each step as in (b) (``course``); on precomputed padded AEVs as
    torchani computes them (``course_precomputed``), which separates the cost of the AEVs; and
    on precomputed AEVs with their tiny entries zeroed as the engine's are
    (``course_flushed``, :func:`~anibook_utils.models.flush_tiny`), which separates the cost
    of the subnormal numbers those entries cause in the backward pass (chapter 4) from the
    cost of the boolean-mask routing.

Every loop takes a ``device`` (default the CPU). On a GPU the harness synchronises the
device before starting and before stopping the clock, so queued kernels are counted; a loop
that fails there is reported with its error instead of stopping the suite. The permutations
are always drawn on the CPU, so every device sees the same batches.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from anibook_utils.aev import aev_computer, precompute_aevs
from anibook_utils.data import ANIData
from anibook_utils.models import ArchitectureSpec, build_model, flush_tiny
from anibook_utils.torchani_example import build_example_model, example_optimizers, torchani_example_step
from anibook_utils.feeding import prepare_buckets
from anibook_utils.self_energy import fit_self_energies, shift_energies

Step = Callable[[int, int], None]
Epoch = Callable[[torch.Tensor], Step]
"""A loop is prepared per epoch from a permutation, then run batch by batch (start, stop)."""

IndexStep = Callable[[torch.Tensor, torch.Tensor], None]
"""A padded loop's step: the batch's indices on the CPU and the same indices on the device."""


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits until ``device`` has finished its queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``"Type: message"`` on one line, at most ``limit`` characters (for the results JSON)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _per_batch(step: IndexStep, device: torch.device) -> Epoch:
    """An epoch function for loops that index the padded tensors in every step."""
    def epoch(order: torch.Tensor) -> Step:
        on_device = order.to(device)
        return lambda start, stop: step(order[start:stop], on_device[start:stop])
    return epoch


def _targets(data: ANIData) -> torch.Tensor:
    """Energies minus fitted self energies (Hartree, float32), the quantity every loop learns."""
    return shift_energies(data, self_energies=fit_self_energies(data, warn=False)).float()


def engine_step(data: ANIData, spec: ArchitectureSpec,
                device: str | torch.device = "cpu") -> tuple[Epoch, torch.nn.Module]:
    """(a) The engine's fast path: element buckets over precomputed AEVs, reordered once per
    epoch (one gather per element) and sliced into views per batch, as ``train`` does."""
    device = torch.device(device)
    model = build_model(spec, seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the engine's default
    buckets = prepare_buckets(data).to(device)
    y = _targets(data).to(device)

    def epoch(order: torch.Tensor) -> Callable[[int, int], None]:
        order = order.to(device)
        ordered, y_epoch = buckets.select(order), y.index_select(0, order)

        def step(start: int, stop: int) -> None:
            loss = (model.forward_batch(ordered.slice(start, stop)) - y_epoch[start:stop]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    return epoch, model


def torchani_step(data: ANIData, spec: ArchitectureSpec,
                  device: str | torch.device = "cpu") -> tuple[Epoch, torch.nn.Module]:
    """(b) TorchANI example style (chapter 6's code): AEVComputer inside the model, ANINetworks,
    AdamW on weights and SGD on biases, loss divided by sqrt(atoms).

    The batch's padded width is read on the CPU (as the example's collate does), so a GPU
    step waits for nothing."""
    device = torch.device(device)
    model = build_example_model(dict(spec.hidden), seed=0, device=device)
    optimizers = example_optimizers(model.networks)
    y = _targets(data).to(device)
    all_species, all_coordinates = data.species.to(device), data.coordinates.to(device)

    def step(host_index: torch.Tensor, index: torch.Tensor) -> None:
        species = all_species.index_select(0, index)
        coordinates = all_coordinates.index_select(0, index)
        host = species if device.type == "cpu" else data.species.index_select(0, host_index)
        width = int((host >= 0).sum(1).max())
        torchani_example_step(model, optimizers, species[:, :width], coordinates[:, :width],
                              y.index_select(0, index))

    return _per_batch(step, device), model


def course_step(data: ANIData, spec: ArchitectureSpec, precomputed: bool,
                device: str | torch.device = "cpu", flush: bool = False) -> tuple[Epoch, torch.nn.Module]:
    """(c) The course's masked model on padded batches: AEVs per step, or precomputed (as
    torchani computes them, or with ``flush`` their tiny entries zeroed as the engine's are).

    Its ``-1`` buffer follows the inputs' device and dtype, as in the course's code."""
    if flush and not precomputed:
        raise ValueError("flush=True needs precomputed=True: the AEVs computed in a step are used as they are.")
    device = torch.device(device)
    model = build_model(spec, seed=0, course=True).to(device)
    computer = aev_computer(device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    y = _targets(data).to(device)
    all_species, all_coordinates = data.species.to(device), data.coordinates.to(device)
    aevs = None
    if precomputed:
        aevs = precompute_aevs(data)
        aevs = (flush_tiny(aevs) if flush else aevs).to(device)

    def step(host_index: torch.Tensor, index: torch.Tensor) -> None:
        species = all_species.index_select(0, index)
        if aevs is not None:
            batch_aevs = aevs.index_select(0, index)
        else:
            with torch.no_grad():
                batch_aevs = computer(species, all_coordinates.index_select(0, index))
        loss = (model(species, batch_aevs) - y.index_select(0, index)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _per_batch(step, device), model


Loop = Callable[..., tuple[Epoch, torch.nn.Module]]
"""``loop(data, spec, device="cpu") -> (epoch, model)``."""

LOOPS: dict[str, Loop] = {
    "engine": engine_step,
    "torchani": torchani_step,
    "course": lambda data, spec, device="cpu": course_step(data, spec, False, device),
    "course_precomputed": lambda data, spec, device="cpu": course_step(data, spec, True, device),
    "course_flushed": lambda data, spec, device="cpu": course_step(data, spec, True, device, flush=True),
}


def conformations_per_second(epoch: Epoch, n: int, batch_size: int, min_seconds: float = 3.0,
                             warmup: int = 3, seed: int = 0,
                             sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Run shuffled epochs of full batches for at least ``min_seconds`` (after ``warmup`` steps).

    Each epoch's preparation (the engine's reordering) is inside the timed region. ``sync``
    (see :func:`synchronizer`) waits for a GPU's queued work after the warm-up and before the
    clock is read at the end, so the time covers every step's kernels.
    """
    sync = sync or (lambda: None)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same batches on every device

    def steps():
        while True:
            run = epoch(torch.randperm(n, generator=generator))
            for start in range(0, n - batch_size + 1, batch_size):
                yield lambda start=start: run(start, start + batch_size)

    stream = steps()
    for _ in range(warmup):
        next(stream)()
    sync()
    count, start = 0, time.perf_counter()
    while True:
        next(stream)()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and count >= 5:
            break
    sync()
    elapsed = time.perf_counter() - start
    return {"steps": count, "seconds": elapsed, "step_ms": 1e3 * elapsed / count,
            "conformations_per_s": count * batch_size / elapsed}


def measure_throughput(data: ANIData, batch_sizes: tuple[int, ...] = (256, 2560),
                       loops: tuple[str, ...] = tuple(LOOPS), min_seconds: float = 3.0,
                       spec: ArchitectureSpec | None = None, device: str | torch.device = "cpu") -> list[dict]:
    """Throughput rows for every loop and batch size on ``data`` (the training set).

    A loop that fails to build or to run gets rows with an ``error`` string (and no rates).
    """
    spec = spec or ArchitectureSpec.course()
    device = torch.device(device)
    sync = synchronizer(device)
    rows = []
    for name in loops:
        try:
            epoch, _ = LOOPS[name](data, spec, device)
        except Exception as exc:  # recorded, so one loop cannot stop the suite
            rows += [{"loop": name, "batch_size": b, "error": describe_error(exc)} for b in batch_sizes]
            continue
        for batch_size in batch_sizes:
            try:
                row = conformations_per_second(epoch, len(data), batch_size, min_seconds, sync=sync)
            except Exception as exc:
                row = {"error": describe_error(exc)}
            rows.append({"loop": name, "batch_size": batch_size, **row})
    return rows
