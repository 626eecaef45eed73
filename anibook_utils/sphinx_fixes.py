"""Sphinx extension for the rendered book: fixes that keep the pages free of browser console errors.

Sphinx 7.4 lists an inline script added by an extension once per registration path (once with the
file name ``None``, once with ``""``), so sphinx-thebe's ``const THEBE_JS_URL = ...`` is written
twice into every page and the browser reports "Identifier 'THEBE_JS_URL' has already been
declared". This extension drops the repeated inline scripts. Registered in ``_config.yml``
(``sphinx.extra_extensions``); tests/test_browser.py checks the pages have no console errors.
"""

from __future__ import annotations

from typing import Any


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


def setup(app: Any) -> dict[str, Any]:
    """Register the page hook (Sphinx entry point)."""
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
