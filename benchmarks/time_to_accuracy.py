"""Time to accuracy: wall time until the validation RMSE first reaches 1.0 and 0.3 kcal/mol.

Both recipes train on the training part of the book's seeded 80/10/10 split of ani_gdb_s01
(watching its validation part) and are capped in time; a
threshold not reached within the cap is reported as such (None), never extrapolated.
Both take a ``device``; the training engine and the example synchronise a GPU whenever
they read a metric, so their epoch times include the queued kernels.
"""

from __future__ import annotations

import time

import torch

from anibook_utils.data import ANIData
from anibook_utils.training import TrainConfig, train

from .throughput import describe_error

THRESHOLDS = (1.0, 0.3)


def _crossings(times: list[float], rmses: list[float], setup: float) -> dict:
    out = {}
    for threshold in THRESHOLDS:
        hit = next((t for t, r in zip(times, rmses) if r <= threshold), None)
        out[f"train_s_to_{threshold}"] = hit
        out[f"wall_s_to_{threshold}"] = None if hit is None else hit + setup
    return out


ENGINE_RECIPE = "book default (TrainConfig.fast)"


def engine_recipe(train_data: ANIData, val_data: ANIData, cap_s: float = 180.0,
                  config: TrainConfig | None = None, device: str | torch.device | None = None,
                  recipe: str = ENGINE_RECIPE) -> dict:
    """The book's default recipe (``TrainConfig.fast()``), stopped at 0.3 kcal/mol or the cap.

    ``device`` (None: the config's, ``"auto"`` by default) is where the engine trains.
    """
    config = (config or TrainConfig.fast()).replace(target_val_rmse=min(THRESHOLDS), max_time=cap_s)
    if device is not None:
        config = config.replace(device=str(device))
    result = train(None, train_data, val_data, config, progress=False)
    times = result.history.column("time")
    rmses = result.history.column("val_rmse")
    return {"recipe": recipe, "epochs": len(result.history),
            "best_val_rmse": result.best_val_rmse, "setup_s": result.setup_time,
            "train_s": result.train_time, "cap_s": cap_s,
            **_crossings(times, rmses, result.setup_time)}


TORCHANI_RECIPE = "TorchANI example (batch 2560, AdamW+SGD, plateau)"


def torchani_recipe(train_data: ANIData, val_data: ANIData, cap_s: float = 300.0,
                    device: str | torch.device = "cpu") -> dict:
    """TorchANI's example recipe (batch 2560, AdamW + SGD, ReduceLROnPlateau), capped at ``cap_s``."""
    from anibook_utils.torchani_example import TorchANIExample

    started = time.perf_counter()
    example = TorchANIExample(train_data, val_data, device=device)
    setup = time.perf_counter() - started

    class _Reached(Exception):
        pass

    def stop_at_lowest_threshold(record: dict) -> None:
        if record["val_rmse"] <= min(THRESHOLDS):
            raise _Reached

    try:  # the example's own loop: validate, plateau schedulers, train an epoch
        example.run(max_epochs=1_000_000, train_metrics=False, progress=False,
                    callback=stop_at_lowest_threshold, max_time=cap_s)
    except _Reached:
        pass
    times = example.history.column("time")
    rmses = example.history.column("val_rmse")
    return {"recipe": TORCHANI_RECIPE, "epochs": len(times),
            "best_val_rmse": min(rmses) if rmses else None, "setup_s": setup, "train_s": example.elapsed,
            "cap_s": cap_s, **_crossings(times, rmses, setup)}


def accuracy_rows(train_data: ANIData, val_data: ANIData, cap_s: float, torchani_cap_s: float,
                  device: str | torch.device | None = None, extra_batch_sizes: tuple[int, ...] = ()) -> list[dict]:
    """The section's rows: the book's recipe, TorchANI's, then the book's recipe at each of
    ``extra_batch_sizes`` (learning-rate schedule unchanged).

    ``device`` None keeps the suite's original placement (the engine's ``"auto"``, the example
    on the CPU). On a GPU a failing recipe becomes its row's ``error``; elsewhere it raises.
    """
    where = torch.device(device) if device is not None else torch.device("cpu")
    jobs = [(ENGINE_RECIPE, lambda: engine_recipe(train_data, val_data, cap_s=cap_s, device=device)),
            (TORCHANI_RECIPE, lambda: torchani_recipe(train_data, val_data, cap_s=torchani_cap_s, device=where))]
    for b in extra_batch_sizes:
        name = f"{ENGINE_RECIPE}, batch {b}"
        jobs.append((name, lambda b=b, name=name: {
            **engine_recipe(train_data, val_data, cap_s=cap_s, config=TrainConfig.fast(batch_size=b),
                            device=where, recipe=name), "batch_size": b}))
    rows = []
    for name, job in jobs:
        if where.type == "cpu":
            rows.append(job())
            continue
        try:
            rows.append(job())
        except Exception as exc:  # recorded: the suite goes on
            rows.append({"recipe": name, "cap_s": cap_s, "error": describe_error(exc)})
    return rows
