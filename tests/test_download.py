"""The downloader against a local HTTP server serving a tarball built here (never the internet)."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from anibook_utils.__main__ import main as cli
from anibook_utils.data import DownloadError, dataset_info, fetch_dataset

MEMBER = "ANI-1_release/ani_gdb_s01.h5"


def make_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """These tests download, from 127.0.0.1 only (every call names its URL): lift the session's
    ANIBOOK_OFFLINE=1 (tests/conftest.py), which fetch_dataset obeys."""
    monkeypatch.setenv("ANIBOOK_OFFLINE", "0")


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (base_url, folder, request_log)."""
    folder = tmp_path / "www"
    folder.mkdir()
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, log
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def real_bytes(real_data) -> bytes:
    return Path(real_data.source).read_bytes()


def test_extracts_only_the_member_and_verifies(server, real_bytes, tmp_path):
    url, folder, log = server
    make_archive(folder / "release.tar.gz", {
        "ANI-1_release/readme.txt": b"hello",
        "ANI-1_release/ani_gdb_s02.h5": b"x" * 1000,
        MEMBER: real_bytes,
        "ANI-1_release/ani_gdb_s03.h5": b"y" * 1000,
    })
    dest = tmp_path / "data"
    path = fetch_dataset("ani_gdb_s01", dest, url=f"{url}/release.tar.gz", progress=False)
    assert path == dest / "ani_gdb_s01.h5"
    assert path.read_bytes() == real_bytes
    assert sorted(p.name for p in dest.iterdir()) == ["ani_gdb_s01.h5"]  # nothing else extracted
    assert len(log) == 1
    # the second call reuses the verified file and does not touch the network
    again = fetch_dataset("ani_gdb_s01", dest, url=f"{url}/release.tar.gz", progress=False)
    assert again == path and len(log) == 1


def test_second_call_needs_no_server(server, real_bytes, tmp_path):
    url, folder, _ = server
    make_archive(folder / "a.tar.gz", {MEMBER: real_bytes})
    dest = tmp_path / "data"
    fetch_dataset("ani_gdb_s01", dest, url=f"{url}/a.tar.gz", progress=False)
    assert fetch_dataset("ani_gdb_s01", dest, url="http://127.0.0.1:9/none", progress=False).is_file()


def test_corrupt_member_is_rejected_and_nothing_left(server, real_bytes, tmp_path):
    url, folder, _ = server
    damaged = bytearray(real_bytes)
    damaged[5000] ^= 0xFF
    make_archive(folder / "bad.tar.gz", {MEMBER: bytes(damaged)})
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="did not match its checksum"):
        fetch_dataset("ani_gdb_s01", dest, url=f"{url}/bad.tar.gz", progress=False)
    assert list(dest.iterdir()) == []


def test_truncated_download_is_rejected_and_nothing_left(server, real_bytes, tmp_path):
    url, folder, _ = server
    whole = make_archive(tmp_path / "whole.tar.gz", {MEMBER: real_bytes}).read_bytes()
    (folder / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="corrupt or was cut short"):
        fetch_dataset("ani_gdb_s01", dest, url=f"{url}/cut.tar.gz", progress=False)
    assert list(dest.iterdir()) == []


def test_archive_without_member(server, tmp_path):
    url, folder, _ = server
    make_archive(folder / "other.tar.gz", {"ANI-1_release/ani_gdb_s02.h5": b"z"})
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="holds no member 'ANI-1_release/ani_gdb_s01.h5'"):
        fetch_dataset("ani_gdb_s01", dest, url=f"{url}/other.tar.gz", progress=False)
    assert list(dest.iterdir()) == []


def test_unreachable_server(tmp_path):
    with pytest.raises(DownloadError, match="Could not reach.*ANIBOOK_DATA_DIR"):
        fetch_dataset("ani_gdb_s01", tmp_path, url="http://127.0.0.1:9/x.tar.gz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch_data(server, real_bytes, tmp_path, capsys):
    url, folder, _ = server
    make_archive(folder / "r.tar.gz", {MEMBER: real_bytes})
    assert cli(["fetch-data", "--dest", str(tmp_path), "--url", f"{url}/r.tar.gz"]) == 0
    assert (tmp_path / "ani_gdb_s01.h5").read_bytes() == real_bytes
    assert str(tmp_path / "ani_gdb_s01.h5") in capsys.readouterr().out
    assert cli(["fetch-data", "--dest", str(tmp_path / "x"), "--url", "http://127.0.0.1:9/r"]) == 1
    assert "Could not reach" in capsys.readouterr().err


def test_registry_entry_points_at_official_release():
    info = dataset_info("ani_gdb_s01")
    assert info.source_url == "https://ndownloader.figshare.com/files/9057631"
    assert info.archive_member == MEMBER


# --- subsets with no published checksum: the digest is recorded at first download ----------------

S02 = "ANI-1_release/ani_gdb_s02.h5"


def small_h5(path: Path, energies: list[float]) -> bytes:
    """A small ANI-1-layout file (two conformations of water), as bytes."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as handle:
        group = handle.create_group("gdb11_s02/gdb11_s02-0")
        group["species"] = np.array([b"O", b"H", b"H"])
        group["coordinates"] = np.zeros((len(energies), 3, 3), dtype=np.float32)
        group["energies"] = np.array(energies)
    return path.read_bytes()


def test_a_subset_without_published_checksum_records_its_digest_then_verifies_it(server, tmp_path, monkeypatch):
    import hashlib
    import json

    from anibook_utils.data import ChecksumMismatchError, locate_dataset
    from anibook_utils.data.files import DigestRecordedWarning, digest_record

    url, folder, log = server
    payload = small_h5(tmp_path / "s02.h5", [-76.0, -76.1])
    make_archive(folder / "release.tar.gz", {MEMBER: b"not needed", S02: payload})
    dest = tmp_path / "data"
    assert not dataset_info("ani_gdb_s02").published_digest
    with pytest.warns(DigestRecordedWarning, match="no published checksum"):
        path = fetch_dataset("ani_gdb_s02", dest, url=f"{url}/release.tar.gz", progress=False)
    record = json.loads(digest_record(path).read_text())
    assert record["sha256"] == hashlib.sha256(payload).hexdigest() and record["size"] == len(payload)
    assert record["source"].endswith("release.tar.gz")
    assert sorted(p.name for p in dest.iterdir()) == ["ani_gdb_s02.h5", "ani_gdb_s02.h5.sha256.json"]
    # later uses are verified against the record, without the network
    assert fetch_dataset("ani_gdb_s02", dest, url="http://127.0.0.1:9/none", progress=False) == path
    assert len(log) == 1
    damaged = bytearray(payload)
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ChecksumMismatchError, match="recorded at first download"):
        fetch_dataset("ani_gdb_s02", dest, progress=False)
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(dest))
    with pytest.raises(ChecksumMismatchError, match="sha256.json"):
        locate_dataset("ani_gdb_s02", download=False)


def test_a_new_download_must_match_the_recorded_digest(server, tmp_path):
    from anibook_utils.data.files import DigestRecordedWarning

    url, folder, _ = server
    first = small_h5(tmp_path / "a.h5", [-76.0])
    make_archive(folder / "a.tar.gz", {S02: first})
    dest = tmp_path / "data"
    with pytest.warns(DigestRecordedWarning):
        path = fetch_dataset("ani_gdb_s02", dest, url=f"{url}/a.tar.gz", progress=False)
    path.unlink()  # the file is gone, its record stays
    make_archive(folder / "b.tar.gz", {S02: small_h5(tmp_path / "b.h5", [-75.0])})
    with pytest.raises(DownloadError, match="the first download recorded"):
        fetch_dataset("ani_gdb_s02", dest, url=f"{url}/b.tar.gz", progress=False)
    assert not path.exists()
    assert fetch_dataset("ani_gdb_s02", dest, url=f"{url}/a.tar.gz", progress=False).read_bytes() == first


def test_a_member_that_is_not_hdf5_is_rejected_and_nothing_recorded(server, tmp_path):
    url, folder, _ = server
    make_archive(folder / "x.tar.gz", {S02: b"x" * 1000})
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="not an HDF5 file"):
        fetch_dataset("ani_gdb_s02", dest, url=f"{url}/x.tar.gz", progress=False)
    assert list(dest.iterdir()) == []


def test_a_file_found_on_disk_without_a_record_is_recorded(tmp_path, monkeypatch):
    from anibook_utils.data import locate_dataset
    from anibook_utils.data.files import DigestRecordedWarning, recorded_digest

    small_h5(tmp_path / "ani_gdb_s03.h5", [-76.0])
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path))
    with pytest.warns(DigestRecordedWarning, match="recorded now"):
        path = locate_dataset("ani_gdb_s03", download=False)
    assert recorded_digest(path) is not None
    locate_dataset("ani_gdb_s03", download=False)  # verified, no second warning needed


def test_cli_says_when_it_records_a_digest_and_lists_unknown_sizes(server, tmp_path, capsys):
    url, folder, _ = server
    make_archive(folder / "r.tar.gz", {S02: small_h5(tmp_path / "s.h5", [-76.0])})
    assert cli(["fetch-data", "--name", "ani_gdb_s02", "--dest", str(tmp_path / "d"), "--url", f"{url}/r.tar.gz"]) == 0
    assert "note: ani_gdb_s02.h5 has no published checksum" in capsys.readouterr().err
    assert cli(["list-data"]) == 0
    listing = capsys.readouterr().out
    assert "ani_gdb_s08" in listing and "unknown conformations" in listing
