"""Experiment grids over the training engine: run, tabulate, save, reload (chapter 5).

An experiment is a list of :class:`Run` objects (architecture, optimizer, weight decay,
seed, epochs, training-set size...). :func:`run_grid` trains each with
:func:`anibook_utils.training.train`, one after the other, and returns an
:class:`ExperimentTable`: one row per run with its settings, the errors of the model the
validation set *selected* (the epoch with the lowest validation RMSE) on the training,
validation and test sets, parameter count and times, plus the per-epoch history. The
validation RMSE chose the model, so it is biased low; the test RMSE, on conformations no
choice has seen, is the number to report. The table is written to a JSON file after every
run, so an interrupted grid continues where it stopped and the figures can be redrawn
without training again.

>>> runs = make_grid(["course", "1x64"], ["adam", "sgd"], weight_decays=[0.0], seeds=[0, 1], epochs=20)
>>> len(runs)
8
>>> table = run_grid(runs, train_set, val_set, test_set, path="grid.json")   # doctest: +SKIP
>>> table.summary(by=["architecture", "optimizer"])                       # doctest: +SKIP

Optimizers are the engine's (``adam``, ``adamw``, ``sgd``, ``torchani``: AdamW on the
weights and SGD on the biases, as TorchANI's training example does) plus ``adam+sgd``:
Adam for the first ``switch_fraction`` (default half) of the epochs, then SGD (momentum
0.9, the same learning rate and weight decay) continuing the same model from its last Adam
state; the two phases are two :func:`train` calls, and the selected model is the best epoch
of either phase. :func:`equal_step_runs` makes learning-curve runs that take the same
number of optimizer steps on every training-set size; :meth:`ExperimentTable.ensemble_rmse`
scores the average prediction of several runs on the test set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import __version__
from .aev import COURSE_AEV_CONSTANTS, aev_length
from .atomic import atomic_write
from .cache import cache_dir
from .checkpoints import LATEST, load_file
from .data import ELEMENTS, HARTREE_TO_KCAL, ANIData
from .feeding import predict_energies
from .history import History
from .models import ArchitectureSpec, build_model
from .training import OPTIMIZERS, ConfigError, TrainConfig, train

__all__ = [
    "ADAM_SGD", "ARCHITECTURES", "RESULTS_FORMAT", "TABLE_COLUMNS", "ExperimentTable", "Run",
    "equal_step_runs", "make_grid", "results_path", "run_grid", "run_one", "subsample",
]

ADAM_SGD = "adam+sgd"
"""Adam for the first part of the epochs, then SGD: one reading of the course's "both Adam and SGD"."""

RESULTS_FORMAT = "anibook-experiments"
RESULTS_VERSION = 2


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
neurons per element. All CELU(0.1). The last two are the book's stand-ins for the course's
unspecified "architecture 2" and "architecture 3"."""

TABLE_COLUMNS: tuple[str, ...] = (
    "run_id", "group", "architecture", "hidden", "parameters", "optimizer", "weight_decay", "lr",
    "batch_size", "epochs", "steps", "seed", "train_size", "best_epoch", "train_rmse", "best_val_rmse",
    "test_rmse", "test_mae", "final_train_rmse", "final_val_rmse", "final_test_rmse", "epoch_time", "train_time", "wall_time",
    "stop_reason",
)
"""Columns of :meth:`ExperimentTable.frame` (RMSEs and MAEs in kcal/mol, times in seconds).

``train_rmse``, ``best_val_rmse``, ``test_rmse`` and ``test_mae`` are errors of the selected
model (the best validation epoch: early stopping); ``final_*`` are the last epoch's model's
(``final_train_rmse`` is the running mean over that epoch unless the run re-evaluates the
training set, ``options={"exact_train_metrics": True}``). ``test_mae``, ``test_rmse`` and
``final_test_rmse`` are None without a test set."""


@dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    ``architecture`` names the spec (a key of :data:`ARCHITECTURES` unless ``spec`` is
    given); ``optimizer`` is an engine optimizer or :data:`ADAM_SGD`; ``train_size`` trains
    on that many conformations of the training set (drawn with ``seed``; nested: a smaller
    size is a prefix of a larger one); ``options`` are further :class:`TrainConfig` fields.
    The remaining fields default to the course's settings (batch 2560, lr 1e-3, plain MSE).
    The history's training RMSE is the running mean over each epoch (cheap); pass
    ``options={"exact_train_metrics": True}`` to re-evaluate the training set after every
    epoch. The row's ``train_rmse`` is always the selected model, evaluated once at the end.
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
        if self.train_size is not None and (isinstance(self.train_size, bool) or not isinstance(self.train_size, int)
                                            or self.train_size < 1):
            raise ConfigError(f"train_size must be a positive integer or None, got {self.train_size!r}.")
        object.__setattr__(self, "options", dict(self.options))
        config = self.config()  # validates every field now, not in the middle of a grid
        if self.optimizer == ADAM_SGD and (config.standardize or config.schedule != "none"):
            raise ConfigError("adam+sgd continues one model through two train() calls, which supports neither "
                              "standardize=True nor a learning-rate schedule: drop those options, or use one "
                              "optimizer (e.g. 'torchani').")

    def config(self, optimizer: str | None = None, epochs: int | None = None) -> TrainConfig:
        """The engine configuration (``optimizer``/``epochs`` override, for the phases of adam+sgd)."""
        opt = optimizer or (self.optimizer if self.optimizer != ADAM_SGD else "adam")
        values = dict(epochs=epochs or self.epochs, batch_size=self.batch_size, optimizer=opt, lr=self.lr,
                      weight_decay=self.weight_decay, seed=self.seed)
        return TrainConfig.from_dict({**values, **self.options})

    @classmethod
    def from_config(cls, architecture: str, config: TrainConfig, **fields: Any) -> "Run":
        """A run with the settings of ``config`` (e.g. ``TrainConfig.fast()``); ``fields`` as :class:`Run`'s."""
        values = config.to_dict()
        own = {k: values.pop(k) for k in ("optimizer", "weight_decay", "seed", "epochs", "batch_size", "lr")}
        defaults = TrainConfig().to_dict()
        options = {k: v for k, v in values.items() if v != defaults[k]}
        return cls(architecture=architecture, **{**own, "options": options, **fields})

    @property
    def phase_epochs(self) -> tuple[int, int]:
        """Epochs of Adam and of SGD for adam+sgd (at least one each)."""
        first = min(max(1, round(self.epochs * self.switch_fraction)), self.epochs - 1)
        return first, self.epochs - first

    def steps(self, train_size: int) -> int:
        """Optimizer steps of the whole run on ``train_size`` conformations (``self.train_size`` if set)."""
        size = self.train_size or train_size
        return self.epochs * math.ceil(size / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["spec"] = self.spec.to_dict()
        values["options"] = dict(sorted(self.options.items()))
        return values

    def key(self, train_data: ANIData | None = None, val_data: ANIData | None = None,
            test_data: ANIData | None = None) -> str:
        """A stable id of the run: its settings, the data sets and the engine's code."""
        parts = {"run": self.to_dict(), "code": _code_fingerprint(),
                 "data": [d.fingerprint() if d is not None else None for d in (train_data, val_data, test_data)]}
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


def equal_step_runs(sizes: Iterable[int], steps: int, batch_size: int, seeds: Iterable[int] = (0, 1, 2),
                    architecture: str = "course", config: TrainConfig | None = None,
                    group: str = "learning_curve", **changes: Any) -> list[Run]:
    """Runs that take exactly ``steps`` optimizer steps of ``batch_size`` on every training-set size.

    Each size trains for ``steps / batches_per_epoch`` epochs, so every run sees the same number
    of conformations (``steps * batch_size``), whatever its training set: a learning curve
    that compares data, not training length. ``config`` defaults to the book's recipe
    (``TrainConfig.fast()``); ``changes`` are further :class:`TrainConfig` fields (e.g.
    ``weight_decay=0.1``). Sizes that are not multiples of ``batch_size``, or whose batches per
    epoch do not divide ``steps``, are refused.
    """
    base = (config or TrainConfig.fast()).replace(batch_size=batch_size, **changes)
    runs = []
    for size in sizes:
        per_epoch = size // batch_size
        if per_epoch < 1 or size % batch_size or steps % per_epoch:
            raise ConfigError(f"{size} conformations in batches of {batch_size} do not make whole epochs of equal "
                              f"batches that divide {steps} steps: use sizes that are multiples of the batch size, "
                              "and a step count divisible by every size's batches per epoch.")
        runs += [Run.from_config(architecture, base.replace(epochs=steps // per_epoch), train_size=size,
                                 seed=seed, group=group) for seed in seeds]
    return runs


def subsample(data: ANIData, size: int, seed: int = 0) -> ANIData:
    """``size`` conformations of ``data`` chosen at random with ``seed`` (nested across sizes)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(data):
        raise ValueError(f"size must be an integer between 1 and {len(data)} (the conformations available), "
                         f"got {size!r}.")
    if size == len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:size].sort().values)


@dataclass
class _Trained:
    """What a run leaves behind: the selected model (best validation epoch), the last epoch's
    model, and how they got there."""

    model: torch.nn.Module
    last_model: torch.nn.Module
    self_energies: torch.Tensor
    history: History
    train_time: float
    stop_reason: str


def _train_adam_then_sgd(run: Run, train_data: ANIData, val_data: ANIData, progress: bool) -> _Trained:
    """Two train() calls on one model: Adam, then SGD from Adam's last weights; the best epoch of
    either phase is the selected model."""
    first, second = run.phase_epochs
    model = build_model(run.spec, aev_dim=aev_length(COURSE_AEV_CONSTANTS), seed=run.seed)
    best: dict[str, Any] = {"rmse": math.inf, "state": None}

    def keep_best(record: dict[str, Any]) -> None:
        if record["val_rmse"] < best["rmse"]:
            best.update(rmse=record["val_rmse"], state=copy.deepcopy(model.state_dict()))

    phase1 = train(model, train_data, val_data, run.config("adam", first).replace(restore_best=False),
                   progress=progress, callback=keep_best)
    phase2 = train(model, train_data, val_data, run.config("sgd", second).replace(restore_best=False),
                   progress=progress, callback=keep_best, self_energies=phase1.self_energies)
    selected = copy.deepcopy(model)
    if best["state"] is not None:
        selected.load_state_dict(best["state"])
    records = [{**r, "phase": "adam"} for r in phase1.history]
    offset_epoch, offset_time = len(phase1.history), phase1.train_time
    records += [{**r, "phase": "sgd", "epoch": r["epoch"] + offset_epoch, "time": r["time"] + offset_time}
                for r in phase2.history]
    stop = phase2.stop_reason if phase2.stop_reason != "completed" else phase1.stop_reason
    return _Trained(selected.eval(), model.eval(), phase1.self_energies, History(records),
                    phase1.train_time + phase2.train_time, stop)


def _train(run: Run, train_data: ANIData, val_data: ANIData, progress: bool) -> _Trained:
    """Train ``run``; the engine keeps the last epoch's model and its checkpoint the best one."""
    if run.optimizer == ADAM_SGD:
        return _train_adam_then_sgd(run, train_data, val_data, progress)
    config = run.config()
    with tempfile.TemporaryDirectory(prefix="anibook-run-") as folder:
        result = train(run.spec, train_data, val_data,
                       config.replace(restore_best=False, checkpoint_every=config.epochs),
                       checkpoint_dir=folder, progress=progress)
        best = load_file(Path(folder) / LATEST)["best"]
    selected = copy.deepcopy(result.model)
    if best is not None:
        selected.load_state_dict(best["model"])
    return _Trained(selected.eval(), result.model, result.self_energies, result.history, result.train_time,
                    result.stop_reason)


def _errors_kcal(model: torch.nn.Module, self_energies: torch.Tensor, data: ANIData) -> torch.Tensor:
    """Predicted minus reference energies of ``data`` in kcal/mol (float64)."""
    return (predict_energies(model, data, self_energies) - data.energies.double()) * HARTREE_TO_KCAL


def _rmse(errors: torch.Tensor) -> float:
    return float(errors.pow(2).mean().sqrt())


def _test_scores(trained: _Trained, test_data: ANIData | None) -> dict[str, Any]:
    """Test errors of the selected and of the last model (None without a test set)."""
    if test_data is None:
        return dict(test_rmse=None, test_mae=None, final_test_rmse=None, test_set=None, test_errors=None)
    selected = _errors_kcal(trained.model, trained.self_energies, test_data)
    last = _errors_kcal(trained.last_model, trained.self_energies, test_data)
    return dict(test_rmse=_rmse(selected), test_mae=float(selected.abs().mean()), final_test_rmse=_rmse(last),
                test_set=test_data.fingerprint(), test_errors=[round(float(e), 5) for e in selected])


def run_one(run: Run, train_data: ANIData, val_data: ANIData, test_data: ANIData | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Train one :class:`Run` and return its table row (see :data:`TABLE_COLUMNS`).

    The row also holds ``history`` (the epoch records), ``run`` (the settings) and, with a
    test set, ``test_errors``: the selected model's error on each test conformation
    (kcal/mol), which :meth:`ExperimentTable.ensemble_rmse` averages over runs.
    """
    started = time.perf_counter()
    data = subsample(train_data, run.train_size, seed=run.seed) if run.train_size else train_data
    trained = _train(run, data, val_data, progress)
    history = trained.history
    best, last = history.best("val_rmse"), history[-1]
    row = {
        "run_id": run.key(train_data, val_data, test_data), "code": _code_fingerprint(), "group": run.group,
        "architecture": run.architecture, "hidden": run.spec.label(), "parameters": run.spec.num_parameters(),
        "optimizer": run.optimizer, "weight_decay": run.weight_decay, "lr": run.lr, "batch_size": run.batch_size,
        "epochs": len(history), "steps": len(history) * math.ceil(len(data) / run.batch_size), "seed": run.seed,
        "train_size": len(data), "best_epoch": int(best["epoch"]),
        "train_rmse": _rmse(_errors_kcal(trained.model, trained.self_energies, data)),
        "best_val_rmse": float(best["val_rmse"]),
        "final_train_rmse": float(last["train_rmse"]), "final_val_rmse": float(last["val_rmse"]),
        **_test_scores(trained, test_data),
        "epoch_time": trained.train_time / max(1, len(history)), "train_time": trained.train_time,
        "stop_reason": trained.stop_reason, "run": run.to_dict(), "history": history.to_list(),
    }
    row["wall_time"] = time.perf_counter() - started
    return row


class ExperimentTable:
    """Rows of finished runs; :meth:`frame` gives the tidy table, :meth:`history` the curves."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        groups = sorted({r["group"] for r in self.rows})
        return f"ExperimentTable({len(self)} runs, groups {groups})"

    def frame(self, columns: Sequence[str] | None = None):
        """A pandas DataFrame, one row per run, with ``columns`` (default :data:`TABLE_COLUMNS`)."""
        import pandas as pd

        columns = list(columns or TABLE_COLUMNS)
        unknown = [c for c in columns if c not in TABLE_COLUMNS]
        if unknown:
            raise KeyError(f"Unknown column(s) {unknown}: choose from {list(TABLE_COLUMNS)}.")
        return pd.DataFrame([{c: r.get(c) for c in columns} for r in self.rows], columns=columns)

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
                metric: str = "test_rmse"):
        """Mean, standard deviation, standard error, min, max and count of ``metric`` per group."""
        frame = self.frame()
        if frame[metric].isna().any():
            raise ValueError(f"Some runs have no {metric} (trained without a test set?): pass test_data to run_grid.")
        stats = frame.groupby(list(by), sort=False)[metric].agg(["mean", "std", "min", "max", "count"])
        stats.insert(2, "sem", stats["std"] / stats["count"].pow(0.5))
        return stats

    def ensemble_rmse(self, run_ids: Iterable[str] | None = None) -> float:
        """Test RMSE (kcal/mol) of the average prediction of the given runs (default: all rows).

        Averaging the models' energies averages their errors, conformation by conformation; the
        runs must have been scored on the same test set.
        """
        rows = self.rows if run_ids is None else [self._row(i) for i in run_ids]
        if not rows:
            raise ValueError("An ensemble needs at least one run.")
        if any(r.get("test_errors") is None for r in rows) or len({r["test_set"] for r in rows}) != 1:
            raise ValueError("Every run of an ensemble needs test errors on one and the same test set: "
                             "run them with the same test_data.")
        errors = torch.tensor([r["test_errors"] for r in rows], dtype=torch.float64)
        return _rmse(errors.mean(dim=0))

    def _row(self, run_id: str) -> dict[str, Any]:
        for r in self.rows:
            if r["run_id"] == run_id:
                return r
        raise KeyError(f"No run {run_id!r} in this table.")

    def to_json(self) -> dict[str, Any]:
        return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "rows": self.rows}

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


def _stored_rows(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """Rows of ``path`` that this code could have produced (older code's rows are dropped)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        rows = ExperimentTable.load(path).rows
    except ValueError:
        return {}
    code = _code_fingerprint()
    return {r["run_id"]: r for r in rows if r.get("code") == code}


def run_grid(runs: Sequence[Run], train_data: ANIData, val_data: ANIData, test_data: ANIData | None = None,
             path: str | os.PathLike | None = None, reuse: bool = True, progress: bool = True,
             callback: Callable[[dict[str, Any]], Any] | None = None) -> ExperimentTable:
    """Train every run (skipping those already in ``path`` when ``reuse``) and return their table.

    With ``reuse=False`` every run trains again and replaces its stored row (other rows stay).

    The validation set selects each run's model; the test set (recommended) scores it. The
    table at ``path`` is rewritten after each run, so an interrupted grid resumes; a stored
    run is reused only for the same settings, the same three data sets and the same code.
    Rows come back in the order of ``runs``; ``callback(row)`` is called after each new run.
    """
    stored = _stored_rows(path)
    keys = [run.key(train_data, val_data, test_data) for run in runs]
    if len(set(keys)) != len(keys):
        raise ConfigError("The grid holds the same run twice: give the duplicates different seeds or settings.")
    todo = [(run, key) for run, key in zip(runs, keys) if not reuse or key not in stored]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run")
    try:
        for run, key in todo:
            row = run_one(run, train_data, val_data, test_data)
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
