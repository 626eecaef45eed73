"""Small batches on a GPU: the engine's step as one CUDA graph, or compiled, against the plain step.

At batch 256 a GPU step is mostly kernel launches: four small networks, forward and
backward, then Adam, each a few dozen tiny kernels. Two ways to launch less:

- ``engine_cuda_graph``: the whole step (forward, loss, backward, ``Adam(capturable=True)``)
  captured once with ``torch.cuda.graph`` and replayed for every batch;
- ``engine_compiled``: the step's forward and loss through
  ``torch.compile(mode="reduce-overhead")`` (Inductor kernels replayed as CUDA graphs), with
  ``backward`` and the fused Adam step as usual.

A CUDA graph needs fixed shapes and addresses, while each batch has its own number of atoms
of each element. So both variants feed the engine's model *padded* element buckets: element
``i`` always gets ``batch * (most atoms of i in one conformation)`` rows; the extra rows hold
zero AEVs and belong to an extra conformation slot that the loss never reads, so the loss and
its gradients are the engine's (:func:`padded_loss`). The padded rows cost arithmetic, which
is cheap at small batches. Nothing in the engine changes: the suite only reports which step
is faster.

Each variant runs in its own process (``python -m benchmarks.small_batch``), so a failed
capture or compilation (or one that hangs) is recorded as an error string and cannot disturb
the rest of the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from anibook_utils.data import ELEMENTS, ANIData
from anibook_utils.models import ArchitectureSpec, ElementBatch, ElementBuckets, MaskedANIModel, build_model
from anibook_utils.feeding import prepare_buckets

from .throughput import Epoch, _targets, conformations_per_second, describe_error, synchronizer

VARIANT_TIMEOUT_S = 300.0
"""Most seconds one variant's process may take (compilation included)."""


def max_atoms_per_element(data: ANIData) -> list[int]:
    """The most atoms of each element (H, C, N, O) found in one conformation of ``data``."""
    return [int((data.species == i).sum(1).max()) if len(data) else 0 for i in range(len(ELEMENTS))]


@dataclass
class PaddedEpoch:
    """One epoch's full batches with fixed shapes: ``features[i]`` is ``(batches, rows_i, F)``,
    ``owners[i]`` ``(batches, rows_i)`` (padding rows point at slot ``batch_size``), ``targets``
    ``(batches, batch_size)``; ``None`` for elements with no rows."""

    features: list[Tensor | None]
    owners: list[Tensor | None]
    targets: Tensor

    def batch(self, k: int) -> tuple[list[Tensor | None], list[Tensor | None], Tensor]:
        """Batch ``k`` as views: (features, owners, targets)."""
        pick = lambda ts: [None if t is None else t[k] for t in ts]  # noqa: E731
        return pick(self.features), pick(self.owners), self.targets[k]


def pad_epoch(buckets: ElementBuckets, y: Tensor, order: Tensor, batch_size: int,
              rows: list[int]) -> PaddedEpoch:
    """The full batches of ``order`` (conformations of ``buckets``) padded to ``rows[i]`` rows per element."""
    ordered = buckets.select(order)
    n_batches = int(order.shape[0]) // batch_size
    used = n_batches * batch_size
    features: list[Tensor | None] = []
    owners: list[Tensor | None] = []
    for f, owner, ptr, width in zip(ordered.features, ordered.owners, ordered.offsets, rows):
        if width == 0:
            features.append(None)
            owners.append(None)
            continue
        keep = int(ptr[used])  # rows of the full batches (rows are grouped by conformation)
        owner = owner[:keep]
        batch = torch.div(owner, batch_size, rounding_mode="floor")
        position = torch.arange(keep, device=owner.device) - ptr.index_select(0, batch * batch_size)
        padded = f.new_zeros(n_batches, width, f.shape[1])
        padded[batch, position] = f[:keep]
        slots = torch.full((n_batches, width), batch_size, dtype=torch.long, device=owner.device)
        slots[batch, position] = owner - batch * batch_size
        features.append(padded)
        owners.append(slots)
    targets = y.index_select(0, order[:used]).view(n_batches, batch_size)
    return PaddedEpoch(features, owners, targets)


def padded_loss(model: MaskedANIModel, features: list[Tensor | None], owners: list[Tensor | None],
                targets: Tensor) -> Tensor:
    """The engine's batch loss (mean squared error, Hartree²) from one padded batch."""
    n = int(targets.shape[0])
    energies = model.forward_batch(ElementBatch(list(features), list(owners), n + 1))
    return (energies[:n] - targets).pow(2).mean()


def _capturable_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam as in the engine (lr 1e-4), with its state on the GPU so ``step`` can be captured."""
    try:
        return torch.optim.Adam(model.parameters(), lr=1e-4, fused=True, capturable=True)
    except (RuntimeError, ValueError):  # a torch without fused + capturable
        return torch.optim.Adam(model.parameters(), lr=1e-4, capturable=True)


def _capture(loss: Callable[[], Tensor], optimizer: torch.optim.Optimizer, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture forward, backward and optimizer step as one CUDA graph (after ``warmup`` eager
    steps on a side stream, as PyTorch's whole-network capture recipe does)."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # backward then allocates the grads in the graph's pool
    with torch.cuda.graph(graph):
        loss().backward()
        optimizer.step()
    return graph


def _prepare(data: ANIData, spec: ArchitectureSpec, device: torch.device,
             batch_size: int) -> tuple[MaskedANIModel, ElementBuckets, Tensor, list[int]]:
    """The model (seed 0), the buckets and targets on ``device``, and the padded rows per element."""
    if device.type != "cuda":
        raise RuntimeError(f"the small-batch variants need a CUDA device, got {device}")
    model = build_model(spec, seed=0).to(device)
    rows = [batch_size * m for m in max_atoms_per_element(data)]
    return model, prepare_buckets(data).to(device), _targets(data).to(device), rows


def graphed_engine_step(data: ANIData, spec: ArchitectureSpec, device: torch.device, batch_size: int,
                        info: dict) -> Epoch:
    """``engine_cuda_graph``: capture the padded step on its first call, then replay it per batch."""
    model, buckets, y, rows = _prepare(data, spec, device, batch_size)
    optimizer = _capturable_adam(model)
    state: dict = {}  # the static inputs and the graph, made on the first step

    def epoch(order: Tensor) -> Callable[[int, int], None]:
        layout = pad_epoch(buckets, y, order.to(device), batch_size, rows)

        def step(start: int, stop: int) -> None:
            assert stop - start == batch_size, "the graph replays full batches only"
            feats, owners, targets = layout.batch(start // batch_size)
            if not state:
                tick = time.perf_counter()
                state["inputs"] = ([None if t is None else t.clone() for t in feats],
                                   [None if t is None else t.clone() for t in owners], targets.clone())
                state["graph"] = _capture(lambda: padded_loss(model, *state["inputs"]), optimizer)
                info["capture_s"] = time.perf_counter() - tick
            static_feats, static_owners, static_targets = state["inputs"]
            for dst, src in zip(static_feats + static_owners, feats + owners):
                if dst is not None:
                    dst.copy_(src)
            static_targets.copy_(targets)
            state["graph"].replay()
        return step

    return epoch


def compiled_engine_step(data: ANIData, spec: ArchitectureSpec, device: torch.device, batch_size: int,
                         info: dict) -> Epoch:
    """``engine_compiled``: the padded forward + loss through ``torch.compile(mode="reduce-overhead")``."""
    model, buckets, y, rows = _prepare(data, spec, device, batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def loss_of(features: list[Tensor | None], owners: list[Tensor | None], targets: Tensor) -> Tensor:
        return padded_loss(model, features, owners, targets)

    compiled = torch.compile(loss_of, mode="reduce-overhead", dynamic=False)

    def epoch(order: Tensor) -> Callable[[int, int], None]:
        layout = pad_epoch(buckets, y, order.to(device), batch_size, rows)

        def step(start: int, stop: int) -> None:
            first = "compile_s" not in info
            tick = time.perf_counter()
            torch.compiler.cudagraph_mark_step_begin()
            loss = compiled(*layout.batch(start // batch_size))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first:
                torch.cuda.synchronize()
                info["compile_s"] = time.perf_counter() - tick
        return step

    return epoch


VARIANTS: dict[str, Callable[[ANIData, ArchitectureSpec, torch.device, int, dict], Epoch]] = {
    "engine_cuda_graph": graphed_engine_step,
    "engine_compiled": compiled_engine_step,
}


def measure_variant(name: str, data: ANIData, spec: ArchitectureSpec, device: str | torch.device,
                    batch_size: int, min_seconds: float) -> dict:
    """One variant's throughput row (in this process); errors become an ``error`` string."""
    device = torch.device(device)
    info: dict = {}
    try:
        epoch = VARIANTS[name](data, spec, device, batch_size, info)
        rate = conformations_per_second(epoch, len(data), batch_size, min_seconds, sync=synchronizer(device))
    except Exception as exc:  # recorded: the suite goes on
        return {"loop": name, "batch_size": batch_size, "error": describe_error(exc), **info}
    return {"loop": name, "batch_size": batch_size, **rate, **info}


def measure_variants(device: str | torch.device, batch_size: int = 256, min_seconds: float = 3.0,
                     names: tuple[str, ...] = tuple(VARIANTS), timeout: float = VARIANT_TIMEOUT_S) -> list[dict]:
    """Each variant's row, each measured in a fresh process on the suite's training set."""
    return [_in_subprocess(name, str(device), batch_size, min_seconds, timeout) for name in names]


def _in_subprocess(name: str, device: str, batch_size: int, min_seconds: float, timeout: float) -> dict:
    """Run ``python -m benchmarks.small_batch`` for one variant and read back its row."""
    with tempfile.TemporaryDirectory(prefix="anibook-small-batch-") as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "benchmarks.small_batch", "--variant", name, "--device", device,
                   "--batch-size", str(batch_size), "--min-seconds", str(min_seconds), "--out", str(out)]
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"loop": name, "batch_size": batch_size, "error": f"Timeout: no result within {timeout:.0f} s"}
        if out.is_file():
            return json.loads(out.read_text())
        tail = " ".join((done.stderr or done.stdout).split()[-60:])
        return {"loop": name, "batch_size": batch_size,
                "error": f"the variant's process exited with {done.returncode}: {tail}"[:300]}


def compare(rows: list[dict], batch_size: int, baseline: str = "engine") -> dict:
    """Which step is fastest at ``batch_size``: rates, speed-ups over ``baseline``, errors, winner."""
    chosen = [r for r in rows if r["batch_size"] == batch_size and r["loop"] in (baseline, *VARIANTS)]
    rates = {r["loop"]: r["conformations_per_s"] for r in chosen if "error" not in r}
    errors = {r["loop"]: r["error"] for r in chosen if "error" in r}
    speedups = {k: v / rates[baseline] for k, v in rates.items()} if baseline in rates else {}
    return {"batch_size": batch_size, "baseline": baseline, "conformations_per_s": rates,
            "speedup": speedups, "errors": errors, "winner": max(rates, key=rates.get) if rates else None}


def main(argv: list[str] | None = None) -> int:
    """Measure one variant and write its row as JSON to ``--out`` (used by :func:`measure_variants`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.small_batch", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=tuple(VARIANTS), required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        row = {"loop": args.variant, "batch_size": args.batch_size,
               "error": f"RuntimeError: the small-batch variants need a CUDA device, got {device}"}
    else:
        from .suite import load_split

        train, _ = load_split()[1:]
        row = measure_variant(args.variant, train, ArchitectureSpec.course(), device, args.batch_size,
                              args.min_seconds)
    Path(args.out).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
