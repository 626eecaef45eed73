"""A stand-in for Google Colab's GPU runtime: a virtual environment with Colab's own versions.

Colab publishes what its runtime has installed (``tools/colab/pip-freeze.gpu.txt``). This module
builds, once, a cached virtual environment holding that file's version of every package the book
touches: the book's dependency closure as pip resolves it under Colab's versions (``pip install
--dry-run --report``), plus the notebook front end and pytest, and pip and setuptools themselves.
What Colab lacks (torchani, py3Dmol, PySCF, ...) is left out, for the book's setup cell to add.

Stand-ins: Python 3.11 for Colab's 3.13, and the torch 2.13.0 CPU build on this disk for Colab's
2.11.0+cu128 (its CUDA builds are multi-GB downloads); neither CUDA nor Python 3.13 is checked.

Command line (the test suite calls the same functions)::

    python tools/colab_env.py build     # build or reuse the environment, print its path
    python tools/colab_env.py freeze    # the versions it holds
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
FREEZE = ROOT / "tools" / "colab" / "pip-freeze.gpu.txt"
TORCH = "torch==2.13.0"
"""The build on this disk that stands in for Colab's torch 2.11.0+cu128."""
FRONT_END = ("ipykernel", "ipython", "ipywidgets", "widgetsnbextension", "jupyterlab_widgets",
             "notebook", "pytest")
"""What Colab's kernel and classic front end run on, and the test runner, all in Colab's versions."""
NOT_STAND_INS = re.compile(r"^(torch|torchvision|torchaudio|torchcodec|triton|nvidia-.*|.*-cu1[23])$")
"""Colab's CUDA builds: replaced by the CPU torch, never pinned."""
FOLLOW_TORCH = {"setuptools": "torch 2.13.0 needs setuptools>=77.0.3; Colab's torch 2.11 runs with its 75.2.0"}
"""Colab packages the torch stand-in needs in another version: left to torch's requirement."""
LAYOUT = 1
"""Bump to rebuild cached environments after a change to how they are built."""


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_versions(freeze: Path = FREEZE) -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` line of Colab's list (URL installs, the
    CUDA builds of torch and its kin, and :data:`FOLLOW_TORCH` are left out)."""
    versions = {}
    for line in freeze.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        if match and not NOT_STAND_INS.match(normalise(match[1])) and normalise(match[1]) not in FOLLOW_TORCH:
            versions[normalise(match[1])] = match[2]
    return versions


def env_dir() -> Path:
    """Where the environment is cached: ``ANIBOOK_COLAB_ENV``, else ``~/.cache/anibook/colab-env``."""
    configured = os.environ.get("ANIBOOK_COLAB_ENV")
    return Path(configured) if configured else Path.home() / ".cache" / "anibook" / "colab-env"


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def _pip(env: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    command = [str(python_of(env)), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def installed(env: Path) -> dict[str, str]:
    """``{name: version}`` of everything installed in ``env`` (editable installs included)."""
    listing = json.loads(_pip(env, "list", "--format", "json").stdout)
    return {normalise(p["name"]): p["version"] for p in listing}


@contextlib.contextmanager
def locked(env: Path) -> Iterator[None]:
    """Hold the environment alone (two test sessions must not install into it at once)."""
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


BOOK_EXTRAS = ("reference",)
"""The package extras chapters install on Colab (``anibook_utils.colab.CHAPTER_EXTRAS``)."""


def _book_requirements() -> list[str]:
    """The book's requirements with every extra a chapter installs on Colab."""
    return [f"anibook-utils[{','.join(BOOK_EXTRAS)}] @ {ROOT.as_uri()}"]


def _resolve_under_colab(env: Path, constraints: Path) -> dict[str, str]:
    """What pip installs for the book under Colab's versions, from a scratch resolution."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip(env, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
             "-c", str(constraints), TORCH, *FRONT_END, *_book_requirements())
        resolved = json.loads(report.read_text())["install"]
    return {normalise(item["metadata"]["name"]): item["metadata"]["version"] for item in resolved}


def _key() -> str:
    """What the environment depends on: Colab's list, the book's requirements, the stand-ins."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: project.get("optional-dependencies", {}).get(name) for name in BOOK_EXTRAS}
    parts = [FREEZE.read_text(), project["dependencies"], extras, TORCH, FRONT_END, FOLLOW_TORCH,
             sys.version, LAYOUT]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(env: Path | None = None, log=print) -> Path:
    """Build the environment, or reuse it when nothing it depends on changed; return its path.

    The stamp file ``.colab-stamp`` records the key and the versions; a partial build (or one
    whose versions no longer match Colab's) is rebuilt from scratch.
    """
    env = env or env_dir()
    stamp = env / ".colab-stamp"
    key = _key()
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return env
    log(f"colab_env: building the Colab stand-in environment (cached in {env.name}; about two minutes)")
    shutil.rmtree(env, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    colab = colab_versions()
    constraints = env / "colab-constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(colab.items())))
    _pip(env, "install", "--quiet", f"pip=={colab['pip']}")
    resolved = _resolve_under_colab(env, constraints)
    preinstalled = sorted(name for name in resolved if name in colab)
    _pip(env, "install", "--quiet", "-c", str(constraints), TORCH,
         *(f"{name}=={colab[name]}" for name in preinstalled))
    versions = installed(env)
    drift = {n: (v, colab[n]) for n, v in versions.items() if n in colab and v != colab[n]}
    if drift:
        raise RuntimeError(f"colab_env: installed versions differ from Colab's: {drift}")
    stamp.write_text(json.dumps({"key": key, "versions": versions, "not_on_colab":
                                 sorted(n for n in resolved if n not in colab)}, indent=1))
    return env


def restore(env: Path, baseline: dict[str, str]) -> None:
    """Uninstall whatever was added to ``env`` since ``baseline``; a changed version of a
    baseline package cannot be undone this way, so the stamp is removed (rebuilt next time)."""
    now = installed(env)
    added = sorted(set(now) - set(baseline))
    if added:
        _pip(env, "uninstall", "--yes", "--quiet", *added)
    if any(now.get(name) != version for name, version in baseline.items()):
        (env / ".colab-stamp").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    env = env_dir()
    with locked(env):
        if command == "build":
            print(build(env))
        elif command == "freeze":
            for name, version in sorted(installed(build(env)).items()):
                print(f"{name}=={version}")
        else:
            print(f"usage: python tools/colab_env.py [build|freeze]; got {command!r}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
