"""Looking at conformations: XYZ text, static matplotlib 3D drawings and py3Dmol views (chapter 1).

>>> symbols, xyz = conformation(data, 0)
>>> draw_molecule(fig.add_subplot(projection="3d"), symbols, xyz)   # always works
>>> view = molecule_viewer([(symbols, xyz)])                         # None without py3Dmol
>>> if view is not None: view.show()
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .data import COVALENT_RADII, ELEMENTS, ANIData

__all__ = [
    "ATOM_COLORS", "conformation", "draw_molecule", "find_bonds",
    "molecule_viewer", "to_xyz",
]

ATOM_COLORS = {"H": "#e8e8e8", "C": "#404040", "N": "#3050f8", "O": "#ff0d0d"}
"""CPK-style colours (the ones molecular viewers use)."""



def conformation(data: ANIData, index: int) -> tuple[list[str], np.ndarray]:
    """The element symbols and (atoms, 3) coordinates in Å of conformation ``index``, padding removed."""
    species = data.species[index]
    real = species >= 0
    return [ELEMENTS[int(s)] for s in species[real]], data.coordinates[index][real].numpy()


def _coordinates(coordinates: np.ndarray | torch.Tensor, n_atoms: int) -> np.ndarray:
    xyz = np.asarray(coordinates.detach().cpu() if isinstance(coordinates, torch.Tensor)
                     else coordinates, dtype=np.float64)
    if xyz.shape != (n_atoms, 3):
        raise ValueError(f"coordinates must have shape ({n_atoms}, 3) for {n_atoms} symbols, got {xyz.shape}.")
    return xyz


def to_xyz(symbols: Sequence[str], coordinates: np.ndarray | torch.Tensor, comment: str = "") -> str:
    """The conformation in XYZ format (the text molecular viewers read)."""
    xyz = _coordinates(coordinates, len(symbols))
    lines = [str(len(symbols)), comment.replace("\n", " ")]
    lines += [f"{s:<2} {x:12.6f} {y:12.6f} {z:12.6f}" for s, (x, y, z) in zip(symbols, xyz)]
    return "\n".join(lines) + "\n"


def find_bonds(symbols: Sequence[str], coordinates: np.ndarray | torch.Tensor,
               tolerance: float = 0.4) -> list[tuple[int, int]]:
    """Pairs of atoms closer than the sum of their covalent radii plus ``tolerance`` Å."""
    xyz = _coordinates(coordinates, len(symbols))
    bonds = []
    for i in range(len(symbols)):
        for j in range(i + 1, len(symbols)):
            limit = COVALENT_RADII[symbols[i]] + COVALENT_RADII[symbols[j]] + tolerance
            if np.linalg.norm(xyz[i] - xyz[j]) < limit:
                bonds.append((i, j))
    return bonds


def draw_molecule(ax, symbols: Sequence[str], coordinates: np.ndarray | torch.Tensor,
                  title: str | None = None, reach: float | None = None) -> None:
    """Draw a ball-and-stick picture of one conformation on a matplotlib 3D axes.

    The axes run from ``-reach`` to ``reach`` Å around the centre (default: fit the molecule);
    give the same ``reach`` to several drawings to show them at the same scale.
    """
    xyz = _coordinates(coordinates, len(symbols))
    xyz = xyz - xyz.mean(axis=0)
    for i, j in find_bonds(symbols, xyz):
        ax.plot(*zip(xyz[i], xyz[j]), color="#777777", linewidth=3, zorder=1)
    for element in dict.fromkeys(symbols):
        mask = np.array([s == element for s in symbols])
        size = 900 * COVALENT_RADII[element] ** 2 + 60
        ax.scatter(*xyz[mask].T, s=size, color=ATOM_COLORS[element], edgecolors="black",
                   linewidths=0.6, depthshade=False, label=element, zorder=2)
    if reach is None:
        reach = max(1.0, float(np.abs(xyz).max()) + 0.4)
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), zlim=(-reach, reach),
           xlabel="x / Å", ylabel="y / Å", zlabel="z / Å")
    ax.set_box_aspect((1, 1, 1))
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title)


def molecule_viewer(molecules: Sequence[tuple[Sequence[str], np.ndarray | torch.Tensor]],
                    width: int = 240, height: int = 240):
    """An interactive py3Dmol view with one panel per ``(symbols, coordinates)`` molecule.

    Returns ``None`` when py3Dmol is not installed (the static :func:`draw_molecule`
    pictures still work); call ``.show()`` on the result to display it.
    """
    try:
        import py3Dmol
    except ImportError:
        return None
    if not molecules:
        raise ValueError("Give at least one (symbols, coordinates) molecule to show.")
    columns = min(len(molecules), 4)
    rows = math.ceil(len(molecules) / columns)
    view = py3Dmol.view(width=width * columns, height=height * rows, viewergrid=(rows, columns))
    for k, (symbols, coordinates) in enumerate(molecules):
        cell = (k // columns, k % columns)
        view.addModel(to_xyz(symbols, coordinates), "xyz", viewer=cell)
        view.setStyle({"stick": {"radius": 0.15}, "sphere": {"scale": 0.25}}, viewer=cell)
        view.zoomTo(viewer=cell)
    return view
