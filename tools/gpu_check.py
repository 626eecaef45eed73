"""``make gpu-check``: the book's CUDA checks in one run, about 5 minutes on a GPU.

1. ``tests``: the tests marked ``cuda`` (``tests/test_cuda.py``): training, potentials,
   checkpoints moved between devices, the panel's background thread;
2. ``ch04`` and ``ch07``: chapters 4 and 7 in quick mode with papermill (their engine uses
   ``device="auto"``, hence the GPU); executed copies and metrics go to ``_build/gpu-check/``;
3. ``benchmarks``: the suite's throughput and time-to-accuracy sections on CUDA (batches 256
   and 2560, the small-batch CUDA-graph and compiled variants) into
   ``_build/gpu-check/benchmarks-cuda.json``.

Every step runs even if an earlier one failed (a GPU session is short); the summary lists
each step's status and time, and the exit status is 1 if any step failed.

    python tools/gpu_check.py                    # everything
    python tools/gpu_check.py --steps tests,ch07 # some steps again

``GPU_CHECK_CAP`` and ``GPU_CHECK_TORCHANI_CAP`` (seconds, default 60 each) cap the two
time-to-accuracy recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("_build") / "gpu-check"
NO_GPU = "make gpu-check needs a CUDA GPU, and none is visible here (torch.cuda.is_available() is False)."
CHAPTERS = {"ch04": "04_model_training", "ch07": "07_interactive"}
STEPS = ("tests", "ch04", "ch07", "benchmarks")


@dataclass
class Step:
    """One step: its name, command, time limit, and (once run) exit status and seconds."""

    name: str
    command: list[str]
    timeout: float
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def commands(python: str = sys.executable) -> dict[str, Step]:
    """Every step's command line (paths relative to the repository root)."""
    cap = os.environ.get("GPU_CHECK_CAP", "60")
    torchani_cap = os.environ.get("GPU_CHECK_TORCHANI_CAP", "60")
    steps = {"tests": Step("tests", [python, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda", "-q", "-rfEs",
                                     "tests/test_cuda.py"], timeout=600)}
    for key, chapter in CHAPTERS.items():
        steps[key] = Step(key, [python, "-m", "papermill", f"book/{chapter}.ipynb", str(OUT / f"{chapter}.ipynb"),
                                "-p", "QUICK", "True", "--cwd", "book", "-k", "python3", "--no-progress-bar"],
                          timeout=900)
    steps["benchmarks"] = Step("benchmarks", [python, "-m", "benchmarks", "--sections", "throughput,accuracy",
                                              "--device", "cuda", "--json", str(OUT / "benchmarks-cuda.json"),
                                              "--cap", cap, "--torchani-cap", torchani_cap], timeout=1200)
    return steps


def environment() -> dict[str, str]:
    """The steps' environment: quick chapters, metrics into the output folder, no downloads."""
    return dict(os.environ, ANIBOOK_QUICK="1", ANIBOOK_METRICS_DIR=str(ROOT / OUT), ANIBOOK_OFFLINE="1",
                MPLBACKEND="Agg", TORCHANI_NO_WARN_EXTENSIONS="1", PYTHONPATH=str(ROOT))


def preflight() -> str | None:
    """Why the checks cannot run here (no GPU, no data), or None."""
    import torch

    if not torch.cuda.is_available():
        return NO_GPU
    from anibook_utils.data import DataFileNotFoundError, load_dataset

    try:
        load_dataset(download=False, fallback=False)
    except DataFileNotFoundError as exc:
        return f"make gpu-check needs the ANI-1 data (make data, or set ANIBOOK_DATA_DIR): {exc}"
    return None


def run_step(step: Step, env: dict[str, str]) -> Step:
    """Run one step from the repository root, streaming its output; record status and time."""
    print(f"\n=== gpu-check: {step.name}: {' '.join(step.command[1:])}", flush=True)
    if step.name in CHAPTERS:  # metrics are merged into the file: start from none
        (ROOT / OUT / f"{CHAPTERS[step.name]}.json").unlink(missing_ok=True)
    tick = time.perf_counter()
    try:
        step.returncode = subprocess.run(step.command, cwd=ROOT, env=env, timeout=step.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"gpu-check: {step.name} ran past {step.timeout:.0f} s and was stopped", flush=True)
        step.returncode = 124
    step.seconds = time.perf_counter() - tick
    return step


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _number(value: object, fmt: str = ".3f") -> str:
    """``value`` formatted as a number, or ``"?"`` if it is not one."""
    return format(value, fmt) if isinstance(value, (int, float)) else "?"


def highlights() -> list[str]:
    """A few numbers from the chapters' metrics and the benchmark JSON."""
    lines = []
    ch04 = _read_json(ROOT / OUT / "04_model_training.json")
    if ch04:
        lines.append(f"chapter 4: fast recipe {_number(ch04.get('fast_val_rmse'))} kcal/mol in "
                     f"{_number(ch04.get('fast_train_time'), '.1f')} s; resumed run == uninterrupted run: "
                     f"{ch04.get('resume_matches')}; force check error {_number(ch04.get('force_max_error'), '.1e')}")
    ch07 = _read_json(ROOT / OUT / "07_interactive.json")
    if ch07:
        lines.append(f"chapter 7: default run {_number(ch07.get('default_best_val_rmse'))} kcal/mol in "
                     f"{_number(ch07.get('default_wall_s'), '.1f')} s; stopped run: {ch07.get('stopped_reason')}")
    bench = _read_json(ROOT / OUT / "benchmarks-cuda.json")
    for row in bench.get("throughput", []):
        if row.get("loop") == "engine" and "conformations_per_s" in row:
            lines.append(f"engine on {bench.get('device')}, batch {row['batch_size']}: "
                         f"{_number(row['conformations_per_s'], ',.0f')} conformations/s")
    if "small_batch" in bench:
        lines.append(f"faster step at batch {bench['small_batch']['batch_size']}: {bench['small_batch']['winner']}")
    return lines


def summary(steps: list[Step]) -> str:
    """The closing report: each step's status and time, where the results are, highlights."""
    rows = [f"  {s.name:<11} {'ok' if s.ok else f'FAILED (exit {s.returncode})':<18} {s.seconds:7.1f} s"
            for s in steps]
    total = sum(s.seconds for s in steps)
    out = ["", "=== gpu-check summary", *rows, f"  {'total':<11} {'':<18} {total:7.1f} s",
           f"Executed chapters and metrics: {OUT}/", f"Benchmark results (JSON): {OUT / 'benchmarks-cuda.json'}"]
    return "\n".join(out + [f"  {line}" for line in highlights()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    (ROOT / OUT).mkdir(parents=True, exist_ok=True)
    env, table = environment(), commands()
    steps = [run_step(table[name], env) for name in STEPS if name in chosen]
    report = summary(steps)
    print(report)
    (ROOT / OUT / "summary.txt").write_text(report.lstrip() + "\n")
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
