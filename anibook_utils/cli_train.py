"""The command-line trainer: ``python -m anibook_utils train --config run.toml`` (chapter 10).

One TOML file describes a run; the same command trains in one process or, under
``torchrun --nproc_per_node=N`` (and ``srun torchrun ...`` on a cluster), in N processes with
``DistributedDataParallel`` (:mod:`anibook_utils.distributed`: ``gloo`` on CPUs, ``nccl`` on
GPUs). Rank 0 alone prints the per-epoch log, writes the checkpoints (``latest.pt``,
``best.pt``), ``log.jsonl``, the trained ``potential.pt`` and ``summary.json`` with the final
test RMSE. Ctrl-C or SIGTERM on any rank stops every rank after the current batch; running the
same command again continues from ``latest.pt`` (``resume = true``, the default).

.. code-block:: toml

    [data]
    name = "ani_gdb_s01"        # a registry name (python -m anibook_utils list-data), or
    # paths = ["a.h5", "b.h5"]  # ANI-1-layout files, or
    # torchani = "ANI1x"        # TorchANI's data set, converted once to the ANI-1 layout
    stream = false              # true: batches read from disk, AEVs computed in the step
    split = [0.8, 0.1, 0.1]     # training / validation / test (the book's split)
    split_seed = 0
    # conformations = 2000      # a random subset, for a quick try (in memory only)
    # chunk = 32                # streaming: consecutive conformations read at once

    [model]                     # ArchitectureSpec fields (default: the course's networks)
    hidden = { H = [64, 32], C = [64, 32], N = [64, 32], O = [64, 32] }

    [train]                     # TrainConfig fields, on top of a preset: "fast" (the book's
    preset = "fast"             # recipe), "course" or "default"
    epochs = 40

    [run]
    checkpoint_dir = "runs/s01" # relative paths are relative to the current folder
    resume = true

``--set train.epochs=2`` (repeatable) overrides one value, written as in TOML.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .atomic import atomic_write
from .checkpoints import CheckpointError
from .data import BOOK_SPLIT, DataError, load_dataset, locate_dataset, split_dataset
from .distributed import Distributed
from .models import ArchitectureError, ArchitectureSpec
from .streaming import TORCHANI_DATASETS, H5Stream, convert_torchani, evaluate_stream, fetch_torchani
from .training import ConfigError, TrainConfig, TrainResult, resolve_device, train

__all__ = ["CommandRun", "DataSection", "RunConfig", "TrainerConfigError", "command", "launch", "load_parts",
           "read_config", "run"]

SECTIONS = ("data", "model", "train", "run")
DATA_KEYS = ("name", "paths", "torchani", "lot", "stream", "split", "split_seed", "conformations", "chunk")
RUN_KEYS = ("checkpoint_dir", "resume")
PRESETS: dict[str, Callable[..., TrainConfig]] = {"fast": TrainConfig.fast, "course": TrainConfig.course,
                                                   "default": TrainConfig}
EXIT_BAD_CONFIG = 2


class TrainerConfigError(ValueError):
    """A run file that cannot run (the message names the key and what to write instead)."""


@dataclass
class DataSection:
    """Where the conformations come from and how they are split (the ``[data]`` table)."""

    name: str | None = None
    paths: list[str] | None = None
    torchani: str | None = None
    lot: str = "wb97x-631gd"
    stream: bool = False
    split: tuple[float, ...] = BOOK_SPLIT
    split_seed: int = 0
    conformations: int | None = None
    chunk: int = 32

    def describe(self) -> str:
        source = self.name or self.torchani or ", ".join(Path(p).name for p in self.paths or ())
        return f"{source} ({'streamed from disk' if self.stream else 'in memory'})"


@dataclass
class RunConfig:
    """A whole run: data, architecture, training settings, checkpoint folder."""

    data: DataSection
    spec: ArchitectureSpec
    train: TrainConfig
    checkpoint_dir: str
    resume: bool = True
    overrides: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Reading and checking the run file
# --------------------------------------------------------------------------------------


def _unknown(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise TrainerConfigError(f"Unknown key(s) {extra} in [{where}]; allowed: {list(allowed)}.")


def _override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value in TOML syntax; a bare word is a string)."""
    key, sep, text = assignment.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or section not in SECTIONS or not name:
        raise TrainerConfigError(f"--set {assignment!r}: write SECTION.KEY=VALUE with SECTION one of {SECTIONS}, "
                                 "e.g. --set train.epochs=2.")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    raw.setdefault(section, {})[name] = value


def _data_section(table: Mapping[str, Any]) -> DataSection:
    _unknown(table, DATA_KEYS, "data")
    sources = [k for k in ("name", "paths", "torchani") if table.get(k) is not None]
    if len(sources) != 1:
        raise TrainerConfigError("[data] needs exactly one of name = \"ani_gdb_s01\" (a registry name), "
                                 f"paths = [\"file.h5\", ...] or torchani = \"ANI1x\"; got {sources or 'none'}.")
    values = dict(table)
    if isinstance(values.get("paths"), str):
        values["paths"] = [values["paths"]]
    if "split" in values:
        values["split"] = tuple(values["split"]) if isinstance(values["split"], list) else values["split"]
    data = DataSection(**values)
    _check_data(data)
    return data


def _check_source(data: DataSection) -> None:
    if data.name is not None and not isinstance(data.name, str):
        raise TrainerConfigError(f"[data] name must be a registry name such as \"ani_gdb_s01\", got {data.name!r}.")
    if data.paths is not None and not (data.paths and all(isinstance(p, str) for p in data.paths)):
        raise TrainerConfigError(f"[data] paths must be a list of file names, got {data.paths!r}.")
    if data.torchani is not None and data.torchani not in TORCHANI_DATASETS:
        raise TrainerConfigError(f"[data] torchani must be one of {list(TORCHANI_DATASETS)}, got {data.torchani!r}.")


def _check_data(data: DataSection) -> None:
    _check_source(data)
    if not isinstance(data.stream, bool):
        raise TrainerConfigError(f"[data] stream must be true or false, got {data.stream!r}.")
    split = data.split
    if (not isinstance(split, tuple) or len(split) not in (2, 3) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in split)
            or abs(sum(split) - 1) > 1e-9):
        raise TrainerConfigError(f"[data] split must be 2 or 3 positive fractions adding up to 1 (training, "
                                 f"validation[, test]), e.g. [0.8, 0.1, 0.1]; got {split!r}.")
    for key, low in (("split_seed", 0), ("chunk", 1)):
        value = getattr(data, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TrainerConfigError(f"[data] {key} must be an integer >= {low}, got {value!r}.")
    if data.conformations is not None:
        if isinstance(data.conformations, bool) or not isinstance(data.conformations, int) or data.conformations < 10:
            raise TrainerConfigError(f"[data] conformations must be an integer >= 10, got {data.conformations!r}.")
        if data.stream or data.torchani:
            raise TrainerConfigError("[data] conformations (a random subset) works in memory only: remove it, "
                                     "or set stream = false.")
    if data.torchani is not None:
        data.stream = True  # converted once to the ANI-1 layout, then read from disk
    if data.paths is not None and len(data.paths) > 1 and not data.stream:
        raise TrainerConfigError("Several files in [data] paths are read together only when streamed: "
                                 "set stream = true.")


def _train_section(table: Mapping[str, Any], streamed: bool) -> TrainConfig:
    """The TrainConfig of ``[train]``: a preset and the fields that change it. Streamed data and
    force training need the AEVs computed in the step: ``feed = "in_step"`` unless set."""
    values = dict(table)
    preset = values.pop("preset", "fast")
    if preset not in PRESETS:
        raise TrainerConfigError(f"[train] preset {preset!r} is unknown: choose one of {list(PRESETS)}.")
    base = PRESETS[preset]().to_dict()
    unknown = sorted(set(values) - set(base))
    if unknown:
        raise TrainerConfigError(f"Unknown key(s) {unknown} in [train]; TrainConfig fields are {sorted(base)} "
                                 "(and preset).")
    force_weight = values.get("force_weight", base["force_weight"])
    if streamed or (isinstance(force_weight, (int, float)) and force_weight > 0):
        values.setdefault("feed", "in_step")
    return TrainConfig.from_dict({**base, **values})


def read_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """The run described by the TOML file ``path`` with ``overrides`` (``section.key=value``) applied."""
    path = Path(path)
    if not path.is_file():
        raise TrainerConfigError(f"No run file at {path}: pass --config with the path of a TOML file "
                                 "(see examples/s01.toml).")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TrainerConfigError(f"{path.name} is not valid TOML: {exc}.") from None
    for assignment in overrides:
        _override(raw, assignment)
    extra = sorted(set(raw) - set(SECTIONS))
    if extra:
        raise TrainerConfigError(f"Unknown table(s) {extra} in {path.name}; a run file has [data], [model], "
                                 "[train] and [run].")
    _unknown(raw.get("run", {}), RUN_KEYS, "run")
    data = _data_section(raw.get("data", {"name": "ani_gdb_s01"}))
    try:
        spec = ArchitectureSpec.from_dict(raw["model"]) if raw.get("model") else ArchitectureSpec.course()
        config = _train_section(raw.get("train", {}), data.stream)
    except (ArchitectureError, ConfigError, TypeError) as exc:
        raise TrainerConfigError(str(exc)) from None
    run_table = raw.get("run", {})
    folder, resume = run_table.get("checkpoint_dir"), run_table.get("resume", True)
    if not isinstance(folder, str) or not folder:
        raise TrainerConfigError("[run] checkpoint_dir is required: the folder for latest.pt, best.pt and the log, "
                                 "e.g. checkpoint_dir = \"runs/s01\".")
    if not isinstance(resume, bool):
        raise TrainerConfigError(f"[run] resume must be true or false, got {resume!r}.")
    return RunConfig(data, spec, config, folder, resume, list(overrides))


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _rank0_first(distributed: Distributed | None, prepare: Callable[[], Any]) -> Any:
    """``prepare()`` on rank 0 first (downloads, conversions), then on the others; a failure on
    rank 0 stops every rank instead of leaving them waiting."""
    if distributed is None:
        return prepare()
    failure = None
    if distributed.is_main:
        try:
            result = prepare()
        except Exception as exc:  # re-raised below, after telling the other ranks
            failure = exc
    if distributed.any(failure is not None):
        if failure is not None:
            raise failure
        raise DataError("Rank 0 could not prepare the data (its message says why).")
    return result if distributed.is_main else prepare()


def _data_files(data: DataSection, distributed: Distributed | None) -> list[Path]:
    """The HDF5 files to read (located, downloaded or converted on rank 0 first)."""
    if data.paths is not None:
        return [Path(p).expanduser() for p in data.paths]
    if data.name is not None:
        return [_rank0_first(distributed, lambda: locate_dataset(data.name))]
    from .data.files import download_dir

    target = download_dir() / f"{data.torchani.lower()}-{data.lot}.h5"

    def convert() -> Path:
        if not target.is_file():
            convert_torchani(fetch_torchani(data.torchani, data.lot), target)
        return target

    return [_rank0_first(distributed, convert)]


def load_parts(data: DataSection, distributed: Distributed | None = None) -> tuple[Any, ...]:
    """The training, validation (and test) sets: :class:`~anibook_utils.data.ANIData` in memory,
    or :class:`~anibook_utils.streaming.H5Stream` views read from disk."""
    files = _data_files(data, distributed)
    if data.stream:
        return H5Stream(files, chunk=data.chunk).split(data.split, seed=data.split_seed)
    loaded = (load_dataset(data.name, download=False, fallback=False) if data.name is not None
              else load_dataset(path=files[0]))
    if data.conformations is not None:
        if data.conformations > len(loaded):
            raise TrainerConfigError(f"[data] conformations = {data.conformations}, but the data hold "
                                     f"{len(loaded)}: ask for fewer.")
        order = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(data.split_seed))
        loaded = loaded.subset(order[:data.conformations])
    return split_dataset(loaded, data.split, seed=data.split_seed)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class _Log:
    """Rank 0's per-epoch lines: on screen and appended to ``log.jsonl`` in the checkpoint folder."""

    def __init__(self, folder: Path, epochs: int) -> None:
        self.path, self.epochs = folder / "log.jsonl", epochs
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        forces = f"  forces {record['val_force_rmse']:.3f}" if "val_force_rmse" in record else ""
        print(f"epoch {record['epoch']:>3d}/{self.epochs}  train {record['train_rmse']:8.3f}  "
              f"val {record['val_rmse']:8.3f} kcal/mol{forces}  {record['epoch_time']:6.2f} s", flush=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: v for k, v in record.items() if isinstance(v, (int, float, str))}) + "\n")


def _size(part: Any) -> str:
    return f"{len(part):,}"


def _training_line(config: TrainConfig, world: int) -> str:
    """The settings a reader compares between runs, in one short line."""
    share = f" ({config.batch_size // world} or so per process)" if world > 1 else ""
    forces = f", force weight {config.force_weight:g}" if config.force_weight > 0 else ""
    return (f"{config.epochs} epochs, batches of {config.batch_size}{share}, {config.optimizer} at lr {config.lr:g}, "
            f"{config.schedule} schedule, AEVs {'computed in the step' if config.feed == 'in_step' else 'precomputed'}"
            f"{forces}")


def _header(cfg: RunConfig, parts: Sequence[Any], distributed: Distributed | None) -> str:
    world = distributed.world_size if distributed is not None else 1
    where = (f"{world} processes ({distributed.backend} on {distributed.device.type})" if distributed is not None
             else f"1 process ({resolve_device(cfg.train.device).type})")
    names = ("training", "validation", "test")
    sizes = ", ".join(f"{_size(p)} {n}" for p, n in zip(parts, names))
    return (f"data: {cfg.data.describe()}; {sizes} conformations\n"
            f"model: {cfg.spec.label() if hasattr(cfg.spec, 'label') else cfg.spec}, "
            f"{cfg.spec.num_parameters():,} parameters\n"
            f"training: {_training_line(cfg.train, world)}\n"
            f"on {where}; checkpoints in {cfg.checkpoint_dir}")


def _test_metrics(result: TrainResult, test: Any) -> dict[str, float]:
    if isinstance(test, H5Stream):
        return evaluate_stream(result.model, test, result.self_energies, result.aev_constants,
                               result.config.eval_batch_size, forces=result.config.force_weight > 0)
    return result.evaluate(test)


def _finish(cfg: RunConfig, result: TrainResult, parts: Sequence[Any], world: int) -> dict[str, Any]:
    """Rank 0's ending: the test metrics, the potential and ``summary.json``."""
    from .potential import save_potential

    folder = Path(cfg.checkpoint_dir)
    summary: dict[str, Any] = {
        "stop_reason": result.stop_reason, "epochs": len(result.history), "best_epoch": result.best_epoch,
        "best_val_rmse": result.best_val_rmse, "train_time_s": result.train_time, "wall_time_s": result.wall_time,
        "processes": world, "device": result.device, "data": cfg.data.describe(),
        "sizes": [len(p) for p in parts]}
    print(result.summary())
    if result.interrupted:
        print(f"stopped on request: {cfg.checkpoint_dir}/latest.pt holds the last finished epoch; run the same "
              "command again (resume = true) to continue.")
    elif len(parts) > 2 and result.best_epoch is not None:
        test = _test_metrics(result, parts[2])
        summary["test"] = test
        shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items())
        unit = "kcal/mol; forces kcal/mol/Å" if "force_rmse" in test else "kcal/mol"
        print(f"test set ({_size(parts[2])} conformations, never used for any choice): {shown} ({unit})")
    if result.best_epoch is not None:
        save_potential(folder / "potential.pt", result)
    with atomic_write(folder / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def run(cfg: RunConfig, distributed: Distributed | None = None) -> int:
    """Train as ``cfg`` says, in this process (one of several under torchrun); 0 when done or
    stopped on request."""
    main = distributed is None or distributed.is_main
    parts = load_parts(cfg.data, distributed)
    if main:
        print(_header(cfg, parts, distributed), flush=True)
    log = _Log(Path(cfg.checkpoint_dir), cfg.train.epochs) if main else None
    result = train(cfg.spec, parts[0], parts[1], cfg.train, checkpoint_dir=cfg.checkpoint_dir, resume=cfg.resume,
                   callback=log, progress=False, distributed=distributed)
    if main:
        _finish(cfg, result, parts, distributed.world_size if distributed is not None else 1)
    return 0


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _as_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # train() ends the run and returns what it has; latest.pt stays whole


def _say(message: str) -> None:
    """An error, once (rank 0's) however many processes run."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)


def command(args: argparse.Namespace) -> int:
    """Read the run file, join torchrun's process group if there is one, train, leave the group."""
    try:
        cfg = read_config(args.config, args.overrides)
    except TrainerConfigError as exc:
        _say(str(exc))
        return EXIT_BAD_CONFIG
    distributed = Distributed.from_environment(cfg.train.device)
    previous = signal.getsignal(signal.SIGTERM)
    if distributed is not None:
        distributed.catch_interrupts()
    else:
        signal.signal(signal.SIGTERM, _as_ctrl_c)  # a cluster's SIGTERM stops a lone process like Ctrl-C
    try:
        return run(cfg, distributed)
    except (TrainerConfigError, ConfigError, ArchitectureError, DataError, CheckpointError, FileNotFoundError,
            ValueError) as exc:
        _say(str(exc))
        return EXIT_BAD_CONFIG
    except FloatingPointError as exc:  # training diverged: the message says what to change
        _say(str(exc))
        return 1
    finally:
        if distributed is not None:
            distributed.close()
        else:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------
# Launching the command from Python (what chapter 10 does to show it)
# --------------------------------------------------------------------------------------


@dataclass
class CommandRun:
    """One finished run of the command: what was typed, what it printed, how long it took, and
    what rank 0 wrote (``log.jsonl`` records, ``summary.json``)."""

    typed: str
    returncode: int
    output: str
    wall_s: float
    log: list[dict[str, Any]]
    summary: dict[str, Any] | None


def _typed(config: Path, processes: int, overrides: Sequence[str]) -> str:
    launcher = ("python -m anibook_utils" if processes == 1
                else f"torchrun --standalone --nproc_per_node={processes} -m anibook_utils")
    return " ".join([launcher, "train", "--config", config.name, *(f"--set {o}" for o in overrides)])


def launch(config: str | os.PathLike, processes: int = 1, overrides: Sequence[str] = (), threads: int = 1,
           timeout: float | None = None) -> CommandRun:
    """Run ``python -m anibook_utils train`` (``processes == 1``) or the same under ``torchrun
    --standalone --nproc_per_node=processes`` in a subprocess, from the run file's folder, with
    ``threads`` CPU threads per process; return what it printed and wrote."""
    config = Path(config).resolve()
    overrides = [*overrides, f"train.num_threads={threads}"]
    package_root = str(Path(__file__).resolve().parents[1])  # this copy of anibook_utils
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    launcher = ([sys.executable, "-m", "anibook_utils"] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "anibook_utils"])
    command = [*launcher, "train", "--config", str(config)]
    for assignment in overrides:
        command += ["--set", assignment]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    folder = config.parent / read_config(config, overrides).checkpoint_dir
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()] \
        if (folder / "log.jsonl").is_file() else []
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else None
    return CommandRun(_typed(config, processes, overrides), done.returncode, done.stdout + done.stderr, wall,
                      log, summary)
