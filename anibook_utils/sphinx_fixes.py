"""Sphinx extension for the rendered book: offline equations, author-year bibliography labels, and
fixes that keep the pages free of browser console errors (every chapter; registered in
``_config.yml`` under ``sphinx.extra_extensions``).

**Equations offline.** Sphinx loads MathJax 3 from the jsDelivr CDN by default, so a book built on
(or read from) a machine without internet shows raw LaTeX. With ``anibook_offline_mathjax: true``
(the book's setting) the build copies MathJax 3 into ``_static/mathjax/`` and points
``mathjax_path`` at it. The files come from the pinned PyPI package ``django-static-mathjax``
(MathJax 3.2.2 exactly as its npm package ``mathjax-full`` lays it out), installed with the book's
``docs`` extra; the build downloads nothing. Only what the pages can load is copied: the
``tex-mml-chtml`` component (the one Sphinx uses from the CDN), its fonts, the TeX extensions it
autoloads and what its menu loads on demand (accessibility, speech rules).

**Bibliography labels.** The chapters cite author-year (``bibtex_reference_style: author_year``);
the ``anibook_author_year`` bibliography style labels the list the same way ("Smith et al.,
2017a"), so the text and the list agree. Two papers by the same authors in the same year are told
apart in ``book/references.bib`` itself (``year = {2017a}``, ``{2017b}``), which both use.

**Repeated inline scripts.** Sphinx 7.4 lists an inline script added by an extension once per
registration path (once with the file name ``None``, once with ``""``), so sphinx-thebe's
``const THEBE_JS_URL = ...`` is written twice into every page and the browser reports "Identifier
'THEBE_JS_URL' has already been declared". The page hook drops the repeated inline scripts;
tests/test_browser.py checks the pages have no console errors.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

MATHJAX_PACKAGE = "django-static-mathjax"
MATHJAX_PIN = "django-static-mathjax==3.2.2.1"
MATHJAX_COMPONENT = "tex-mml-chtml.js"
MATHJAX_FOLDERS = ("output/chtml/fonts/woff-v2", "input/tex/extensions", "input/mml", "a11y", "sre", "ui")
"""What the component loads on demand, relative to MathJax's ``es5/`` folder."""
MATHJAX_TARGET = "mathjax"
"""The folder under ``_static`` that receives the files (``mathjax_path`` is relative to ``_static``)."""


class MathJaxNotInstalledError(RuntimeError):
    """The offline build needs MathJax's files and the package that ships them is missing."""


def mathjax_source() -> Path:
    """The ``es5`` folder of the installed MathJax 3 (from ``django-static-mathjax``).

    Raises :class:`MathJaxNotInstalledError`, saying how to install it, when it is missing.
    """
    try:
        root = Path(str(resources.files("mathjax"))) / "static" / "mathjax"
    except (ModuleNotFoundError, TypeError):
        root = None
    if root is None or not (root / "es5" / MATHJAX_COMPONENT).is_file():
        raise MathJaxNotInstalledError(
            f"The book serves MathJax from its own pages so that equations render offline, and takes "
            f"the files from the Python package {MATHJAX_PACKAGE}, which is not installed. Install the "
            f"book's docs extra (pip install -e '.[docs]', or `make install`), or just "
            f"pip install '{MATHJAX_PIN}'. To load MathJax from the CDN instead, set "
            "anibook_offline_mathjax: false under sphinx.config in _config.yml.")
    return root / "es5"


def copy_mathjax(source: Path, target: Path) -> list[Path]:
    """Copy the component, its LICENSE and :data:`MATHJAX_FOLDERS` from ``source`` (MathJax's ``es5``
    folder) into ``target``; return the files written."""
    target.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy2(source / MATHJAX_COMPONENT, target / MATHJAX_COMPONENT))]
    licence = source.parent / "LICENSE"
    if licence.is_file():
        written.append(Path(shutil.copy2(licence, target / "LICENSE")))
    for folder in MATHJAX_FOLDERS:
        if (source / folder).is_dir():
            shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
            written += [p for p in (target / folder).rglob("*") if p.is_file()]
    return written


def _use_offline_mathjax(app: Any, config: Any) -> None:
    if not config.anibook_offline_mathjax:
        return
    mathjax_source()  # fail at the start of the build, with the fix, not after it
    config.mathjax_path = f"{MATHJAX_TARGET}/{MATHJAX_COMPONENT}"


def _copy_mathjax_files(app: Any, exception: Exception | None) -> None:
    if exception is not None or not app.config.anibook_offline_mathjax or app.builder.format != "html":
        return
    copy_mathjax(mathjax_source(), Path(app.outdir) / "_static" / MATHJAX_TARGET)


def _drop_repeated_inline_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        filename = getattr(script, "filename", script)
        attributes = getattr(script, "attributes", {})
        key = (filename or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if not filename and key in seen:
            continue
        seen.add(key)
        unique.append(script)
    scripts[:] = unique


def author_year_label(entry: Any) -> str:
    """"Smith et al., 2017a": the label sphinxcontrib-bibtex's author_year citations print."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [" ".join(person.prelast_names + person.last_names) for person in people]
    if not names:
        who = entry.fields.get("title", entry.key)
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    who = who.replace("{", "").replace("}", "")
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


def _register_bibliography_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries: Iterable[Any]) -> Iterable[str]:
            for entry in sorted_entries:
                yield author_year_label(entry)

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = "anibook_author_year"
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.labels", "anibook_author_year", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "anibook_author_year", AuthorYearStyle, force=True)


def setup(app: Any) -> dict[str, Any]:
    """Register the MathJax copy, the bibliography style and the page hook (Sphinx entry point)."""
    app.add_config_value("anibook_offline_mathjax", True, "html")
    app.connect("config-inited", _use_offline_mathjax)
    app.connect("build-finished", _copy_mathjax_files)
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    _register_bibliography_style()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
