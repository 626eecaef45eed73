"""The registry of data sets the book knows (chapter 1; the larger ANI-1 subsets, chapter 10).

``data/README.md`` shows the same table for people; a test keeps the two in step. The ANI-1
release publishes no checksums: ``ani_gdb_s01``'s SHA-256 was recorded by this project, and
for the other subsets (``ani_gdb_s02`` ... ``ani_gdb_s08``), which the project has not
downloaded, ``sha256`` is empty: the downloader records the digest of the first download next
to the file (``<file>.sha256.json``) and verifies every later use against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownDatasetError

ANI1_ARCHIVE_URL = "https://ndownloader.figshare.com/files/9057631"
ANI1_CITATION = (
    "J. S. Smith, O. Isayev, A. E. Roitberg, ANI-1, A data set of 20 million calculated "
    "off-equilibrium conformations for organic molecules, Sci. Data 4, 170193 (2017)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """One known data file: where it comes from and how to check it.

    ``sha256`` is empty, and ``size`` and ``conformations`` are None, where no one has published
    them (then the SHA-256 is recorded at first download, see :mod:`anibook_utils.data.files`).
    """

    name: str
    filename: str
    sha256: str
    size: int | None
    conformations: int | None
    description: str
    source_url: str
    archive_member: str | None
    doi: str
    licence: str
    citation: str
    bundled: bool = False

    @property
    def published_digest(self) -> bool:
        """True when the registry itself holds the file's SHA-256 (else it is recorded at first download)."""
        return bool(self.sha256)


DATASETS: dict[str, DatasetInfo] = {
    "ani_gdb_s01": DatasetInfo(
        name="ani_gdb_s01",
        filename="ani_gdb_s01.h5",
        sha256="5d463ae53c74dc6fcac49494bc3201e9a4a59fad086023184b270348428f4b34",
        size=625_941,
        conformations=10_800,
        description="ANI-1, molecules with one heavy atom (CH4, NH3, H2O), wB97x/6-31G(d)",
        source_url=ANI1_ARCHIVE_URL,
        archive_member="ANI-1_release/ani_gdb_s01.h5",
        doi="10.6084/m9.figshare.c.3846712",
        licence="CC BY 4.0",
        citation=ANI1_CITATION,
    ),
    "anibook_nms_s01": DatasetInfo(
        name="anibook_nms_s01",
        filename="anibook_nms_s01.h5",
        sha256="b6e492a96bfea532f787286db9e5c778cf67c98e0aea8624ab5499d91310f6a3",
        size=273_070,
        conformations=2_160,
        description="CH4, NH3, H2O by normal-mode sampling, relabelled with PySCF at wB97x/6-31G(d) "
                    "(chapter 8); ships with the book, used when ANI-1 cannot be had",
        source_url="",
        archive_member=None,
        doi="",
        licence="CC BY 4.0",
        citation="The ANI Book, chapter 8 (generated with `python -m anibook_utils reference generate`)",
        bundled=True,
    ),
    "anibook_al_pool": DatasetInfo(
        name="anibook_al_pool",
        filename="anibook_al_pool.h5",
        sha256="3ee0b5bc3f60506b8481bf5502963529e2319c43621e01ff9854f2296e9ca45e",
        size=358_516,
        conformations=1_698,
        description="CH4, NH3, H2O candidates for active learning (chapter 11): normal-mode sampling at "
                    "300-5000 K, hot MD and bond scans, labelled with PySCF at wB97x/6-31G(d)",
        source_url="",
        archive_member=None,
        doi="",
        licence="CC BY 4.0",
        citation="The ANI Book, chapter 11 (generated with `python -m anibook_utils.active_learning generate-pool`)",
        bundled=True,
    ),
}


def _ani1_subset(heavy_atoms: int) -> DatasetInfo:
    """ANI-1's subset of GDB-11 molecules with ``heavy_atoms`` heavy atoms (C, N, O): a member
    of the same release archive as s01, with no published checksum, size or count."""
    name = f"ani_gdb_s{heavy_atoms:02d}"
    return DatasetInfo(
        name=name, filename=f"{name}.h5", sha256="", size=None, conformations=None,
        description=f"ANI-1, molecules with {heavy_atoms} heavy atoms (C, N, O), wB97x/6-31G(d); "
                    "SHA-256 recorded at first download",
        source_url=ANI1_ARCHIVE_URL, archive_member=f"ANI-1_release/{name}.h5",
        doi="10.6084/m9.figshare.c.3846712", licence="CC BY 4.0", citation=ANI1_CITATION,
    )


DATASETS.update({f"ani_gdb_s{n:02d}": _ani1_subset(n) for n in range(2, 9)})

DEFAULT_DATASET = "ani_gdb_s01"
FALLBACK_DATASET = "anibook_nms_s01"
"""Used in place of :data:`DEFAULT_DATASET` when ANI-1 is neither on disk nor downloadable."""


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry for ``name`` or raise :class:`UnknownDatasetError`."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDatasetError(
            f"Unknown data set {name!r}. Known data sets: {known}. "
            "To read a file of your own, pass its path instead of a name."
        ) from None
