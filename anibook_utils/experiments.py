"""Experiment grids over the training engine: run, tabulate, save, reload (chapter 5).

An experiment is a list of :class:`Run` objects (architecture, optimizer, weight decay,
seed, epochs, training-set size...). :func:`run_grid` trains each with
:func:`anibook_utils.training.train`, one after the other, and returns an
:class:`ExperimentTable`: one row per run with its settings, training and validation RMSE,
parameter count and times, plus the per-epoch history. The table is written to a JSON
file after every run, so an interrupted grid continues where it stopped and the figures
can be redrawn without training again.

>>> runs = make_grid(["course", "1x64"], ["adam", "sgd"], weight_decays=[0.0], seeds=[0, 1], epochs=20)
>>> len(runs)
8
>>> table = run_grid(runs, train_set, val_set, path="grid.json")   # doctest: +SKIP
>>> table.frame().groupby(["architecture", "optimizer"]).best_val_rmse.agg(["mean", "std"])  # doctest: +SKIP

Optimizers are the engine's (``adam``, ``adamw``, ``sgd``, ``torchani``) plus the course's
``adam+sgd``: Adam for the first ``switch_fraction`` (default half) of the epochs, then
SGD (momentum 0.9, the same learning rate and weight decay) continuing the same model from
its last Adam state; the two phases are two :func:`train` calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import __version__
from .atomic import atomic_write
from .cache import cache_dir
from .data import ELEMENTS, ANIData
from .history import History
from .models import ArchitectureSpec
from .training import OPTIMIZERS, ConfigError, TrainConfig, train

__all__ = [
    "ADAM_SGD", "ARCHITECTURES", "RESULTS_FORMAT", "TABLE_COLUMNS", "ExperimentTable", "Run",
    "make_grid", "results_path", "run_grid", "run_one", "subsample",
]

ADAM_SGD = "adam+sgd"
"""The course's combined optimizer: Adam for the first part of the epochs, then SGD."""

RESULTS_FORMAT = "anibook-experiments"


def _code_fingerprint() -> str:
    """A hash of the engine's source, so stored results are not reused after it changes."""
    digest = hashlib.sha256(__version__.encode())
    for name in ("training.py", "feeding.py", "models.py", "aev.py", "self_energy.py", "experiments.py"):
        path = Path(__file__).with_name(name)
        digest.update(path.read_bytes() if path.is_file() else name.encode())
    return digest.hexdigest()[:16]


def _scaled(spec: ArchitectureSpec, factor: float) -> ArchitectureSpec:
    return ArchitectureSpec({e: tuple(max(1, round(w * factor)) for w in ws) for e, ws in spec.hidden.items()},
                            spec.activation, spec.celu_alpha)


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "course": ArchitectureSpec.course(),
    "half": _scaled(ArchitectureSpec.course(), 0.5),
    "1x64": ArchitectureSpec({e: (64,) for e in ELEMENTS}),
}
"""Named architectures of chapter 5: the course's networks (H: 160-128-96, C: 144-112-96,
N and O: 128-112-96), the same three layers at half the width, and one hidden layer of 64
neurons per element. All CELU(0.1)."""

TABLE_COLUMNS: tuple[str, ...] = (
    "run_id", "group", "architecture", "hidden", "parameters", "optimizer", "weight_decay", "lr",
    "batch_size", "epochs", "seed", "train_size", "best_epoch", "best_val_rmse", "final_val_rmse",
    "final_train_rmse", "train_rmse_at_best", "epoch_time", "train_time", "wall_time", "stop_reason",
)
"""Columns of :meth:`ExperimentTable.frame` (RMSEs in kcal/mol, times in seconds)."""


@dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    ``architecture`` names the spec (a key of :data:`ARCHITECTURES` unless ``spec`` is
    given); ``optimizer`` is an engine optimizer or :data:`ADAM_SGD`; ``train_size`` trains
    on that many conformations of the training set (drawn with ``seed``; nested: a smaller
    size is a prefix of a larger one); ``options`` are further :class:`TrainConfig` fields.
    The remaining fields default to the course's settings (batch 2560, lr 1e-3, plain MSE).
    Training-set RMSEs are re-evaluated after every epoch (``exact_train_metrics``).
    """

    architecture: str
    optimizer: str
    weight_decay: float = 0.0
    seed: int = 0
    epochs: int = 20
    batch_size: int = 2560
    lr: float = 1e-3
    train_size: int | None = None
    group: str = "grid"
    switch_fraction: float = 0.5
    spec: ArchitectureSpec | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spec is None:
            if self.architecture not in ARCHITECTURES:
                raise ConfigError(f"Unknown architecture {self.architecture!r}: use one of {sorted(ARCHITECTURES)} "
                                  "or pass spec=ArchitectureSpec(...).")
            object.__setattr__(self, "spec", ARCHITECTURES[self.architecture])
        if self.optimizer not in (*OPTIMIZERS, ADAM_SGD):
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}: choose one of {(*OPTIMIZERS, ADAM_SGD)}.")
        if not 0 < self.switch_fraction < 1:
            raise ConfigError(f"switch_fraction must lie strictly between 0 and 1, got {self.switch_fraction}.")
        if self.optimizer == ADAM_SGD and self.epochs < 2:
            raise ConfigError("adam+sgd needs at least 2 epochs (one per phase).")
        if self.train_size is not None and (isinstance(self.train_size, bool) or self.train_size < 1):
            raise ConfigError(f"train_size must be a positive integer or None, got {self.train_size!r}.")
        object.__setattr__(self, "options", dict(self.options))
        self.config()  # validates every field now, not in the middle of a grid

    def config(self, optimizer: str | None = None, epochs: int | None = None) -> TrainConfig:
        """The engine configuration (``optimizer``/``epochs`` override, for the phases of adam+sgd)."""
        opt = optimizer or (self.optimizer if self.optimizer != ADAM_SGD else "adam")
        values = dict(epochs=epochs or self.epochs, batch_size=self.batch_size, optimizer=opt, lr=self.lr,
                      weight_decay=self.weight_decay, seed=self.seed, exact_train_metrics=True)
        return TrainConfig.from_dict({**values, **self.options})

    @classmethod
    def from_config(cls, architecture: str, config: TrainConfig, **fields: Any) -> "Run":
        """A run with the settings of ``config`` (e.g. ``TrainConfig.fast()``); ``fields`` as :class:`Run`'s."""
        values = config.to_dict()
        own = {k: values.pop(k) for k in ("optimizer", "weight_decay", "seed", "epochs", "batch_size", "lr")}
        values.pop("exact_train_metrics")
        defaults = TrainConfig().to_dict()
        options = {k: v for k, v in values.items() if v != defaults[k]}
        return cls(architecture=architecture, **{**own, "options": options, **fields})

    @property
    def phase_epochs(self) -> tuple[int, int]:
        """Epochs of Adam and of SGD for adam+sgd (at least one each)."""
        first = min(max(1, round(self.epochs * self.switch_fraction)), self.epochs - 1)
        return first, self.epochs - first

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["spec"] = self.spec.to_dict()
        values["options"] = dict(sorted(self.options.items()))
        return values

    def key(self, train_data: ANIData | None = None, val_data: ANIData | None = None) -> str:
        """A stable id of the run (its settings, the data and the package version)."""
        parts = {"run": self.to_dict(), "code": _code_fingerprint(),
                 "data": [d.fingerprint() for d in (train_data, val_data) if d is not None]}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_grid(architectures: Iterable[str] | Mapping[str, ArchitectureSpec], optimizers: Iterable[str],
              weight_decays: Iterable[float] = (0.0,), seeds: Iterable[int] = (0, 1, 2), group: str = "grid",
              **common: Any) -> list[Run]:
    """Every combination of the given settings (architecture outermost, seed innermost).

    ``architectures`` are names of :data:`ARCHITECTURES` or a ``{name: spec}`` mapping;
    ``common`` are further :class:`Run` fields (``epochs``, ``batch_size``, ``lr``, ...).
    """
    specs = (dict(architectures) if isinstance(architectures, Mapping)
             else {name: None for name in architectures})
    return [Run(architecture=name, spec=spec, optimizer=opt, weight_decay=float(wd), seed=int(seed),
                group=group, **common)
            for name, spec in specs.items() for opt in optimizers for wd in weight_decays for seed in seeds]


def subsample(data: ANIData, size: int, seed: int = 0) -> ANIData:
    """``size`` conformations of ``data`` chosen at random with ``seed`` (nested across sizes)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(data):
        raise ValueError(f"size must be an integer between 1 and {len(data)} (the conformations available), "
                         f"got {size!r}.")
    if size == len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:size].sort().values)


def _train_adam_then_sgd(run: Run, train_data: ANIData, val_data: ANIData, progress: bool):
    """Two train() calls on the same model: Adam, then SGD continuing from Adam's last weights."""
    first, second = run.phase_epochs
    phase1 = train(run.spec, train_data, val_data, run.config("adam", first).replace(restore_best=False),
                   progress=progress)
    phase1.model.train()
    phase2 = train(phase1.model, train_data, val_data, run.config("sgd", second), progress=progress,
                   self_energies=phase1.self_energies)
    records = [{**r, "phase": "adam"} for r in phase1.history]
    offset_epoch, offset_time = len(phase1.history), phase1.train_time
    records += [{**r, "phase": "sgd", "epoch": r["epoch"] + offset_epoch, "time": r["time"] + offset_time}
                for r in phase2.history]
    return (History(records), phase1.train_time + phase2.train_time,
            phase2.stop_reason if phase2.stop_reason != "completed" else phase1.stop_reason)


def run_one(run: Run, train_data: ANIData, val_data: ANIData, progress: bool = False) -> dict[str, Any]:
    """Train one :class:`Run` and return its table row (with ``history``, a list of epoch records)."""
    started = time.perf_counter()
    data = subsample(train_data, run.train_size, seed=run.seed) if run.train_size else train_data
    if run.optimizer == ADAM_SGD:
        history, train_time, stop_reason = _train_adam_then_sgd(run, data, val_data, progress)
    else:
        result = train(run.spec, data, val_data, run.config(), progress=progress)
        history, train_time, stop_reason = result.history, result.train_time, result.stop_reason
    best = history.best("val_rmse")
    last = history[-1]
    return {
        "run_id": run.key(train_data, val_data), "group": run.group, "architecture": run.architecture,
        "hidden": run.spec.label(), "parameters": run.spec.num_parameters(),
        "optimizer": run.optimizer, "weight_decay": run.weight_decay, "lr": run.lr,
        "batch_size": run.batch_size, "epochs": len(history), "seed": run.seed, "train_size": len(data),
        "best_epoch": int(best["epoch"]), "best_val_rmse": float(best["val_rmse"]),
        "final_val_rmse": float(last["val_rmse"]), "final_train_rmse": float(last["train_rmse"]),
        "train_rmse_at_best": float(best["train_rmse"]),
        "epoch_time": train_time / max(1, len(history)), "train_time": train_time,
        "wall_time": time.perf_counter() - started, "stop_reason": stop_reason,
        "run": run.to_dict(), "history": history.to_list(),
    }


class ExperimentTable:
    """Rows of finished runs; :meth:`frame` gives the tidy table, :meth:`history` the curves."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        groups = sorted({r["group"] for r in self.rows})
        return f"ExperimentTable({len(self)} runs, groups {groups})"

    def frame(self):
        """A pandas DataFrame with the columns :data:`TABLE_COLUMNS`, one row per run."""
        import pandas as pd

        return pd.DataFrame([{c: r.get(c) for c in TABLE_COLUMNS} for r in self.rows], columns=list(TABLE_COLUMNS))

    def select(self, **equal: Any) -> "ExperimentTable":
        """The rows whose columns equal the given values, e.g. ``select(group="grid", optimizer="adam")``."""
        return ExperimentTable(r for r in self.rows if all(r.get(k) == v for k, v in equal.items()))

    def history(self, run_id: str) -> History:
        """The per-epoch :class:`History` of one run."""
        for r in self.rows:
            if r["run_id"] == run_id:
                return History(r["history"])
        raise KeyError(f"No run {run_id!r} in this table.")

    def summary(self, by: Sequence[str] = ("architecture", "optimizer", "weight_decay"),
                metric: str = "best_val_rmse"):
        """Mean, standard deviation, standard error, min, max and count of ``metric`` per group."""
        frame = self.frame()
        stats = frame.groupby(list(by), sort=False)[metric].agg(["mean", "std", "min", "max", "count"])
        stats.insert(2, "sem", stats["std"] / stats["count"].pow(0.5))
        return stats

    def to_json(self) -> dict[str, Any]:
        return {"format": RESULTS_FORMAT, "version": 1, "rows": self.rows}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table (rows and histories) to ``path`` as JSON, atomically."""
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), allow_nan=True))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperimentTable":
        """Read a table written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No experiment results at {path}: run the grid first (run_grid(..., path=...)).")
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it and run the grid again.") from exc
        if not isinstance(payload, dict) or payload.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{path} is not an anibook experiment table (no format {RESULTS_FORMAT!r}).")
        return cls(payload["rows"])


def results_path(name: str) -> Path:
    """Where a chapter's experiment table lives: ``<cache>/experiments/<name>.json``."""
    return cache_dir() / "experiments" / f"{name}.json"


def run_grid(runs: Sequence[Run], train_data: ANIData, val_data: ANIData, path: str | os.PathLike | None = None,
             reuse: bool = True, progress: bool = True,
             callback: Callable[[dict[str, Any]], Any] | None = None) -> ExperimentTable:
    """Train every run (skipping those already in ``path`` when ``reuse``) and return their table.

    The table at ``path`` is rewritten after each run, so an interrupted grid resumes.
    Rows come back in the order of ``runs``; ``callback(row)`` is called after each new run.
    """
    stored: dict[str, dict[str, Any]] = {}
    if path is not None and reuse and Path(path).is_file():
        try:
            stored = {r["run_id"]: r for r in ExperimentTable.load(path).rows}
        except ValueError:
            stored = {}
    keys = [run.key(train_data, val_data) for run in runs]
    if len(set(keys)) != len(keys):
        raise ConfigError("The grid holds the same run twice: give the duplicates different seeds or settings.")
    todo = [(run, key) for run, key in zip(runs, keys) if key not in stored]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run")
    try:
        for run, key in todo:
            row = run_one(run, train_data, val_data)
            stored[key] = row
            if path is not None:
                ExperimentTable(stored.values()).save(path)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(last=f"{run.architecture}/{run.optimizer}: {row['best_val_rmse']:.2f}")
            if callback is not None:
                callback(row)
    finally:
        if bar is not None:
            bar.close()
    return ExperimentTable(stored[k] for k in keys)
