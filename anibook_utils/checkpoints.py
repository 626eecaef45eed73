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
from pathlib import Path
from typing import Any, Mapping

import torch

from .atomic import atomic_write, remove_stale_temporaries

__all__ = [
    "BEST", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "CheckpointMismatchError", "LATEST",
    "atomic_save", "check_architecture", "check_keys", "load_file", "save_checkpoint",
]

CHECKPOINT_FORMAT = "anibook-checkpoint"
CHECKPOINT_VERSION = 2
"""2: the training and validation data's fingerprints are recorded (``payload["data"]``)."""
LATEST = "latest.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, unreadable or of another kind)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint written for another architecture than the model it is loaded into."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` all or nothing (:func:`~anibook_utils.atomic.atomic_write`)."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_checkpoint(folder: str | os.PathLike, payload: Mapping[str, Any], improved: bool) -> None:
    """Write ``latest.pt`` (and ``best.pt`` when ``improved``) into ``folder``, each atomically.

    ``best.pt`` goes first, so a kill between the two writes leaves ``latest.pt`` one save
    behind, never ahead of a best model it does not know; temporary files a killed writer
    left behind are removed first.
    """
    folder = Path(folder)
    for name in (LATEST, BEST):
        remove_stale_temporaries(folder / name)
    if improved and payload.get("spec") is not None:
        atomic_save({**payload, "optimizers": [], "schedulers": []}, folder / BEST)
    atomic_save(payload, folder / LATEST)


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
            f"Could not read {path.name} as an anibook checkpoint: {_why_unreadable(exc)}. "
            "Delete it and train again (or load the file you meant)."
        ) from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(payload, dict) or payload.get("format") not in kinds:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an anibook file of kind {kinds} (found {found!r}).")
    return payload


def _why_unreadable(exc: Exception) -> str:
    """torch.load's reason in a few words, without its advice to disable ``weights_only``
    (loading untrusted pickles can run arbitrary code; the book never does)."""
    message = str(exc)
    if "weights_only" in message or "Unpickl" in message:
        return "it holds Python objects other than tensors and plain containers, which are never unpickled here"
    if "zip archive" in message or "central directory" in message or isinstance(exc, EOFError):
        return "it is truncated or not a PyTorch file"
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"


def check_keys(payload: Mapping[str, Any], keys: tuple[str, ...], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` if ``payload`` (loaded from ``path``) lacks any of ``keys``."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise CheckpointError(
            f"{Path(path).name} lacks {missing}: it was not written whole by this version of anibook_utils "
            "(or it was edited). Load the file train(checkpoint_dir=...) or save_potential wrote, or train again.")


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
