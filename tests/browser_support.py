"""What the browser tests share: Debian's Chromium under Playwright, and an offline jsDelivr.

Used by tests/test_browser.py (the static book) and tests/test_frontends.py (live Jupyter front
ends). The pages load MathJax and 3Dmol.js from the jsDelivr CDN; the tests run offline, so
:class:`NpmMirror` answers jsDelivr's ``/npm/NAME@VERSION/PATH`` URLs from the same npm package
(fetched once with ``npm pack`` into ~/.cache/anibook/npm, or $ANIBOOK_NPM_MIRROR). Missing
pieces (Chromium, playwright, ...) skip the tests locally and fail them on CI (env CI set):
:func:`missing`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("ANIBOOK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
"""The static book's Chromium: no GPU at all (its pages need no WebGL)."""
WEBGL_ARGS = [
    *(arg for arg in CHROMIUM_ARGS if arg != "--disable-gpu"),  # --disable-gpu turns WebGL off
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
"""Chromium with WebGL on the CPU (SwiftShader, software GL), for 3Dmol.js's molecule viewer."""
JSDELIVR_NPM = re.compile(
    r"https://cdn\.jsdelivr\.net/npm/(?P<name>(?:@[^/@]+/)?[^/@]+)@(?P<version>[^/]+)/(?P<path>[^?#]+)"
)


def missing(reason: str) -> None:
    """Skip locally, fail on CI: CI must run the browser tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run there)")
    pytest.skip(reason)


def screenshots_folder() -> Path:
    """$ANIBOOK_ARTIFACTS_DIR/screenshots (default _build/screenshots), created."""
    base = Path(os.environ.get("ANIBOOK_ARTIFACTS_DIR") or ROOT / "_build")
    folder = base / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def launch_chromium(playwright, args: list[str] = CHROMIUM_ARGS):
    """Debian's Chromium (never Playwright's own download) under ``playwright``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)


def require_browser():
    """``sync_playwright``, or skip (fail on CI) when playwright or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed: pip install playwright")
    if not CHROMIUM.is_file():
        missing(f"no Chromium at {CHROMIUM}: run tools/install_browser.sh (or set ANIBOOK_CHROMIUM)")
    return sync_playwright


class NpmMirror:
    """The files jsDelivr serves under /npm/NAME@VERSION/, taken from the npm package itself."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.failures: dict[str, str] = {}

    def package(self, name: str, version: str) -> Path | None:
        spec = f"{name}@{version}"
        target = self.folder / spec.replace("/", "+")
        if target.is_dir() or spec in self.failures:
            return target if target.is_dir() else None
        npm = shutil.which("npm")
        if npm is None:
            self.failures[spec] = "npm is not installed"
            return None
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            packed = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", tmp],
                                    capture_output=True, text=True, timeout=300)
            if packed.returncode != 0:
                self.failures[spec] = f"npm pack {spec} failed: {packed.stderr[-500:]}"
                return None
            tarball = Path(tmp) / json.loads(packed.stdout)[0]["filename"]
            with tarfile.open(tarball) as archive:
                archive.extractall(Path(tmp) / "unpacked", filter="data")
            try:
                (Path(tmp) / "unpacked").rename(target)
            except OSError:
                if not target.is_dir():  # else another test session unpacked it first
                    raise
        return target

    def file(self, url: str) -> tuple[Path | None, str]:
        """The local copy of a jsDelivr URL, or None and why not."""
        match = JSDELIVR_NPM.match(url)
        if not match:
            return None, "not a jsDelivr /npm/ URL"
        root = self.package(match["name"], match["version"])
        if root is None:
            return None, self.failures[f"{match['name']}@{match['version']}"]
        root = root.resolve()
        local = (root / "package" / unquote(match["path"])).resolve()
        if local.is_relative_to(root) and local.is_file():
            return local, ""
        return None, f"the npm package has no {match['path']}"


def npm_mirror_folder() -> Path:
    """Where the npm packages are unpacked: $ANIBOOK_NPM_MIRROR or ~/.cache/anibook/npm."""
    folder = Path(os.environ.get("ANIBOOK_NPM_MIRROR") or Path.home() / ".cache" / "anibook" / "npm")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def screenshots() -> Path:
    return screenshots_folder()


@pytest.fixture(scope="session")
def npm_mirror() -> NpmMirror:
    return NpmMirror(npm_mirror_folder())
