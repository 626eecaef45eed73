"""Command line: ``python -m anibook_utils fetch-data``, ``list-data``, ``train`` (chapter 10) and ``reference``."""

from __future__ import annotations

import argparse
import sys


def _fetch_data(args: argparse.Namespace) -> int:
    import warnings

    from .data import DataError, fetch_dataset
    from .data.files import DigestRecordedWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DigestRecordedWarning)
            path = fetch_dataset(args.name, dest_dir=args.dest, url=args.url)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in caught:
        if issubclass(warning.category, DigestRecordedWarning):
            print(f"note: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(f"{args.name}: {path}")
    return 0


def _list_data(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for info in DATASETS.values():
        count = f"{info.conformations:>10,d}" if info.conformations is not None else f"{'unknown':>10s}"
        print(f"{info.name:16s} {info.filename:20s} {count} conformations  {info.description}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .cli_train import command

    return command(args)


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
    trainer = commands.add_parser(
        "train", help="train a model from a TOML run file, alone or under torchrun (chapter 10)",
        description="Train as a TOML run file says (see examples/s01.toml), in one process or under "
                    "`torchrun --nproc_per_node=N -m anibook_utils train ...`; rank 0 writes the log and checkpoints.")
    trainer.add_argument("--config", required=True, help="the run file (TOML), e.g. examples/s01.toml")
    trainer.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override one value of the run file (repeatable), e.g. --set train.epochs=2")
    trainer.set_defaults(run=_train)
    commands.add_parser("reference", help="PySCF reference labels (see `reference --help`)")
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
