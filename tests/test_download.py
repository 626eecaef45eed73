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
