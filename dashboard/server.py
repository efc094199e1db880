"""The dashboard as a person sees it: `streamlit run app.py` in a subprocess on a free local port, opened in
headless Chromium through Playwright, and what its pages drew read back from the browser. Used by the browser test
(tests/test_browser.py), the tour (dashboard/tour.py) and the dashboard benchmark (bench/dashboard.py); neither the
pages nor the engine import it.

Chromium is Debian's (`make browser` installs it at /usr/bin/chromium): Playwright's own browser download is never
used, so nothing is fetched from the network.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.paths import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
# No sandbox (containers run as root), no GPU, and nothing that phones home or updates itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HEALTH_TIMEOUT_S = 60.0
# Rows of a dashboard table as {column: text}: st.dataframe draws on a canvas and mirrors its cells in an
# accessible grid, which is what is read here.
GRID_JS = """key => {
    const root = document.querySelector(`.st-key-table_${key}`);
    if (!root) return null;
    const heads = [...root.querySelectorAll('[role=columnheader]')].map(h => h.textContent.trim());
    return [...root.querySelectorAll('[role=row]')]
        .map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.textContent))
        .filter(cells => cells.length)
        .map(cells => Object.fromEntries(cells.map((v, i) => [heads[i], v])));
}"""
# A plotly chart as drawn (plotly has decoded the typed arrays by then): its title and traces.
CHART_JS = """key => {
    const plot = document.querySelector(`.st-key-chart_${key} .js-plotly-plot`);
    if (!plot || !plot._fullData) return null;
    return {title: (plot._fullLayout.title.text || "").replace(/<[^>]*>/g, ""),  // Streamlit's theme adds <b>
            traces: plot._fullData.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))};
}"""


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for a server started right after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(data: Path, log: Path, script: str = "app.py") -> Iterator[str]:
    """Run the dashboard (or another Streamlit ``script``, e.g. a benchmark's reference page) on ``data``
    (PREFLAB_DATA of the server and of the jobs it launches) until the block ends; yields its URL once the health
    check answers. Server output goes to ``log``. Jobs the server launched
    run in sessions of their own (engine.store.jobs) and outlive it, as they do after `make run` stops."""
    port = free_port()
    env = {**os.environ, "PREFLAB_DATA": str(data), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.address", "127.0.0.1", "--server.port",
               str(port), "--server.headless", "true"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        _stop(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"streamlit did not answer {url}/_stcore/health within {HEALTH_TIMEOUT_S:.0f} s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh page in headless Chromium (a Playwright ``Page``), closed with its browser when the block ends."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (`make browser`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def screenshot(page: Any, path: Path) -> None:
    """The whole page, not just the window: Streamlit scrolls inside its main section, so the window is made as
    tall as that section for the shot and put back afterwards."""
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], int(height))})
    page.wait_for_timeout(300)  # let plotly resize its charts to the new window
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def settle(page: Any, timeout_ms: float) -> None:
    """Wait until the script run that the last action started has finished."""
    page.wait_for_timeout(300)
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden", timeout=timeout_ms)


def open_page(page: Any, title: str, timeout_ms: float) -> None:
    """Go to a page through the sidebar, as a person would (the session and its state carry over)."""
    page.locator("[data-testid=stSidebarNav]").get_by_role("link", name=title).click(timeout=timeout_ms)
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=timeout_ms)
    settle(page, timeout_ms)


def read_grid(page: Any, key: str, timeout_ms: float) -> list[dict[str, str]]:
    """The rows drawn of the table keyed ``key`` (widgets.table), as {column: text}; a long table draws only the
    rows in view."""
    page.locator(f".st-key-table_{key} [role=gridcell]").first.wait_for(state="attached", timeout=timeout_ms)
    return page.evaluate(GRID_JS, key) or []


def read_chart(page: Any, key: str, timeout_ms: float) -> dict[str, Any]:
    """The chart keyed ``key`` (widgets.chart) as drawn: {"title": text, "traces": {name: {name, x, y}}}."""
    page.wait_for_function(f"() => ({CHART_JS})('{key}') !== null", timeout=timeout_ms)
    chart = page.evaluate(CHART_JS, key) or {"title": "", "traces": []}  # None: redrawn in between
    return {"title": chart["title"], "traces": {t["name"]: t for t in chart["traces"]}}
