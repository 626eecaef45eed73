"""The one place the package imports TorchANI (every module that uses it).

torchani 2.9 warns at import that its optional compiled extensions are absent ("The
extensions ... are not installed"), which they need not be for this book. The warning is
silenced here, once, and the pieces the package uses are re-exported.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The extensions")
    import torchani
    from torchani.aev import AEVComputer
    from torchani.nn import ANINetworks, AtomicNetwork
    from torchani.sae import SelfEnergy
    from torchani.units import hartree2kcalpermol

__all__ = ["AEVComputer", "ANINetworks", "AtomicNetwork", "SelfEnergy", "hartree2kcalpermol", "torchani"]
