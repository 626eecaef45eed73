"""The benchmark suite: run sections, collect one results dict, format it as tables.

Sections: training throughput (a/b/c loops), the machine's matrix-multiply limit, time to
accuracy, and scaling (loading, molecule size). ``python -m benchmarks`` is the command line;
the book's appendix calls :func:`run` and :func:`report` directly.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

SECTIONS = ("throughput", "limit", "accuracy", "loading", "size")


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

    cells = [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, (_, h, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run(sections: tuple[str, ...] = SECTIONS, quick: bool = False, min_seconds: float = 3.0,
        tta_cap: float = 180.0, torchani_cap: float = 300.0) -> dict:
    """Run the chosen sections and return everything as one dict.

    ``quick`` shrinks the scaling sections (fewer sizes, less data); the time caps and
    ``min_seconds`` (per throughput measurement) are the caller's choice.
    """
    from anibook_utils.data import load_dataset, split_dataset
    from anibook_utils.models import ArchitectureSpec
    from anibook_utils.training import configure_threads

    configure_threads(None)
    data = load_dataset()
    train, val = split_dataset(data, 0.8, seed=0)
    results: dict = {"hardware": hardware(), "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "data": {"source": Path(data.source).name, "train": len(train), "validation": len(val)}}
    spec = ArchitectureSpec.course()
    batch_sizes = (256, 2560)
    if "throughput" in sections or "limit" in sections:
        from .throughput import measure_throughput
        rows = measure_throughput(train, batch_sizes, min_seconds=min_seconds, spec=spec)
        by = {(r["loop"], r["batch_size"]): r["conformations_per_s"] for r in rows}
        for b in batch_sizes:
            by_engine = by[("engine", b)]
            for other in ("torchani", "course", "course_precomputed"):
                results.setdefault("ratios", {})[f"engine/{other}@{b}"] = by_engine / by[(other, b)]
        results["throughput"] = rows
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
        from .time_to_accuracy import engine_recipe, torchani_recipe
        rows = [engine_recipe(train, val, cap_s=tta_cap)]
        rows.append(torchani_recipe(train, val, cap_s=torchani_cap))
        if rows[0]["wall_s_to_1.0"] and rows[1]["wall_s_to_1.0"]:
            results["speedup_to_1.0"] = rows[1]["wall_s_to_1.0"] / rows[0]["wall_s_to_1.0"]
        results["accuracy"] = rows
    if "loading" in sections:
        from .scaling import loading_scaling
        results["loading"] = loading_scaling(data.source, (1, 10) if quick else (1, 10, 100))
    if "size" in sections:
        from .molecule_size import size_scaling
        results["size"] = size_scaling(data, copies=(1, 2) if quick else (1, 2, 4), min_seconds=min_seconds,
                                       limit=512 if quick else 2048)
    return results


def report(results: dict) -> str:
    """The tables, as printed."""
    out = ["Hardware: " + ", ".join(f"{k}={v}" for k, v in results["hardware"].items() if v is not None)]
    if "throughput" in results:
        out += ["", "1. Training throughput (forward + backward + Adam step), training set of "
                f"{results['data']['train']} conformations",
                table(results["throughput"], [("loop", "loop", ""), ("batch_size", "batch", "d"),
                                              ("step_ms", "ms/step", ".1f"),
                                              ("conformations_per_s", "conformations/s", ",.0f")])]
        out += [f"   ratio {k}: {v:.2f}x" for k, v in results["ratios"].items()]
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
    return "\n".join(out)
