"""Kill and resume: a training process killed with SIGKILL at random points, also in the middle of
writing a checkpoint, resumes to exactly the result of an uninterrupted run (weights, optimiser
state and history, bit for bit on the CPU), and no temporary file survives the next successful save.

The training runs in a subprocess: this file itself, started with ``--worker FOLDER``. Its
``torch.save`` is slowed (``ANIBOOK_TEST_SLOW_SAVE`` seconds between the two halves of every
checkpoint file, announced on stdout), so kills land inside writes as well as between them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW_SAVE_ENV = "ANIBOOK_TEST_SLOW_SAVE"
METRICS = ("epoch", "train_rmse", "train_mae", "val_rmse", "val_mae", "loss", "lr")


def run_setup():
    """The spec, config and data subset of the run (the same in the test and in the worker)."""
    from anibook_utils.models import ArchitectureSpec
    from anibook_utils.training import TrainConfig

    spec = ArchitectureSpec({"H": (8,), "C": (8,), "N": (8,), "O": (8,)})
    config = TrainConfig.fast(epochs=6, batch_size=32, num_threads=1, device="cpu", checkpoint_every=1)
    return spec, config


def sets_of(data):
    """320 training and 80 validation conformations."""
    import torch

    from anibook_utils.data import split_dataset

    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(7))[:400]
    return split_dataset(data.subset(index), 0.8, seed=0)


def slow_torch_save(delay: float) -> None:
    """Make ``torch.save`` write each file in two halves, ``delay`` seconds apart, saying ``HALF <name>``
    in between: a kill then leaves a half-written temporary file, as a kill during a real write does."""
    import io

    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with contextlib.ExitStack() as stack:
            out = f if hasattr(f, "write") else stack.enter_context(open(f, "wb"))
            out.write(data[: len(data) // 2])
            out.flush()
            print(f"HALF {Path(f).name if isinstance(f, (str, os.PathLike)) else 'a file'}", flush=True)
            time.sleep(delay)
            out.write(data[len(data) // 2:])

    torch.save = save


def worker(folder: Path) -> None:
    """Train (resuming from ``folder`` if it holds a checkpoint) and say where it is on stdout."""
    import torch

    torch.set_num_threads(1)
    if os.environ.get(SLOW_SAVE_ENV):
        slow_torch_save(float(os.environ[SLOW_SAVE_ENV]))
    from anibook_utils.data import load_dataset
    from anibook_utils.training import train

    spec, config = run_setup()
    train_set, val_set = sets_of(load_dataset(download=False, fallback=False))
    print("READY", flush=True)
    train(spec, train_set, val_set, config, checkpoint_dir=folder, resume=True, progress=False,
          callback=lambda record: print(f"EPOCH {record['epoch']}", flush=True))
    print("DONE", flush=True)


# --- the test ----------------------------------------------------------------------------------


class Worker:
    """A worker subprocess whose stdout lines arrive on a queue."""

    def __init__(self, folder: Path, slow_save: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), SLOW_SAVE_ENV: str(slow_save)}
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", str(folder)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # end of output

    def wait_for(self, prefix: str, timeout: float = 300.0, on_line=None) -> bool:
        """Read lines until one starts with ``prefix`` (True) or the output ends (False)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                return False
            self.seen.append(line)
            if on_line is not None:
                on_line(line)
            if line.startswith(prefix):
                return True

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)


def temporaries(folder: Path) -> set[Path]:
    return set(folder.glob(".*.tmp"))


def check_consistent(folder: Path) -> None:
    """best.pt is never behind the best epoch latest.pt knows, and both load."""
    import torch

    if not (folder / "latest.pt").is_file():
        return
    latest = torch.load(folder / "latest.pt", weights_only=True)
    best = torch.load(folder / "best.pt", weights_only=True)
    assert latest["best"]["epoch"] <= best["best"]["epoch"], "latest.pt is ahead of best.pt"


def test_sigkill_at_random_points_resumes_to_the_uninterrupted_result(real_data, tmp_path):
    import torch

    from anibook_utils.training import train

    spec, config = run_setup()
    whole_dir, folder = tmp_path / "whole", tmp_path / "killed"
    train(spec, *sets_of(real_data), config, checkpoint_dir=whole_dir, progress=False)  # also fills the AEV cache

    rng = random.Random(20240611)
    plan = ["mid-write"] + [rng.choice(["after ready", "after an epoch", "mid-write"]) for _ in range(4)]
    pending: set[Path] = set()  # temporaries a kill left, to be gone after the next save
    cleared, kills, mid_write_orphans = 0, [], 0

    def after_a_save(line: str) -> None:
        nonlocal cleared, pending
        if line.startswith("EPOCH") and pending:  # an epoch line follows a completed save
            assert not any(p.exists() for p in pending), f"{pending} survived a successful save"
            cleared += len(pending)
            pending = set()

    for how in plan:
        worker = Worker(folder, slow_save=0.15)
        if how == "after ready":
            reached = worker.wait_for("READY", on_line=after_a_save)
            time.sleep(rng.uniform(0.0, 1.0))
        elif how == "after an epoch":
            reached = worker.wait_for("EPOCH", on_line=after_a_save)
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            reached = worker.wait_for("EPOCH", on_line=after_a_save) and worker.wait_for("HALF", on_line=after_a_save)
        if not reached or worker.process.poll() is not None:  # it finished (or died) before the kill
            worker.process.wait(timeout=60)
            break
        worker.kill()
        left = temporaries(folder)
        if how == "mid-write":
            assert left, "a kill in the middle of a write left no temporary file: the test missed the write"
            mid_write_orphans += 1
        pending |= left
        kills.append(how)
        check_consistent(folder)

    finisher = Worker(folder, slow_save=0.0)
    assert finisher.wait_for("DONE", on_line=after_a_save), finisher.process.stderr.read()
    assert finisher.process.wait(timeout=60) == 0
    assert not temporaries(folder), temporaries(folder)
    assert len(kills) >= 3 and mid_write_orphans >= 1 and cleared >= 1, (kills, mid_write_orphans, cleared)

    assert torch.load(folder / "latest.pt", weights_only=True)["epoch"] == config.epochs
    for name in ("latest.pt", "best.pt"):
        killed = torch.load(folder / name, weights_only=True)
        uninterrupted = torch.load(whole_dir / name, weights_only=True)
        assert killed["epoch"] == uninterrupted["epoch"]
        assert [tuple(r[k] for k in METRICS) for r in killed["history"]] == \
            [tuple(r[k] for k in METRICS) for r in uninterrupted["history"]]
        for part in ("model", "optimizers", "schedulers"):
            assert_equal(killed[part], uninterrupted[part], f"{name}:{part}")
        assert_equal(killed["best"], uninterrupted["best"], f"{name}:best")


def assert_equal(a, b, where: str) -> None:
    """Nested containers of tensors and plain values, equal bit for bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]))
