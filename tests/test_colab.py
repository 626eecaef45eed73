"""The Colab setup cell (run with a fake Colab module, no network) and the Colab launch buttons."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from anibook_utils.colab import REPOSITORY_BRANCH, REPOSITORY_URL, SETUP_CELL
from book_layout import toc_files

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
COLAB_LINK = re.compile(r'href="(https://colab\.research\.google\.com/github/[^"]+)"')


def run_setup_cell(monkeypatch: pytest.MonkeyPatch, workdir: Path, *, on_colab: bool) -> list[list[str]]:
    """Execute SETUP_CELL in `workdir` with subprocess.run recorded (never run); return the commands."""
    commands: list[list[str]] = []

    def fake_run(command, *args, **kwargs):
        commands.append([str(part) for part in command])
        if command[:2] == ["git", "clone"]:
            Path(command[-1]).mkdir()  # what a real clone leaves behind
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(workdir)
    exec(compile(SETUP_CELL, "<setup cell>", "exec"), {"__name__": "__main__"})
    return commands


def test_config_repository_matches_the_setup_cell():
    repository = CONFIG["repository"]
    assert repository["url"].rstrip("/") == REPOSITORY_URL
    assert repository["branch"] == REPOSITORY_BRANCH
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPOSITORY_URL), REPOSITORY_URL
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_on_colab_the_cell_clones_installs_and_fetches(monkeypatch, tmp_path, capsys):
    commands = run_setup_cell(monkeypatch, tmp_path, on_colab=True)
    clone = tmp_path / "anibook"
    assert len(commands) == 3, commands
    git, pip, fetch = commands
    assert git[:2] == ["git", "clone"]
    assert CONFIG["repository"]["url"] in git
    assert git[git.index("--branch") + 1] == CONFIG["repository"]["branch"]
    assert git[-1] == str(clone)
    assert pip[:4] == [sys.executable, "-m", "pip", "install"]
    assert pip[-1] == str(clone), "pip must install the clone itself"
    assert not [arg for arg in pip if re.match(r"(torch|numpy)\b", arg)], f"pins Colab's torch/numpy: {pip}"
    assert fetch == [sys.executable, "-m", "anibook_utils", "fetch-data"]
    assert str(clone) in sys.path, "the clone must be importable in the running kernel"
    assert "GPU" in capsys.readouterr().out


def test_on_colab_a_second_run_reuses_the_clone(monkeypatch, tmp_path):
    (tmp_path / "anibook").mkdir()
    commands = run_setup_cell(monkeypatch, tmp_path, on_colab=True)
    assert [c[0] for c in commands] == [sys.executable, sys.executable], commands
    assert [c[2] for c in commands] == ["pip", "anibook_utils"]


def test_on_colab_the_cell_reports_the_gpu(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
    run_setup_cell(monkeypatch, tmp_path, on_colab=True)
    assert "Training runs on the GPU: Tesla T4" in capsys.readouterr().out


def test_elsewhere_the_cell_does_nothing(monkeypatch, tmp_path, capsys):
    path_before = list(sys.path)
    assert run_setup_cell(monkeypatch, tmp_path, on_colab=False) == []
    assert sys.path == path_before
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_install_does_not_pin_torch_or_numpy():
    """`pip install -e` of the clone must accept Colab's own torch and numpy: lower bounds only."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name in ("torch", "numpy"):
        if name in requirements:
            operators = {spec.operator for spec in requirements[name].specifier}
            assert operators <= {">="}, f"{name} is pinned or capped in pyproject.toml: {requirements[name]}"


def test_every_toc_entry_exists():
    for entry in toc_files():
        assert (ROOT / f"{entry}.ipynb").is_file() or (ROOT / f"{entry}.md").is_file(), entry


def colab_target(url: str) -> tuple[str, str, Path]:
    """Split a Colab launch URL into (repository URL, branch, path in the repository)."""
    match = re.fullmatch(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/(.+)", url)
    assert match, f"not a Colab GitHub URL: {url}"
    owner_repo, branch, path = match.groups()
    return f"https://github.com/{owner_repo}", branch, Path(path)


@pytest.mark.notebook
def test_launch_buttons_point_at_the_notebooks(quick_book):
    """Each notebook page's Colab link opens that very notebook in the configured repository and branch."""
    notebooks = [entry for entry in toc_files() if (ROOT / f"{entry}.ipynb").is_file()]
    assert notebooks, "no notebook chapter in _toc.yml"
    for entry in notebooks:
        links = set(COLAB_LINK.findall((quick_book / f"{entry}.html").read_text()))
        assert len(links) == 1, f"{entry}: expected one Colab launch link, found {links}"
        repository, branch, path = colab_target(links.pop())
        assert repository == REPOSITORY_URL, entry
        assert branch == REPOSITORY_BRANCH, entry
        assert path == Path(f"{entry}.ipynb"), f"{entry}: the launch button opens {path}"
        assert (ROOT / path).is_file(), path
