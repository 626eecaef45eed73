"""The live chapters in real Jupyter front ends, driven in headless Chromium (Debian's) by Playwright.

Two front ends, each started by the tests on 127.0.0.1 with a random token:

- ``classic``: the classic Jupyter Notebook 6.5 with ipywidgets 7.7.1, Colab's own versions (the
  closest to Colab's front end), in the stand-in for Colab's runtime (fixture ``colab``,
  tools/colab_env.py) where the book's setup cell installed the book;
- ``lab``: JupyterLab 4 with ipywidgets 8, in this virtual environment (the ``test`` extra).

In each, a reader's session: open ``07_interactive.ipynb``, run all cells from the menu, type a
new width and many epochs into the panel, press *Train*, watch the progress bar advance and the
learning curve change (at least three times) while another cell still runs, press *Stop*, find
the run in the table with its stop reason, then type an invalid width and read the panel's
message. And ``01_data.ipynb``'s molecule viewer (py3Dmol) must show a WebGL canvas.

The kernels inherit ANIBOOK_QUICK=1 and the data folder. Every request that leaves the server is
blocked, except jsDelivr's /npm/ URLs (3Dmol.js), answered from the npm package (browser_support).
Screenshots go to $ANIBOOK_ARTIFACTS_DIR/screenshots (default _build/screenshots), the servers'
logs to $ANIBOOK_ARTIFACTS_DIR/frontend_logs. Missing pieces (Chromium, playwright, jupyterlab,
the Colab stand-in) skip the tests locally and fail them on CI (env CI set).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from browser_support import (  # noqa: F401  (npm_mirror, screenshots: fixtures)
    WEBGL_ARGS,
    NpmMirror,
    launch_chromium,
    missing,
    npm_mirror,
    require_browser,
    screenshots,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 60_000  # one UI step on a busy 2-core machine
SERVER_START_S = 120
RUN_ALL_S = 600  # a whole chapter in quick mode
TRAIN_EPOCHS = 500  # typed into the panel: far more than the test waits for, so Stop ends the run
NEW_WIDTHS = "64, 32"  # the hydrogen network typed into the panel
FRONT_ENDS = ["classic", "lab"]

pytestmark = [pytest.mark.notebook, pytest.mark.frontend]

HARMLESS_CONSOLE = [
    # The classic Notebook typesets the chapters' markdown with its bundled MathJax 2, whose HTML-CSS
    # output declares @font-face {font-family: MathJax_Blank; src: url('about:blank')} as its "no
    # web font" default (nbclassic/static/components/MathJax/jax/output/HTML-CSS/jax.js). Chromium
    # refuses to load a font from about:blank and logs it twice; the equations render regardless.
    (re.compile(r"^Access to font at 'about:blank' from origin '[^']*' has been blocked by CORS policy"),
     re.compile(r"/notebooks/[^/]+\.ipynb"), "MathJax 2's MathJax_Blank @font-face (classic Notebook)"),
    (re.compile(r"^Failed to load resource: net::ERR_FAILED$"), re.compile(r"^about:blank$"),
     "MathJax 2's MathJax_Blank @font-face (classic Notebook)"),
]
"""Console errors (text, page or resource URL, why) that the front ends themselves print in normal
operation: tolerated, and listed in $ANIBOOK_ARTIFACTS_DIR/frontend_logs/frontend_KIND_console.txt."""


def artifacts_dir() -> Path:
    return Path(os.environ.get("ANIBOOK_ARTIFACTS_DIR") or ROOT / "_build")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A Jupyter server started by the tests: its URL, token, process and log."""

    kind: str
    url: str
    token: str
    process: subprocess.Popen
    log: Path
    root: Path
    notes: list[str] = field(default_factory=list)
    python: Path = Path(sys.executable)  # the server's and its kernels' Python
    env: dict[str, str] = field(default_factory=dict)
    measured: dict[str, object] = field(default_factory=dict)  # by one test, checked by another

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else "(no log)"
        return f"--- {self.kind} server log ({self.log}), last {chars} characters:\n{text[-chars:]}"

    def notebook_url(self, name: str) -> str:
        """The page of notebook ``name``; in Lab, in a workspace of its own (a shared one would
        reopen the notebooks of earlier tests beside it)."""
        if self.kind == "classic":
            path = f"notebooks/{name}"
        else:
            path = f"lab/workspaces/{secrets.token_hex(4)}/tree/{name}"
        return f"{self.url}/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every notebook session (and its kernel), as File > Close and Shut Down would."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(20)


def server_env(tmp: Path) -> dict[str, str]:
    """The servers' (and so the kernels') environment: quick chapters, the data, and Jupyter
    folders of their own (no user settings, kernels or extensions leak in, nothing is written
    to the user's)."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernels keep their inline backend (figures in the outputs)
    env.pop("JUPYTER_PATH", None)
    folders = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
               "IPYTHONDIR": "ipython", "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
               "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces", "ANIBOOK_METRICS_DIR": "metrics"}
    for name, folder in folders.items():
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        env[name] = str(tmp / folder)
    env["ANIBOOK_QUICK"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel 6.17's debugger warns on Python 3.11
    return env


def start_server(kind: str, command: list[str], env: dict[str, str], root: Path, token: str,
                 port: int, log: Path) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(kind, f"http://127.0.0.1:{port}", token, process, log, root,
                    python=Path(command[0]), env=env)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the {kind} server exited with {process.returncode}\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=5) as reply:
                if reply.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop()
    pytest.fail(f"the {kind} server did not answer within {SERVER_START_S} s\n{server.log_tail()}")


def copy_notebooks(source: Path, target: Path) -> Path:
    """The chapters to open, in a folder of their own (the front end saves into it)."""
    target.mkdir(parents=True)
    for notebook in source.glob("*.ipynb"):
        shutil.copy2(notebook, target / notebook.name)
    return target


def root_flags() -> list[str]:
    return ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


def widgets_nbextension(python: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Whether the classic Notebook of ``python`` loads the widgets nbextension, and its listing."""
    listing = subprocess.run([str(python), "-m", "jupyter", "nbextension", "list"], env=env,
                             capture_output=True, text=True, timeout=120)
    text = listing.stdout + listing.stderr
    enabled = any("jupyter-js-widgets/extension" in line and "enabled" in line for line in text.splitlines())
    return enabled, text


def ipywidgets_version(python: Path, env: dict[str, str]) -> str:
    result = subprocess.run([str(python), "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                            env=env, capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or result.stderr[-500:]


def classic_server(colab: dict, tmp: Path, logs: Path) -> Server:
    python = Path(colab["python"])
    env = server_env(tmp)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    notes = []
    enabled, listing = widgets_nbextension(python, env)
    if not enabled:  # widgetsnbextension 3.6 enables itself in sys-prefix; say so when it did not
        subprocess.run([str(python), "-m", "jupyter", "nbextension", "enable", "--py", "--sys-prefix",
                        "widgetsnbextension"], env=env, capture_output=True, text=True, check=True)
        enabled, listing = widgets_nbextension(python, env)
        notes.append("the widgets nbextension was not enabled in the Colab stand-in: enabled with --sys-prefix")
    assert enabled, f"the widgets nbextension is not enabled in the classic Notebook:\n{listing}"
    root = copy_notebooks(Path(colab["clone"]) / "book", tmp / "notebooks")
    token, port = secrets.token_hex(16), free_port()
    command = [str(python), "-m", "notebook", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--NotebookApp.token={token}", f"--notebook-dir={root}", *root_flags()]
    server = start_server("classic", command, env, root, token, port, logs / "frontend_classic_server.log")
    server.notes.extend(notes)
    return server


def lab_server(tmp: Path, logs: Path) -> Server:
    try:
        import jupyterlab
    except ImportError:
        missing("jupyterlab is not installed: pip install -e '.[test]' (it needs 'jupyterlab>=4,<5')")
    if int(jupyterlab.__version__.split(".")[0]) != 4:
        missing(f"the front-end tests expect JupyterLab 4, this is {jupyterlab.__version__}")
    env = server_env(tmp)
    # Nothing that reaches the network: no news feed, no update check, no PyPI extension manager.
    (Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "extension_manager": "readonly"}}))
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no "get notified about news?" toast
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))  # every cell stays in the page, so the test can read them
    root = copy_notebooks(ROOT / "book", tmp / "notebooks")
    token, port = secrets.token_hex(16), free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *root_flags()]
    return start_server("lab", command, env, root, token, port, logs / "frontend_lab_server.log")


@pytest.fixture(scope="module", params=FRONT_ENDS)
def server(request, tmp_path_factory, real_data):
    """A running front end (``classic`` or ``lab``), stopped after its tests."""
    require_browser()
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"frontend-{kind}")
    logs = artifacts_dir() / "frontend_logs"
    (logs / f"frontend_{kind}_console.txt").unlink(missing_ok=True)  # this session's, filled by `tab`
    if kind == "classic":
        started = classic_server(request.getfixturevalue("colab"), tmp, logs)
    else:
        started = lab_server(tmp, logs)
    for note in started.notes:
        warnings.warn(f"{kind} front end: {note}", stacklevel=1)
    version = ipywidgets_version(started.python, started.env)
    wanted = "7.7.1" if kind == "classic" else "8."  # Colab's; JupyterLab 4's widgets
    if not version.startswith(wanted):
        started.stop()
        pytest.fail(f"the {kind} front end's kernel has ipywidgets {version}, expected {wanted}*")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def chromium(playwright_session):
    """Chromium with software WebGL (SwiftShader): 3Dmol.js draws with WebGL."""
    browser = launch_chromium(playwright_session, WEBGL_ARGS)
    yield browser
    browser.close()


# -- a browser tab on a front end -----------------------------------------------------------------


@dataclass
class Tab:
    """A Chromium tab on one front end, with what went wrong in it."""

    page: object
    server: Server
    errors: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    mirrored: list[str] = field(default_factory=list)

    @property
    def classic(self) -> bool:
        return self.server.kind == "classic"

    def problems(self) -> list[str]:
        blocked = [f"blocked external request (only jsDelivr's /npm/ files are served, from npm): {url}"
                   for url in self.blocked]
        return self.errors + blocked

    def context(self) -> str:
        """What to add to a failure message: the page's problems so far and the server log."""
        return "\n".join(["page problems:", *self.problems(), "tolerated console errors:", *self.tolerated,
                          self.server.log_tail()])

    # -- notebook-level actions, in each front end's own UI

    def open(self, notebook: str) -> None:
        self.page.goto(self.server.notebook_url(notebook), wait_until="load")
        if self.classic:
            self.page.wait_for_function(
                "() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
                " && Jupyter.notebook.kernel.is_connected()", timeout=SERVER_START_S * 1000)
            self.page.locator("#kernel_indicator_icon.kernel_idle_icon").wait_for(timeout=SERVER_START_S * 1000)
        else:
            self.page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            self.page.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]").wait_for(
                timeout=SERVER_START_S * 1000)
            self.page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(
                timeout=SERVER_START_S * 1000)

    def cells(self):
        return self.page.locator("#notebook-container > .cell" if self.classic else ".jp-Notebook .jp-Cell")

    def code_prompts(self) -> list[str]:
        selector = (".code_cell .input_prompt" if self.classic
                    else ".jp-Notebook .jp-CodeCell .jp-InputPrompt")
        return self.page.locator(selector).evaluate_all("ps => ps.map(p => p.innerText.trim())")

    def run_all(self) -> None:
        """Cell > Run All (classic) or Run > Run All Cells (Lab), from the menu bar."""
        if self.classic:
            self.page.click("#celllink")
            self.page.click("#run_all_cells > a")
        else:
            self.page.locator(".lm-MenuBar-item", has_text="Run").click()
            self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    def wait_until_all_ran(self, timeout_s: float = RUN_ALL_S) -> None:
        """Until every code cell has an execution count and the kernel is idle again."""
        done = re.compile(r"(In\s*)?\[\d+\]:")
        deadline = time.monotonic() + timeout_s
        prompts: list[str] = []
        while time.monotonic() < deadline:
            prompts = self.code_prompts()
            if prompts and all(done.fullmatch(p) for p in prompts) and self.kernel_idle():
                return
            self.page.wait_for_timeout(1000)
        pytest.fail(f"the notebook did not finish within {timeout_s} s; prompts {prompts}\n{self.context()}")

    def kernel_idle(self) -> bool:
        if self.classic:
            return self.page.locator("#kernel_indicator_icon.kernel_idle_icon").count() == 1
        return self.page.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]").count() == 1

    def error_outputs(self) -> list[str]:
        selector = (".output_error" if self.classic
                    else ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
        return self.page.locator(selector).evaluate_all("es => es.map(e => e.innerText.slice(0, 2000))")

    def run_notebook(self, notebook: str) -> None:
        """Open ``notebook``, run all its cells from the menu, wait for the kernel, and fail on
        any cell that raised."""
        self.open(notebook)
        self.run_all()
        self.wait_until_all_ran()
        errors = self.error_outputs()
        assert not errors, f"{self.server.kind}: cells raised:\n" + "\n".join(errors)

    def insert_cell_below(self, cell, code: str):
        """Select ``cell``, insert a code cell below it (Esc, B), type ``code`` and run it
        (Shift+Enter), as a reader would; return the new cell."""
        index = self.cells().evaluate_all("(cells, cell) => cells.indexOf(cell)", cell.element_handle())
        assert index >= 0, "the cell is not in the notebook"
        cell.locator(".input_prompt" if self.classic else ".jp-InputPrompt").first.click()
        keyboard = self.page.keyboard
        keyboard.press("Escape")  # command mode
        keyboard.press("b")  # a new code cell below, selected
        new = self.cells().nth(index + 1)
        selected = "selected" if self.classic else "jp-mod-active"
        from playwright.sync_api import expect

        expect(new).to_have_class(re.compile(rf"\b{selected}\b"))  # the inserted cell is the selected one
        keyboard.press("Enter")  # edit mode
        keyboard.type(code)
        keyboard.press("Shift+Enter")
        return new


def attach(tab: Tab, server: Server, npm_mirror: NpmMirror) -> None:
    """Route every request: the server's go through, jsDelivr's /npm/ come from the mirror, the rest
    is blocked and recorded; console errors and uncaught exceptions are recorded too."""
    context = tab.page.context

    def route(route):
        url = route.request.url
        if url.startswith(server.url) or url.startswith(("data:", "blob:")):
            return route.continue_()
        local, why = npm_mirror.file(url)
        if local is not None:
            kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
            tab.mirrored.append(url)
            return route.fulfill(path=str(local), content_type=kind)
        tab.blocked.append(f"{url} ({why})")
        return route.abort()

    def console(message):
        if message.type != "error":
            return
        text = f"console error: {message.text} ({message.location.get('url')})"
        for pattern, where, why in HARMLESS_CONSOLE:
            if pattern.search(message.text) and where.search(message.location.get("url") or ""):
                tab.tolerated.append(f"{text} [tolerated: {why}]")
                return
        tab.errors.append(text)

    context.route("**/*", route)
    tab.page.on("console", console)
    tab.page.on("pageerror", lambda exc: tab.errors.append(f"uncaught exception: {exc}"))


@pytest.fixture
def tab(chromium, server, npm_mirror):
    context = chromium.new_context(viewport={"width": 1400, "height": 1600})
    context.set_default_timeout(TIMEOUT_MS)
    visit = Tab(context.new_page(), server)
    attach(visit, server, npm_mirror)
    yield visit
    context.close()
    server.shutdown_kernels()  # a kernel left running would slow the next test
    if visit.tolerated:  # kept for review next to the server's log
        with open(artifacts_dir() / "frontend_logs" / f"frontend_{server.kind}_console.txt", "a") as out:
            out.write("".join(f"{line}\n" for line in visit.tolerated))


def shot(target, screenshots: Path, name: str) -> bytes:
    """Save a screenshot of ``target`` (a page: the window; a locator: that element)."""
    return target.screenshot(path=str(screenshots / f"{name}.png"))


# -- chapter 7's panel ----------------------------------------------------------------------------

CURVE_WATCH = """(img) => {
    // Every picture the curve shows after this: its src, and a checksum of its pixels.
    const watch = window.__anibookCurve = {srcs: [img.src], sums: []};
    img.addEventListener('load', () => {
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const g = canvas.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, canvas.width, canvas.height).data;
        let sum = 0;
        for (let i = 0; i < d.length; i += 4) sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0;
        watch.sums.push(sum);
    });
    new MutationObserver(() => {
        if (img.src !== watch.srcs[watch.srcs.length - 1]) watch.srcs.push(img.src);
    }).observe(img, {attributes: true, attributeFilter: ['src']});
}"""

TABLE_GAP = """(table) => {
    // The narrowest horizontal gap, in pixels, between the text of two neighbouring cells of a row.
    const textRects = (cell) => { const r = document.createRange(); r.selectNodeContents(cell);
                                  return [...r.getClientRects()]; };
    let gap = Infinity;
    for (const row of table.querySelectorAll('tr')) {
        const cells = [...row.children];
        for (let i = 0; i + 1 < cells.length; i++) {
            const a = textRects(cells[i]), b = textRects(cells[i + 1]);
            if (a.length && b.length)
                gap = Math.min(gap, Math.min(...b.map(r => r.left)) - Math.max(...a.map(r => r.right)));
        }
    }
    return gap;
}"""

TABLE_ROWS = """(table) => {
    const heads = [...table.querySelectorAll('thead th')].map(h => h.innerText.trim());
    return [...table.querySelectorAll('tbody tr')].map(
        row => Object.fromEntries([...row.children].map((td, i) => [heads[i], td.innerText.trim()])));
}"""


class Panel:
    """The TrainingPanel's widgets in the page (ipywidgets 7 and 8 use the same class names)."""

    def __init__(self, tab: Tab) -> None:
        self.tab = tab
        page = tab.page
        self.cell = tab.cells().filter(has=page.locator(".widget-label", has_text="H layers"))
        self.progress_bar = self.cell.locator(".widget-hprogress .progress-bar")
        self.curve = self.cell.locator("img.widget-image")
        self.table = self.cell.locator("table.anibook-runs")

    def text_box(self, label: str):
        page = self.tab.page
        box = self.cell.locator(".widget-text").filter(
            has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
        return box.locator("input")

    def type_into(self, label: str, text: str) -> None:
        """Type ``text`` into a box as a reader would (then Tab, which commits number boxes)."""
        box = self.text_box(label)
        box.click()
        box.press("Control+a")
        box.type(text)
        box.press("Tab")

    def button(self, name: str):
        return self.cell.locator("button.widget-button").filter(has_text=re.compile(rf"^\s*{name}\s*$"))

    def htmls(self) -> list[str]:
        return self.cell.locator(".widget-html").evaluate_all("hs => hs.map(h => h.innerText.trim())")

    def status(self) -> str:
        return next((t for t in self.htmls() if re.match(r"(run \d+|stopping)", t)), "")

    def message(self) -> str:
        return next((t for t in self.htmls() if re.match(r"(Not started|A run is in progress|Run \d+ failed)", t)), "")

    def progress(self) -> float:
        """The progress bar's width, in percent of its track."""
        return self.progress_bar.evaluate("b => parseFloat(b.style.width) || 0")

    def running(self) -> bool:
        return self.button("Stop").is_enabled() and not self.button("Train").is_enabled()

    def curve_changes(self) -> tuple[int, int]:
        """Since :meth:`watch_curve`: new srcs of the curve image, and distinct pictures among them."""
        watch = self.tab.page.evaluate("() => window.__anibookCurve")
        return len(watch["srcs"]) - 1, len(set(watch["sums"]))

    def watch_curve(self) -> None:
        self.curve.evaluate(CURVE_WATCH)

    def rows(self) -> list[dict[str, str]]:
        if self.table.count() == 0:
            return []
        return self.table.evaluate(TABLE_ROWS)


def wait_for(tab: Tab, what: str, check, timeout_s: float, poll_s: float = 0.5):
    """Poll ``check()`` until it returns something true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{tab.server.kind}: {what} (waited {timeout_s} s)\n{tab.context()}")
        tab.page.wait_for_timeout(poll_s * 1000)


def test_interactive_panel(tab, screenshots):
    kind = tab.server.kind
    tab.run_notebook("07_interactive.ipynb")

    panel = Panel(tab)
    panel.text_box("H layers").wait_for()
    assert panel.text_box("H layers").input_value() == "160, 128, 96"
    assert panel.curve.evaluate("i => i.complete && i.naturalWidth > 0"), f"{kind}: the curve shows no picture"
    panel.type_into("H layers", NEW_WIDTHS)
    panel.type_into("epochs", str(TRAIN_EPOCHS))
    panel.watch_curve()
    assert panel.button("Stop").is_disabled()

    # Train: the run starts in the background, the bar and the curve move.
    panel.button("Train").click()
    wait_for(tab, "Train did not start a run (Stop never became clickable)", panel.running, 60)
    wait_for(tab, "the progress bar did not move", lambda: panel.progress() > 0, 300)
    assert re.search(rf"epoch \d+/{TRAIN_EPOCHS}\b", panel.status()), \
        f"{kind}: the typed epochs did not reach the kernel: status {panel.status()!r}"
    first_progress = panel.progress()

    # Another cell runs while the panel trains.
    new_cell = tab.insert_cell_below(panel.cell, "print(6 * 7)")
    output = new_cell.locator(".output_area, .jp-OutputArea-output")
    wait_for(tab, "the new cell printed nothing while the panel trained",
             lambda: "42" in " ".join(output.all_inner_texts()), 120)
    assert panel.running(), f"{kind}: the run ended before the new cell answered: {panel.status()!r}"

    wait_for(tab, "the learning curve did not change three times",
             lambda: panel.curve_changes()[0] >= 3 and panel.progress() > first_progress, 300)
    changes, pictures = panel.curve_changes()
    assert pictures >= 3, f"{kind}: the curve's src changed {changes} times but showed {pictures} distinct pictures"
    assert panel.running(), f"{kind}: the run ended by itself: {panel.status()!r}"
    panel.cell.evaluate("c => c.scrollIntoView({block: 'start'})")
    shot(tab.page, screenshots, f"frontend_{kind}_training")

    # Stop: the run ends after its batch and is listed with its stop reason.
    progress_at_stop = panel.progress()
    panel.button("Stop").click()
    wait_for(tab, "Stop did not end the run", lambda: not panel.running() and "stopped" in panel.status(), 120)
    rows = wait_for(tab, "the runs table shows no run", panel.rows, 60)
    assert len(rows) == 1, f"{kind}: the table lists {rows}"
    run = rows[0]
    assert run["status"] == "stopped", f"{kind}: the table's status of the stopped run is {run['status']!r}"
    assert run["run"] == "1" and run["layers"].startswith("H 64-32"), f"{kind}: {run}"
    epochs_run, epochs_asked = map(int, run["epochs"].split("/"))
    assert epochs_asked == TRAIN_EPOCHS and 3 <= epochs_run < TRAIN_EPOCHS, f"{kind}: {run}"
    assert panel.progress() >= progress_at_stop, f"{kind}: the progress bar went back"
    assert re.match(r"run 1 stopped \(stopped\)", panel.status()), f"{kind}: status {panel.status()!r}"
    shot(panel.cell, screenshots, f"frontend_{kind}_stopped")
    tab.server.measured["runs_table_gap_px"] = panel.table.evaluate(TABLE_GAP)  # test_runs_table_is_legible

    # An invalid width: nothing starts, the panel says why.
    for text, expected in [("abc", "'abc' is not a whole number"), ("0", "a layer of width 0 is not possible")]:
        panel.type_into("H layers", text)
        panel.button("Train").click()
        message = wait_for(tab, f"no message after Train with H layers {text!r}",
                           lambda: expected in panel.message() and panel.message(), 60)
        assert message.startswith("Not started: H"), f"{kind}: {message!r}"
        assert not panel.running() and len(panel.rows()) == 1, f"{kind}: a refused run changed the panel"
    shot(panel.cell, screenshots, f"frontend_{kind}_invalid_width")
    assert not tab.problems(), f"{kind}:\n" + "\n".join(tab.problems())


def test_runs_table_is_legible(server):
    """The runs table's columns stand apart (measured by test_interactive_panel after Stop)."""
    gap = server.measured.get("runs_table_gap_px")
    if gap is None:
        pytest.skip("test_interactive_panel did not measure the runs table in this session")
    assert gap >= 4, f"{server.kind}: neighbouring cells of the runs table are {gap:.1f} px apart"


# -- chapter 1's molecule viewer ------------------------------------------------------------------

WEBGL_INFO = """(canvas) => {
    const gl = canvas.getContext('webgl2') || canvas.getContext('webgl');
    return {width: canvas.width, height: canvas.height, webgl: !!gl,
            version: gl ? gl.getParameter(gl.VERSION) : null};
}"""


def test_molecule_viewer(tab, screenshots):
    kind = tab.server.kind
    tab.run_notebook("01_data.ipynb")
    viewer = tab.page.locator("div[id^='3dmolviewer']")
    canvas = viewer.locator("canvas").first
    canvas.wait_for()
    canvas.scroll_into_view_if_needed()
    info = canvas.evaluate(WEBGL_INFO)
    assert info["webgl"], f"{kind}: the viewer's canvas has no WebGL context: {info}\n{tab.context()}"
    assert info["width"] > 0 and info["height"] > 0, f"{kind}: {info}"
    tab.page.wait_for_timeout(1000)  # the first frame
    from io import BytesIO

    from PIL import Image

    picture = Image.open(BytesIO(viewer.first.screenshot())).convert("RGB")
    colours = picture.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 10, f"{kind}: the viewer is blank ({colours and len(colours)} colours)"
    shot(tab.cells().filter(has=viewer), screenshots, f"frontend_{kind}_viewer")
    assert any("/npm/3dmol@" in url for url in tab.mirrored), f"{kind}: 3Dmol.js came from {tab.mirrored}"
    print(f"{kind}: the viewer's canvas: {info}")
    assert not tab.problems(), f"{kind}:\n" + "\n".join(tab.problems())
