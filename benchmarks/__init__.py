"""The ANI Book's benchmark suite: ``python -m benchmarks`` (see ``--help``)."""
