"""The book as a whole: table of contents, notebook hygiene, and a quick build that fails on warnings."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import coalesce_streams

from anibook_utils.colab import chapter_setup_cell
from book_layout import toc_files
from tools.check_pages import page_problems

ROOT = Path(__file__).resolve().parents[1]


def chapters() -> list[Path]:
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


def test_every_toc_entry_exists():
    for entry in toc_files():
        assert (ROOT / f"{entry}.ipynb").exists() or (ROOT / f"{entry}.md").exists(), entry


def test_every_notebook_in_book_is_in_the_toc():
    listed = {ROOT / f"{f}.ipynb" for f in toc_files()}
    assert set((ROOT / "book").glob("*.ipynb")) <= listed


@pytest.mark.parametrize("path", chapters(), ids=lambda p: p.stem)
def test_chapter_opening_cells(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "".join(code[0]["source"]) == chapter_setup_cell(path.stem), (
        "first code cell must be the chapter's setup cell (python tools/new_chapter.py --sync book/*.ipynb)")
    parameters = code[1]
    assert "parameters" in parameters["metadata"].get("tags", [])
    assert 'QUICK = os.environ.get("ANIBOOK_QUICK", "0") == "1"' in "".join(parameters["source"])


@pytest.mark.parametrize("path", chapters(), ids=lambda p: p.stem)
def test_outputs_stripped_except_checked_cells(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], f"{path.name}: saved widget state (run tools/strip_outputs.py)"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]):
            assert not cell["outputs"], f"{path.name}: committed output in {''.join(cell['source'])[:60]!r}"


@pytest.mark.parametrize("path", chapters(), ids=lambda p: p.stem)
def test_figures_have_captions(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "plt.show()" in source:
            caption = cell["metadata"].get("mystnb", {}).get("figure", {}).get("caption", "")
            assert caption.strip(), f"{path.name}: figure cell without a caption: {source[:60]!r}"


def test_figure_names_are_unique_across_the_book():
    names: dict[str, str] = {}
    for path in chapters():
        for cell in json.loads(path.read_text())["cells"]:
            name = cell["metadata"].get("mystnb", {}).get("figure", {}).get("name")
            if name:
                assert name not in names, f"figure name {name!r} in {path.name} and {names[name]}"
                names[name] = path.name


@pytest.mark.notebook
def test_quick_book_pages(quick_book):
    """The quick build (warnings are errors) has every page, no tracebacks, and a caption per figure."""
    assert (quick_book / "index.html").is_file()
    for entry in toc_files():
        page = (quick_book / f"{entry}.html").read_text()
        article = page[page.index("<article"): page.rindex("</article>")]
        assert "Traceback (most recent call last)" not in article, entry
        images = len(re.findall(r"<img ", article))
        captions = len(re.findall(r"<figcaption", article))
        assert captions >= images, f"{entry}: {images} images but {captions} captions"


# -- the outputs the notebooks commit (cells marked NBVAL_CHECK_OUTPUT) -------------------------

CHECK_MARKER = "NBVAL_CHECK_OUTPUT"
SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")
"""What nbval's lax mode leaves out of a comparison (its defaults)."""


def comparable(outputs) -> dict[str, list]:
    """A cell's outputs as nbval compares them: streams merged, keys and MIME types flattened."""
    flat: dict[str, list] = defaultdict(list)
    for output in coalesce_streams([nbformat.from_dict(dict(o)) for o in outputs]):
        if output.output_type == "stream":
            flat[output.name].append(output.text)
            continue
        for key, value in output.items():
            if key == "data":
                for mime, content in value.items():
                    if mime not in SKIP_COMPARE:
                        flat[mime].append(content)
            elif key not in SKIP_COMPARE:
                flat[key].append(value)
    return dict(flat)


def checked_chapters() -> list[Path]:
    return [p for p in chapters() if CHECK_MARKER in p.read_text()]


@pytest.mark.notebook
@pytest.mark.parametrize("path", checked_chapters(), ids=lambda p: p.stem)
def test_checked_outputs_match_the_committed_ones(path, executed):
    """The marked cells print what the notebook commits (nbval's lax comparison, on the one run)."""
    committed = nbformat.read(path, as_version=4)
    run = {cell.id: cell for cell in nbformat.read(executed(path.stem).notebook, as_version=4).cells}
    checked = [c for c in committed.cells if c.cell_type == "code" and CHECK_MARKER in c.source]
    assert checked
    for cell in checked:
        assert cell.outputs, f"{path.name}: a checked cell has no committed output: {cell.source[:60]!r}"
        assert comparable(run[cell.id].outputs) == comparable(cell.outputs), f"{path.name}: {cell.source[:80]!r}"


# -- what a reader of the built pages must never see ----------------------------------------------


@pytest.mark.notebook
@pytest.mark.parametrize("entry", toc_files())
def test_pages_show_ideas_not_machinery(quick_book, entry):
    """No machine paths, PosixPath, visible record_metrics/glue calls, raw math or NaN in tables."""
    problems = page_problems((quick_book / f"{entry}.html").read_text())
    assert not problems, f"{entry}:\n" + "\n".join(problems)
