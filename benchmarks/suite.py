"""The benchmark suite: run sections, collect one results dict, format it as tables.

Sections: training throughput (a/b/c loops), the machine's matrix-multiply limit, time to
accuracy, scaling (loading, molecule size) and streaming from disk (memory against size, cost
per step; chapter 10). ``python -m benchmarks`` is the command line;
the book's appendix calls :func:`run` and :func:`report` directly.

``device="cuda"`` moves the throughput and time-to-accuracy sections to the GPU (only the
:data:`DEVICE_SECTIONS` can run then); the throughput section also tries the engine's step
as a CUDA graph and compiled at the smallest batch (:mod:`benchmarks.small_batch`) and says
which was faster, and the time-to-accuracy section adds the book's recipe at each throughput
batch size. Without ``device`` (or with ``"cpu"``) the results have the same rows and keys
as before the option existed.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from anibook_utils.data import ANIData
    from anibook_utils.models import ArchitectureSpec

SECTIONS = ("throughput", "limit", "accuracy", "loading", "size", "streaming")
DEVICE_SECTIONS = ("throughput", "accuracy", "loading")
"""Sections that can run with a GPU ``device`` (loading does not use it; limit and size measure the CPU)."""
BATCH_SIZES = (256, 2560)


def hardware() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import torchani
        info["torchani"] = torchani.__version__
    except Exception:  # pragma: no cover - torchani is a dependency
        pass
    return info


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header, format)."""
    def cell(row: dict, key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None:
            return "not reached" if key.startswith(("wall_s_to", "train_s_to")) else "-"
        return format(value, fmt) if fmt else str(value)

    def shown(row: dict, key: str, fmt: str) -> str:
        return "error" if row.get("error") and row.get(key) is None else cell(row, key, fmt)

    cells = [[shown(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, (_, h, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def load_split() -> tuple["ANIData", "ANIData", "ANIData"]:
    """The ANI-1 data and the training and validation parts of the book's seeded 80/10/10
    split (``BOOK_SPLIT``, as from chapter 4 on): ``(data, train, validation)``. The suite
    measures speed and the time until the validation RMSE crosses a threshold; it reports no
    model's accuracy, so it leaves the test part alone."""
    from anibook_utils.data import BOOK_SPLIT, load_dataset, split_dataset

    data = load_dataset()
    train, validation, _test = split_dataset(data, BOOK_SPLIT, seed=0)
    return data, train, validation


def _start_device(device: torch.device) -> None:
    """Create the GPU's context now, so no section's timing pays for it."""
    if device.type == "cuda":
        torch.zeros(1, device=device).sum().item()
        torch.cuda.synchronize(device)


def _ratios(rows: list[dict], batch_sizes: tuple[int, ...]) -> dict[str, float]:
    """engine/other throughput ratios, for the loops that ran (not those with an error)."""
    by = {(r["loop"], r["batch_size"]): r["conformations_per_s"] for r in rows if "error" not in r}
    ratios = {}
    for b in batch_sizes:
        for other in ("torchani", "course", "course_precomputed", "course_flushed"):
            if ("engine", b) in by and (other, b) in by:
                ratios[f"engine/{other}@{b}"] = by[("engine", b)] / by[(other, b)]
    return ratios


def _throughput(results: dict, train: "ANIData", spec: "ArchitectureSpec", batch_sizes: tuple[int, ...],
                min_seconds: float, device: torch.device) -> None:
    """Section 1 into ``results``; on a GPU also the small-batch variants and which step won."""
    from .throughput import measure_throughput

    rows = measure_throughput(train, batch_sizes, min_seconds=min_seconds, spec=spec, device=device)
    if device.type == "cuda":
        from .small_batch import compare, measure_variants

        small = min(batch_sizes)
        rows += measure_variants(device, small, min_seconds)
        results["small_batch"] = compare(rows, small)
    results["ratios"] = _ratios(rows, batch_sizes)
    results["throughput"] = rows


def run(sections: tuple[str, ...] = SECTIONS, quick: bool = False, min_seconds: float = 3.0,
        tta_cap: float = 180.0, torchani_cap: float = 300.0, device: str | torch.device | None = None) -> dict:
    """Run the chosen sections and return everything as one dict.

    ``quick`` shrinks the scaling sections (fewer sizes, less data); the time caps and
    ``min_seconds`` (per throughput measurement) are the caller's choice. ``device`` runs the
    throughput and time-to-accuracy sections there (only :data:`DEVICE_SECTIONS` with a GPU);
    None keeps the original placement: throughput and TorchANI's recipe on the CPU, the
    book's recipe on the engine's ``device="auto"``.
    """
    from anibook_utils.models import ArchitectureSpec
    from anibook_utils.training import configure_threads

    chosen, device = device, torch.device(device if device is not None else "cpu")
    if device.type != "cpu" and set(sections) - set(DEVICE_SECTIONS):
        raise ValueError(f"With device {device} only the sections {DEVICE_SECTIONS} can run "
                         f"(limit and size measure the CPU); got {sections}.")
    configure_threads(None)
    data, train, val = load_split()
    results: dict = {"hardware": hardware(), "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "data": {"source": Path(data.source).name, "train": len(train), "validation": len(val)}}
    if device.type != "cpu":
        results["device"] = str(device)
        _start_device(device)
    spec = ArchitectureSpec.course()
    batch_sizes = BATCH_SIZES
    if "throughput" in sections or "limit" in sections:
        _throughput(results, train, spec, batch_sizes, min_seconds, device)
    if "limit" in sections:
        from .flops import batch_atoms, matmul_seconds, training_flops_per_conformation, training_gemms
        hidden = dict(spec.hidden)
        flops_per_conf = training_flops_per_conformation(hidden, train)
        limit_rows = []
        for b in batch_sizes:
            shapes = training_gemms(hidden, batch_atoms(train, b))
            seconds = matmul_seconds(shapes)
            limit_rate = sum(s.flops for s in shapes) / seconds
            engine = next(r for r in results["throughput"] if r["loop"] == "engine" and r["batch_size"] == b)
            achieved = engine["conformations_per_s"] * flops_per_conf
            limit_rows.append({"batch_size": b, "gflop_per_step": sum(s.flops for s in shapes) / 1e9,
                               "matmul_gflops": limit_rate / 1e9, "engine_gflops": achieved / 1e9,
                               "fraction": achieved / limit_rate})
        results["flops_per_conformation"] = flops_per_conf
        results["limit"] = limit_rows
    if "accuracy" in sections:
        from .time_to_accuracy import accuracy_rows
        rows = accuracy_rows(train, val, tta_cap, torchani_cap, chosen,
                             extra_batch_sizes=batch_sizes if device.type != "cpu" else ())
        if rows[0].get("wall_s_to_1.0") and rows[1].get("wall_s_to_1.0"):
            results["speedup_to_1.0"] = rows[1]["wall_s_to_1.0"] / rows[0]["wall_s_to_1.0"]
        results["accuracy"] = rows
    if "loading" in sections:
        from .scaling import loading_scaling
        results["loading"] = loading_scaling(data.source, (1, 10) if quick else (1, 10, 100))
    if "size" in sections:
        from .molecule_size import size_scaling
        results["size"] = size_scaling(data, copies=(1, 2) if quick else (1, 2, 4), min_seconds=min_seconds,
                                       limit=512 if quick else 2048)
    if "streaming" in sections:
        from .streaming import streaming_memory, streaming_throughput
        steps = 5 if quick else 20
        results["streaming"] = {"memory": streaming_memory(data.source, (1, 10) if quick else (1, 10, 100),
                                                           steps=steps),
                                "throughput": streaming_throughput(data, steps=steps)}
    return results


def _errors(rows: list[dict], name: str) -> list[str]:
    """One line per row that failed: ``   <name> failed: <error>``."""
    return [f"   {r[name]}" + (f"@{r['batch_size']}" if "batch_size" in r else "") + f" failed: {r['error']}"
            for r in rows if r.get("error")]


def _small_batch_lines(summary: dict, device: str) -> list[str]:
    """What the small-batch comparison found, and which step was faster."""
    rates, speedups = summary["conformations_per_s"], summary["speedup"]
    parts = [f"{k} {v:,.0f}/s" + (f" ({speedups[k]:.2f}x)" if k in speedups else "") for k, v in rates.items()]
    parts += [f"{k} failed" for k in summary["errors"]]
    winner = summary["winner"] or "none (every variant failed)"
    return [f"   batch {summary['batch_size']} on {device}: " + "; ".join(parts),
            f"   faster at batch {summary['batch_size']}: {winner}"]


def report(results: dict) -> str:
    """The tables, as printed."""
    out = ["Hardware: " + ", ".join(f"{k}={v}" for k, v in results["hardware"].items() if v is not None)]
    if "device" in results:
        out.append(f"Device: {results['device']} (throughput and time to accuracy)")
    if "throughput" in results:
        out += ["", "1. Training throughput (forward + backward + Adam step), training set of "
                f"{results['data']['train']} conformations",
                table(results["throughput"], [("loop", "loop", ""), ("batch_size", "batch", "d"),
                                              ("step_ms", "ms/step", ".1f"),
                                              ("conformations_per_s", "conformations/s", ",.0f")])]
        out += [f"   ratio {k}: {v:.2f}x" for k, v in results["ratios"].items()]
        out += _errors(results["throughput"], "loop")
        if "small_batch" in results:
            out += _small_batch_lines(results["small_batch"], results.get("device", "cpu"))
    if "limit" in results:
        out += ["", f"2. Machine limit: {results['flops_per_conformation'] / 1e6:.2f} MFLOP per conformation "
                "(forward + backward matrix products of the course's networks)",
                table(results["limit"], [("batch_size", "batch", "d"), ("gflop_per_step", "GFLOP/step", ".2f"),
                                         ("matmul_gflops", "matmul GFLOP/s", ".1f"),
                                         ("engine_gflops", "engine GFLOP/s", ".1f"),
                                         ("fraction", "fraction of limit", ".0%")])]
    if "accuracy" in results:
        out += ["", "3. Time to accuracy (validation RMSE, kcal/mol; wall = training + setup)",
                table(results["accuracy"], [("recipe", "recipe", ""), ("epochs", "epochs", "d"),
                                            ("best_val_rmse", "best RMSE", ".3f"),
                                            ("wall_s_to_1.0", "s to 1.0", ".1f"),
                                            ("wall_s_to_0.3", "s to 0.3", ".1f"), ("cap_s", "cap s", ".0f")])]
        out += _errors(results["accuracy"], "recipe")
        if "speedup_to_1.0" in results:
            out.append(f"   the book's recipe reaches 1.0 kcal/mol {results['speedup_to_1.0']:.1f}x sooner")
    if "loading" in results:
        out += ["", "4a. Loading the file and building batches of 2560 (fresh process per size)",
                table(results["loading"], [("repeat", "copies", "d"), ("conformations", "conformations", ",d"),
                                           ("file_mb", "file MB", ".1f"), ("read_s", "read s", ".3f"),
                                           ("batch_s", "batch s", ".3f"),
                                           ("peak_rss_mb", "peak RSS MB", ".0f"),
                                           ("data_mb", "data MB (resident)", ".0f")])]
    if "size" in results:
        out += ["", "4b. Molecule size (methane replicated, batch 256)",
                table(results["size"], [("atoms", "atoms", "d"), ("loop", "loop", ""),
                                        ("conformations_per_s", "conformations/s", ",.0f"),
                                        ("atoms_per_s", "atoms/s", ",.0f")])]
    if "streaming" in results:
        out += _streaming_lines(results["streaming"])
    return "\n".join(out)


def _streaming_lines(streaming: dict) -> list[str]:
    """Section 5: streamed training's memory against the data's size, and its cost per step."""
    return ["", "5a. Streaming from disk: resident memory of streamed training (fresh process per size; "
            "MB above the imports)",
            table(streaming["memory"], [("repeat", "copies", "d"), ("conformations", "conformations", ",d"),
                                        ("file_mb", "file MB", ".1f"), ("index_s", "index s", ".2f"),
                                        ("setup_s", "setup s", ".2f"), ("setup_mb", "after setup MB", ".0f"),
                                        ("train_mb", "after steps MB", ".0f"), ("step_ms", "ms/step", ".0f")]),
            "", "5b. The same training step fed from memory and from disk (AEVs computed in the step)",
            table(streaming["throughput"], [("path", "data", ""), ("batch_size", "batch", "d"),
                                            ("step_ms", "ms/step", ".1f"),
                                            ("conformations_per_s", "conformations/s", ",.0f"),
                                            ("relative", "vs memory", ".2f")])]
