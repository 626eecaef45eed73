"""The rendered book in a real browser: headless Chromium (Debian's) driven by Playwright.

The quick book (fixture `quick_book`) is served over http on 127.0.0.1. Every page in _toc.yml must
load without console errors and show its figures; the navigation, the search, the Colab launch
button and the equations (MathJax) must work. Screenshots of every page are kept as test artefacts
in $ANIBOOK_ARTIFACTS_DIR/screenshots (default: _build/screenshots).

Needs /usr/bin/chromium (tools/install_browser.sh installs it) and the `playwright` package, never
Playwright's own browser download. The real book loads MathJax and 3Dmol.js from the jsDelivr CDN;
the tests run offline, so they answer jsDelivr's /npm/ URLs from the same npm package (fetched once
with `npm pack` into ~/.cache/anibook/npm, or $ANIBOOK_NPM_MIRROR) and block every other external
request. Missing pieces skip the tests locally and fail them on CI (env CI set).
"""

from __future__ import annotations

import functools
import http.server
import json
import mimetypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from anibook_utils.colab import REPOSITORY_BRANCH
from book_layout import toc_files
from browser_support import (  # noqa: F401  (screenshots, npm_mirror: fixtures used below)
    NpmMirror,
    launch_chromium,
    npm_mirror,
    screenshots,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.notebook


TOC = toc_files()
NOTEBOOKS = [entry for entry in TOC if (ROOT / f"{entry}.ipynb").is_file()]


def expected_figures(entry: str) -> int:
    """Figures the chapter draws: its code cells that call plt.show() (each has a caption)."""
    path = ROOT / f"{entry}.ipynb"
    if not path.is_file():
        return 0
    cells = json.loads(path.read_text())["cells"]
    return sum(c["cell_type"] == "code" and "plt.show()" in "".join(c["source"]) for c in cells)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser(playwright_session):
    chromium = launch_chromium(playwright_session)
    yield chromium
    chromium.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def book_url(quick_book: Path):
    """Serve the quick book on 127.0.0.1 (search needs http, not file://); yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(quick_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass
class Visit:
    """A browser tab on the book, with every problem it reported."""

    page: object
    base: str
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.page.goto(f"{self.base}/{path}", wait_until="load")
        self.wait_for_mathjax()

    def wait_for_mathjax(self) -> None:
        """Wait until MathJax (where the page loads it) has typeset the page."""
        self.page.evaluate(
            "() => (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)"
            " ? window.MathJax.startup.promise.then(() => true) : false"
        )

    def entry(self) -> str:
        """The TOC entry of the page shown now (e.g. 'book/01_data')."""
        path = urlsplit(self.page.url).path
        return path.lstrip("/").removesuffix(".html")

    def problems(self) -> list[str]:
        blocked = [f"blocked external request (the tests run offline and serve only jsDelivr's /npm/"
                   f" files, from npm): {url}" for url in self.blocked]
        return self.errors + blocked


@pytest.fixture
def visit(browser, book_url: str, npm_mirror: NpmMirror):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = Visit(context.new_page(), book_url)

    def route(route):
        url = route.request.url
        if url.startswith(book_url):
            return route.continue_()
        local, why = npm_mirror.file(url)
        if local is not None:
            kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
            return route.fulfill(path=str(local), content_type=kind)
        tab.blocked.append(f"{url} ({why})")
        return route.abort()

    def console(message):
        # Chromium asks for /favicon.ico by itself; the book has none, which is no page error.
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            tab.errors.append(f"console error: {message.text} ({message.location.get('url')})")

    def response(resp):
        if resp.status >= 400 and resp.url.startswith(book_url) and not resp.url.endswith("/favicon.ico"):
            tab.errors.append(f"HTTP {resp.status}: {resp.url}")

    context.route("**/*", route)
    tab.page.on("console", console)
    tab.page.on("pageerror", lambda exc: tab.errors.append(f"uncaught exception: {exc}"))
    tab.page.on("response", response)
    yield tab
    context.close()


def shot(tab: Visit, screenshots: Path, name: str, full_page: bool = True) -> None:
    tab.page.screenshot(path=str(screenshots / f"{name}.png"), full_page=full_page)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", TOC)
def test_page_loads_without_errors(visit, screenshots, entry):
    visit.open(f"{entry}.html")
    shot(visit, screenshots, entry.replace("/", "_"))
    assert visit.page.locator("article h1").count() >= 1, f"{entry}: no title"
    assert len(visit.page.inner_text("article").strip()) > 100, f"{entry}: the page is empty"
    assert not visit.problems(), f"{entry}:\n" + "\n".join(visit.problems())


@pytest.mark.parametrize("entry", TOC)
def test_figures_are_shown(visit, entry):
    visit.open(f"{entry}.html")
    images = visit.page.eval_on_selector_all(
        "article img",
        "imgs => imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,"
        " figure: !!i.closest('figure')}))",
    )
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{entry}: images that did not load: {broken}"
    figures = sum(i["figure"] for i in images)
    wanted = expected_figures(entry)
    assert figures >= wanted, f"{entry}: the notebook draws {wanted} figures, the page shows {figures}"


def _follow(visit, selector: str) -> list[str]:
    """The pages reached by clicking ``selector`` (next or previous) until there is none."""
    walked = [visit.entry()]
    while visit.page.locator(selector).count():
        with visit.page.expect_navigation(wait_until="load"):
            visit.page.click(selector)
        walked.append(visit.entry())
        assert len(walked) <= len(TOC), f"{selector} links run past the TOC: {walked}"
    return walked


def test_next_and_previous_links_walk_the_toc(visit):
    visit.page.goto(f"{visit.base}/")  # index.html redirects to the root page
    visit.page.wait_for_url(f"**/{TOC[0]}.html")
    visit.page.wait_for_load_state("load")
    assert _follow(visit, "a.right-next") == TOC
    assert _follow(visit, "a.left-prev") == TOC[::-1]
    assert not visit.problems(), "\n".join(visit.problems())


@pytest.mark.parametrize("entry", TOC)
def test_sidebar_lists_every_page(visit, entry):
    visit.open(f"{entry}.html")
    sidebar = visit.page.locator("nav.bd-docs-nav")
    assert sidebar.is_visible(), f"{entry}: no sidebar"
    links = sidebar.locator("a").evaluate_all("as => as.map(a => a.href.split('#')[0])")
    listed = [urlsplit(link).path.lstrip("/").removesuffix(".html") for link in links]
    assert listed == TOC, f"{entry}: the sidebar lists {listed}"
    target = TOC[-1] if entry != TOC[-1] else TOC[0]
    sidebar.locator("a").nth(TOC.index(target)).click()
    visit.page.wait_for_url(f"**/{target}.html")


def test_search_finds_methane(visit, screenshots):
    visit.open("search.html?q=methane")
    results = visit.page.locator("#search-results ul.search li")
    results.first.wait_for()
    visit.page.wait_for_function(
        "() => /Search finished/.test(document.querySelector('#search-results').innerText)"
    )
    shot(visit, screenshots, "search_methane")
    hrefs = results.locator("a").evaluate_all("as => as.map(a => a.href)")
    found = {urlsplit(h).path.lstrip("/").removesuffix(".html") for h in hrefs}
    assert found and found <= set(TOC), f"search results outside the TOC: {found}"
    assert TOC[0] in found, f"the root page mentions methane but is not found: {found}"
    assert not visit.problems(), "\n".join(visit.problems())


def test_search_box_on_a_page(visit):
    """Typing into the page's search box (Ctrl+K) leads to the results page."""
    visit.open(f"{TOC[-1]}.html")
    visit.page.keyboard.press("Control+k")
    box = visit.page.locator("#pst-search-dialog input[type=search]")
    box.wait_for(state="visible")
    box.fill("ammonia")
    box.press("Enter")
    visit.page.wait_for_url("**/search.html?q=ammonia*")
    visit.page.locator("#search-results ul.search li").first.wait_for()


@pytest.mark.parametrize("entry", NOTEBOOKS)
def test_colab_launch_button(visit, screenshots, entry):
    visit.open(f"{entry}.html")
    visit.page.click(".dropdown-launch-buttons button")
    colab = visit.page.locator(".dropdown-launch-buttons a[href*='colab.research.google.com']")
    colab.wait_for(state="visible")
    shot(visit, screenshots, f"launch_{entry.replace('/', '_')}", full_page=False)
    assert colab.get_attribute("href").endswith(f"/blob/{REPOSITORY_BRANCH}/{entry}.ipynb")
    assert "Colab" in colab.inner_text()


def pages_with_math(quick_book: Path) -> list[str]:
    return [e for e in TOC if 'class="math' in (quick_book / f"{e}.html").read_text()]


def test_equations_render(visit, quick_book):
    math_pages = pages_with_math(quick_book)
    if not math_pages:
        pytest.skip("no page in _toc.yml has equations yet")
    for entry in math_pages:
        visit.open(f"{entry}.html")
        version = visit.page.evaluate("() => window.MathJax && window.MathJax.version")
        assert str(version).startswith("3"), f"{entry}: MathJax 3 did not load ({version!r})"
        counts = visit.page.evaluate(
            "() => ({math: document.querySelectorAll('article .math').length,"
            " typeset: document.querySelectorAll('article .math mjx-container').length,"
            " errors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error'))})"
        )
        assert counts["math"] > 0
        assert counts["typeset"] >= counts["math"], f"{entry}: untypeset equations {counts}"
        assert not counts["errors"], f"{entry}: TeX errors {counts['errors']}"
    assert not visit.problems(), "\n".join(visit.problems())
