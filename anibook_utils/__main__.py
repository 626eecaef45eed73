"""Command line: ``python -m anibook_utils fetch-data`` and friends."""

from __future__ import annotations

import argparse
import sys


def _fetch_data(args: argparse.Namespace) -> int:
    from .data import DataError, fetch_dataset

    try:
        path = fetch_dataset(args.name, dest_dir=args.dest, url=args.url)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {path}")
    return 0


def _list_data(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for info in DATASETS.values():
        print(f"{info.name:14s} {info.filename:22s} {info.conformations:>7,d} conformations  {info.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m anibook_utils``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reference":
        from .reference import reference_cli

        return reference_cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m anibook_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch-data", help="download and verify a data set")
    fetch.add_argument("--name", default="ani_gdb_s01", help="registry name (default ani_gdb_s01)")
    fetch.add_argument("--dest", default=None, help="target folder (default: ANIBOOK_DATA_DIR or data/)")
    fetch.add_argument("--url", default=None, help="archive URL (default: the official ANI-1 release)")
    fetch.set_defaults(run=_fetch_data)
    listing = commands.add_parser("list-data", help="list the data sets the book knows")
    listing.set_defaults(run=_list_data)
    commands.add_parser("reference", help="PySCF reference labels (see `reference --help`)")
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
