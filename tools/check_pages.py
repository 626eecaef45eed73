"""What a reader of the built pages must never see: machine paths, build machinery, raw math, NaN.

``tests/test_book.py`` runs these checks on every page of the quick book; run them on pages you
built yourself with ``python tools/check_pages.py PAGE.html ...`` (prints the problems, exits 1
if there are any). To check one chapter alone::

    ANIBOOK_QUICK=1 papermill book/04_model_training.ipynb /tmp/ch04/04_model_training.ipynb --cwd book
    jupyter-book build /tmp/ch04/04_model_training.ipynb     # single-page build, outputs kept
    python tools/check_pages.py /tmp/ch04/_build/_page/04_model_training/html/04_model_training.html
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/|/Users/|\.cache/anibook|site-packages|[A-Z]:\\\\)")
MACHINERY_CALLS = ("record_metrics(", "glue(", "NBVAL_CHECK_OUTPUT")
RAW_MATH = re.compile(r"\$\$|\$[^\s$][^$\n]*\$|\\\(|\\\[")
HIDDEN_INPUT = ("tag_hide-input", "tag_hide-cell", "tag_remove-input", "tag_remove-cell")


def visible_inputs(body) -> list[str]:
    """The source of every code cell whose input a reader sees (not behind a toggle)."""
    return [cell.find(class_="cell_input").get_text() for cell in body.find_all("div", class_="cell")
            if cell.find(class_="cell_input") and not set(HIDDEN_INPUT) & set(cell.get("class", []))]


def prose(body) -> str:
    """The page's text outside code, outputs and typeset math."""
    body = copy.copy(body)
    for node in body.find_all(["pre", "code", "script"]) + body.find_all(class_=["math", "cell_output"]):
        node.decompose()
    return body.get_text(" ")


def page_problems(html: str) -> list[str]:
    """Everything on a built page (its ``<article>``) that a reader should not see."""
    from bs4 import BeautifulSoup

    body = BeautifulSoup(html, "html.parser").find("article")
    if body is None:
        return ["no <article> on the page"]
    problems = []
    text = body.get_text(" ")
    paths = sorted(set(MACHINE_PATH.findall(text)))
    if paths:
        problems.append(f"machine paths: {paths}")
    if "PosixPath(" in text:
        problems.append("a PosixPath is printed")
    for source in visible_inputs(body):
        shown = [call for call in MACHINERY_CALLS if call in source]
        if shown:
            problems.append(f"a visible cell shows {shown} (tag it remove-cell): {source[:100]!r}")
    raw = RAW_MATH.findall(prose(body))
    if raw:
        problems.append(f"math left as text: {raw[:5]}")
    for table in body.find_all("table"):
        if any(td.get_text().strip().lower() == "nan" for td in table.find_all("td")):
            problems.append(f"NaN in a table: {table.get_text(' ')[:150]!r}")
    return problems


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        for problem in page_problems(Path(path).read_text()):
            failed = True
            print(f"{Path(path).name}: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
