"""How loading cost and training cost grow: more conformations, and bigger molecules.

Loading is measured in a fresh subprocess per size, so its memory is its own: ``data_mb`` is the
resident memory the loaded data set adds to the process after its imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

_LOAD_SCRIPT = """
import json, resource, sys, time

def rss_mb():  # resident memory now (the peak would be the import's transient one)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

start = time.perf_counter()
from anibook_utils.data import iterate_batches, read_ani_h5
import_s = time.perf_counter() - start
base_mb = rss_mb()
start = time.perf_counter()
data = read_ani_h5(sys.argv[1])
read_s = time.perf_counter() - start
start = time.perf_counter()
batches = sum(1 for _ in iterate_batches(data, 2560, shuffle=True, seed=0))
batch_s = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"conformations": len(data), "read_s": read_s, "batch_s": batch_s,
                  "batches": batches, "peak_rss_mb": peak_mb, "data_mb": rss_mb() - base_mb,
                  "import_s": import_s}))
"""


def write_repeated(source: str, target: Path, repeat: int) -> int:
    """Write ``source``'s molecule groups with every conformation repeated ``repeat`` times."""
    total = 0
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        def copy(name: str, obj: object) -> None:
            nonlocal total
            if isinstance(obj, h5py.Group) and "energies" in obj:
                group = dst.require_group(name)
                group["species"] = obj["species"][()]
                group["coordinates"] = np.tile(obj["coordinates"][()], (repeat, 1, 1))
                group["energies"] = np.tile(obj["energies"][()], repeat)
                total += group["energies"].shape[0]
        src.visititems(copy)
    return total


def loading_scaling(source: str, repeats: tuple[int, ...] = (1, 10, 100)) -> list[dict]:
    """Read + batch time and peak memory for the real file and its repeated copies."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in repeats:
            path = source if repeat == 1 else str(Path(folder) / f"x{repeat}.h5")
            if repeat != 1:
                write_repeated(source, Path(path), repeat)
            out = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, path], check=True,
                                 capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            record["repeat"] = repeat
            record["file_mb"] = Path(path).stat().st_size / 1e6
            rows.append(record)
    return rows
