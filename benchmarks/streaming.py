"""Streaming from disk (chapter 10): memory against the data set's size, and the cost per step.

Memory: for the real file and copies with every conformation repeated (as the loading section
makes them: 10^4, 10^5, 10^6 conformations), a fresh process opens the file as an
:class:`~anibook_utils.streaming.H5Stream`, takes the book's training split, fits the self
energies (one pass over the energies) and trains the course's networks for a fixed number of
steps on batches read from disk, with AEVs computed in each step. ``setup_mb`` and ``train_mb``
are the resident memory added to the process after its imports, after the setup and after the
steps: what grows with the data is only the index of chunks (32 bytes per 32 conformations).
These processes use one CPU thread each.

Throughput: the same steps (forward with AEVs computed in the step, backward, Adam) on the same
training set, fed from memory (``Feeder(feed="in_step")``) and from disk (``StreamFeeder``, the
clock including the reads), so the difference is the cost of reading and padding the batches;
the engine's default path, with AEVs precomputed once, is in the throughput section. Each
reports the median step, which a busy machine disturbs less than the mean, and the two are
measured in turn several times, each keeping its fastest round.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .scaling import write_repeated

_STREAM_SCRIPT = """
import json, sys, time

def rss_mb():  # resident memory now
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

from benchmarks.streaming import streamed_steps
from anibook_utils import aev, feeding, models, self_energy  # every import before the baseline
from anibook_utils.streaming import H5Stream
from anibook_utils.training import configure_threads
configure_threads(1)  # the memory is the point: one thread keeps the steps steady on a shared machine
base_mb = rss_mb()
start = time.perf_counter()
stream = H5Stream(sys.argv[1], chunk=32)
index_s = time.perf_counter() - start
record = streamed_steps(stream, int(sys.argv[2]), int(sys.argv[3]), after_setup=lambda: rss_mb() - base_mb)
record.update(conformations=len(stream), index_s=index_s, train_mb=rss_mb() - base_mb)
print(json.dumps(record))
"""


def _model_and_optimizer(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from anibook_utils.models import ArchitectureSpec, build_model

    model = build_model(ArchitectureSpec.course(), seed=0).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, energies: torch.Tensor,
          targets: torch.Tensor) -> None:
    loss = (energies - targets).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def streamed_steps(stream, batch_size: int, steps: int, after_setup=lambda: None,
                   device: str | torch.device = "cpu") -> dict:
    """Set up the book's training split of ``stream`` (index, self energies) and time ``steps``
    training steps on batches read from disk (AEVs in the step)."""
    from anibook_utils.aev import COURSE_AEV_CONSTANTS
    from anibook_utils.data import BOOK_SPLIT
    from anibook_utils.streaming import StreamFeeder, stream_self_energies

    device = torch.device(device)
    start = time.perf_counter()
    train_view = stream.split(BOOK_SPLIT, seed=0)[0]
    model, optimizer = _model_and_optimizer(device)
    feeder = StreamFeeder(model, train_view, stream_self_energies(train_view), device, COURSE_AEV_CONSTANTS)
    setup_s, setup_mb = time.perf_counter() - start, after_setup()
    batches = feeder.batches(batch_size, epoch=0, seed=0, limit=steps + 1)
    species, coordinates, targets, _, _ = next(batches)  # the first step warms up
    _step(model, optimizer, feeder.predict(species, coordinates, False)[0], targets)
    times, start = [], time.perf_counter()
    for species, coordinates, targets, _, _ in batches:  # the clock includes reading the batch
        _step(model, optimizer, feeder.predict(species, coordinates, False)[0], targets)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    step = statistics.median(times)
    return {"train_conformations": len(train_view), "setup_s": setup_s, "setup_mb": setup_mb,
            "steps": len(times), "step_ms": 1e3 * step, "conformations_per_s": batch_size / step}


def in_memory_steps(data, batch_size: int, steps: int, device: str | torch.device = "cpu") -> dict:
    """The same steps fed from memory: the book's training split held as tensors, AEVs in the step."""
    from anibook_utils.aev import COURSE_AEV_CONSTANTS
    from anibook_utils.data import BOOK_SPLIT, split_dataset
    from anibook_utils.feeding import Feeder
    from anibook_utils.self_energy import fit_self_energies, shift_energies

    device = torch.device(device)
    train_set = split_dataset(data, BOOK_SPLIT, seed=0)[0]
    model, optimizer = _model_and_optimizer(device)
    feeder = Feeder(model, train_set, "in_step", device, COURSE_AEV_CONSTANTS)
    targets = shift_energies(train_set, self_energies=fit_self_energies(train_set, warn=False)).float().to(device)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
    predict, y = feeder.ordered(order.to(device)), targets.index_select(0, order.to(device))
    _step(model, optimizer, predict(0, batch_size), y[:batch_size])  # warm-up
    times = []
    for k in range(1, steps + 1):
        low, high = k * batch_size, (k + 1) * batch_size
        start = time.perf_counter()
        _step(model, optimizer, predict(low, high), y[low:high])
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"train_conformations": len(train_set), "steps": steps, "step_ms": 1e3 * step,
            "conformations_per_s": batch_size / step}


def streaming_memory(source: str, repeats: tuple[int, ...] = (1, 10, 100), batch_size: int = 256,
                     steps: int = 20) -> list[dict]:
    """Resident memory and step time of streamed training, a fresh process per size."""
    rows = []
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        for repeat in repeats:
            path = source if repeat == 1 else str(Path(folder) / f"x{repeat}.h5")
            if repeat != 1:
                write_repeated(source, Path(path), repeat)
            out = subprocess.run([sys.executable, "-c", _STREAM_SCRIPT, path, str(batch_size), str(steps)],
                                 check=True, capture_output=True, text=True, cwd=root).stdout
            record = json.loads(out.strip().splitlines()[-1])
            record.update(repeat=repeat, file_mb=Path(path).stat().st_size / 1e6, batch_size=batch_size)
            rows.append(record)
    return rows


def streaming_throughput(data, batch_size: int = 256, steps: int = 20, rounds: int = 3) -> list[dict]:
    """Conformations per second of the same training step fed from memory and from disk.

    The two are measured in turn, ``rounds`` times each, and each keeps its fastest round: on a
    machine shared with other work, a burst of load then slows one round of both rather than
    all of one and none of the other."""
    from anibook_utils.streaming import H5Stream

    stream = H5Stream(data.source, chunk=32)
    trials = [(in_memory_steps(data, batch_size, steps), streamed_steps(stream, batch_size, steps))
              for _ in range(rounds)]
    fastest = [min((trial[k] for trial in trials), key=lambda row: row["step_ms"]) for k in (0, 1)]
    memory = {"path": "in memory (AEVs in the step)", **fastest[0]}
    streamed = {"path": "streamed from disk (AEVs in the step)", **fastest[1]}
    for row in (memory, streamed):
        row.update(batch_size=batch_size, rounds=rounds)
    streamed["relative"] = streamed["conformations_per_s"] / memory["conformations_per_s"]
    return [memory, streamed]
