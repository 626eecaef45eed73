"""Training checkpoints: atomic writes, safe loads and architecture checks (chapter 4).

The training engine (:mod:`anibook_utils.training`) writes two files to its checkpoint
folder after every epoch: ``latest.pt`` (everything needed to resume: model, optimizer,
scheduler, epoch, history, random-number-generator states, the best model so far) and
``best.pt`` (the best model so far, loadable as a potential). Writes go to a temporary
file in the same folder that is then renamed over the old one (``os.replace``), so a
crash or Ctrl-C mid-write never leaves a truncated checkpoint. Files are loaded with
``torch.load(weights_only=True)``: plain tensors and containers, no pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "BEST", "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointMismatchError", "LATEST",
    "atomic_save", "check_architecture", "load_file",
]

CHECKPOINT_FORMAT = "anibook-checkpoint"
LATEST = "latest.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, unreadable or of another kind)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint written for another architecture than the model it is loaded into."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace`` (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_file(path: str | os.PathLike, kind: str | tuple[str, ...] = CHECKPOINT_FORMAT,
              map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an anibook ``.pt`` file and check that its ``format`` is ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}: train with checkpoint_dir=... first.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign or pickled-code files
        raise CheckpointError(
            f"Could not read {path} as an anibook checkpoint ({type(exc).__name__}: {exc}). "
            "Delete it and train again."
        ) from exc
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(payload, dict) or payload.get("format") not in kinds:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an anibook file of kind {kinds} (found {found!r}).")
    return payload


def check_architecture(payload: Mapping[str, Any], spec_dict: Mapping[str, Any] | None, aev_dim: int,
                       source: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``payload`` was written for this architecture.

    ``spec_dict`` is :meth:`ArchitectureSpec.to_dict` of the model (None for a model without a spec).
    """
    saved_spec, saved_dim = payload.get("spec"), payload.get("aev_dim")
    spec_dict = dict(spec_dict) if spec_dict is not None else None
    if saved_spec != spec_dict or saved_dim != aev_dim:
        raise CheckpointMismatchError(
            f"{source} was written for the architecture {saved_spec} with {saved_dim} AEV features, "
            f"but the model has {spec_dict} with {aev_dim}. Build the model from the checkpoint's "
            "spec (ArchitectureSpec.from_dict(checkpoint['spec'])) or use another checkpoint_dir "
            "for the new architecture."
        )
