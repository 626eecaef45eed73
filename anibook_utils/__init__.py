"""Helpers for the ANI Book.

Each module belongs to the chapter that introduces it:

- ``anibook_utils.data``: loading, splitting and batching ANI-1 data; elements and units (chapter 1)
- ``anibook_utils.viewer``: 3D views of conformations (chapter 1)
- ``anibook_utils.self_energy``: fitting and subtracting per-element self energies (chapter 2)
- ``anibook_utils.aev``: the course's AEV constants, AEVs from scratch and cached torchani AEVs (chapter 3)
- ``anibook_utils.models``: the masked ANI model and architecture specs (chapter 4)
- ``anibook_utils.training``, ``feeding``, ``history``: the training engine, how it feeds data and scores models, learning curves (chapter 4)
- ``anibook_utils.checkpoints``, ``potential``: checkpoints and trained potentials (chapter 4)
- ``anibook_utils.experiments``: experiment grids over the training engine, their results table (JSON) and learning curves (chapter 5)
- ``anibook_utils.torchani_example``: TorchANI's removed legacy tutorial (the course's recipe), the examples' shared loop (chapter 6)
- ``anibook_utils.torchani_current``: TorchANI 2.9's current training example on the book's split (chapter 6)
- ``anibook_utils.widgets``: the interactive retraining panel (chapter 7)
- ``anibook_utils.colab``: the setup cell that opens every chapter (chapter 7)
- ``anibook_utils.reference``: PySCF labels at the ANI-1 level, data-set generation (chapter 8)
- ``anibook_utils.sampling``: normal-mode sampling (chapter 8)
- ``anibook_utils.calculator``, ``dynamics``: the ASE calculator, geometry optimisation, vibrations and molecular dynamics (chapter 9)
- ``anibook_utils.streaming``, ``distributed``, ``cli_train``: streamed training from disk, torch.distributed, the command-line trainer (chapter 10)
- ``anibook_utils.ensemble``: ensembles of models, their disagreement as an uncertainty (chapter 11)
- ``anibook_utils.active_learning``: the candidate pool and the pool-based active-learning loop (chapter 11)
- ``anibook_utils.notebook``, ``timing``: metric records, glue and timings for the chapters (every chapter)
- ``anibook_utils.atomic``, ``cache``, ``torchani_shim``: all-or-nothing file writes, the array cache, TorchANI's import (every module)
"""

__version__ = "0.1.0"
