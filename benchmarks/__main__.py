"""Run the ANI Book's benchmark suite and print its tables (``python -m benchmarks --help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .suite import DEVICE_SECTIONS, SECTIONS, report, run


def _device(parser: argparse.ArgumentParser, name: str | None, sections: tuple[str, ...]) -> str | None:
    """The checked ``--device`` (None when not given); errors go through ``parser.error``."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        parser.error(f"--device {name!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: choose cpu or cuda")
    others = sorted(set(sections) - set(DEVICE_SECTIONS))
    if device.type != "cpu" and others:
        parser.error(f"--device {name} runs only the sections {','.join(DEVICE_SECTIONS)}; "
                     f"drop {','.join(others)} (they measure the CPU)")
    return str(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="short runs (for tests and the quick book)")
    parser.add_argument("--json", default="_build/benchmarks.json", help="where to write the results")
    parser.add_argument("--cap", type=float, default=180.0, help="time cap (s) for the book's recipe")
    parser.add_argument("--torchani-cap", type=float, default=300.0, help="time cap (s) for the TorchANI recipe")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda: where the throughput and time-to-accuracy sections run (with cuda "
                             f"only the sections {','.join(DEVICE_SECTIONS)}). Default: as before, throughput "
                             "and TorchANI's recipe on the CPU, the book's recipe on the engine's device='auto'")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    device = _device(parser, args.device, sections)
    min_seconds = 0.5 if args.quick else 3.0
    cap, torchani_cap = (10.0, 10.0) if args.quick else (args.cap, args.torchani_cap)
    results = run(sections, args.quick, min_seconds, cap, torchani_cap, device=device)
    print(report(results))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nResults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
