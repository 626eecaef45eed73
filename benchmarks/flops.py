"""Floating-point work of a training step, and the machine's matrix-multiply limit for it.

A dense layer ``in -> out`` applied to ``n`` rows costs ``2 n in out`` FLOPs forward. Training
adds the weight gradient (the same again) and the input gradient (the same again, except for
the first layer, whose input, the AEV, needs no gradient). Activations, biases, gathers and the
optimizer are ignored: they are memory-bound and small beside the matrix products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from anibook_utils.data import ELEMENTS, ANIData


@dataclass(frozen=True)
class GemmShape:
    """One matrix product of a training step: (rows x inner) @ (inner x cols)."""

    rows: int
    inner: int
    cols: int

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.inner * self.cols


def layer_dims(hidden: dict[str, tuple[int, ...]], aev_dim: int = 384) -> dict[str, list[int]]:
    """Per element: the widths from the AEV through the hidden layers to the energy."""
    return {e: [aev_dim, *widths, 1] for e, widths in hidden.items()}


def atoms_per_conformation(data: ANIData) -> dict[str, float]:
    """Average number of atoms of each element per conformation."""
    counts = data.element_counts()
    return {e: counts[e] / len(data) for e in ELEMENTS}


def training_gemms(hidden: dict[str, tuple[int, ...]], atoms: dict[str, int],
                   aev_dim: int = 384) -> list[GemmShape]:
    """Every matrix product of one forward + backward pass over ``atoms[element]`` rows."""
    shapes: list[GemmShape] = []
    for element, dims in layer_dims(hidden, aev_dim).items():
        n = int(atoms.get(element, 0))
        if n == 0:
            continue
        for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            shapes.append(GemmShape(n, fan_in, fan_out))  # forward
            shapes.append(GemmShape(fan_in, n, fan_out))  # weight gradient
            if i > 0:
                shapes.append(GemmShape(n, fan_out, fan_in))  # input gradient
    return shapes


def training_flops_per_conformation(hidden: dict[str, tuple[int, ...]], data: ANIData,
                                    aev_dim: int = 384) -> float:
    """FLOPs of forward + backward per conformation, averaged over ``data``'s composition."""
    per_conf = atoms_per_conformation(data)
    scale = 1_000_000  # count on a large virtual batch, then divide
    atoms = {e: round(n * scale) for e, n in per_conf.items()}
    return sum(g.flops for g in training_gemms(hidden, atoms, aev_dim)) / scale


def matmul_seconds(shapes: list[GemmShape], repeats: int = 20) -> float:
    """Measured seconds for running every product in ``shapes`` once (best of ``repeats``)."""
    operands = [(torch.randn(s.rows, s.inner), torch.randn(s.inner, s.cols)) for s in shapes]
    outputs = [torch.empty(s.rows, s.cols) for s in shapes]
    for (a, b), out in zip(operands, outputs):  # warm up
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for (a, b), out in zip(operands, outputs):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def batch_atoms(data: ANIData, batch_size: int) -> dict[str, int]:
    """Atoms of each element in a batch of ``batch_size`` conformations of average composition."""
    return {e: round(n * batch_size) for e, n in atoms_per_conformation(data).items()}
