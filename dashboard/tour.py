"""A tour of the dashboard after the demo: every page opened in headless Chromium, what it draws read back from the
page, and a screenshot of each. The README's screenshots come from here, against the store the full demo filled:

    python -m dashboard.tour --out docs/screenshots      # PREFLAB_DATA (default data/) after `python -m engine demo run`

The test-scale demo test (tests/test_demo_pipeline.py) runs the same tour in CI and checks what each page shows.
Like dashboard/server.py, nothing in the dashboard or the engine imports this module.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dashboard.server import chromium, screenshot, serve
from engine.paths import REPO_ROOT, data_dir

PAGES = ("Runs", "Compare", "Pareto", "Mixer", "Generations")
TIMEOUT_MS = 90_000  # the first visit imports every module a page needs: slow on a busy 2-core machine
# What each page drew, read from the DOM: plotly keeps the traces it plotted on its element; st.dataframe mirrors
# its cells in an accessible grid.
CHART_JS = """key => {
    const plot = document.querySelector(`.st-key-chart_${key} .js-plotly-plot`);
    if (!plot || !plot._fullData) return null;
    return {title: (plot._fullLayout.title.text || "").replace(/<[^>]*>/g, ""),  // Streamlit's theme adds <b>
            traces: plot._fullData.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))};
}"""
GRID_ROWS_JS = """key => {
    const root = document.querySelector(`.st-key-table_${key}`);
    return root ? root.querySelectorAll('[role=row] [role=gridcell]:first-child').length : null;
}"""
# What each page is judged by: (page, chart key, table key, the widget drawn last once the script run is over).
SHOWN = (("Runs", "live_metrics", "runs", "diff_b"), ("Compare", "eval_win_rates", "leaderboard", "cmp_smoothing"),
         ("Pareto", "pareto", "pareto_points", None), ("Mixer", "mixer_pareto", None, "mixer_generate"),
         ("Generations", None, None, "vote_b"))


def tour(url: str, out: Path) -> dict[str, dict[str, Any]]:
    """Open each page at ``url``, save ``out/<page>.png`` and return, per page, its chart (title, and traces by name)
    and its table's drawn row count (a long table draws only the rows in view), as the browser shows them, and any
    exception Streamlit showed in place of the page."""
    seen: dict[str, dict[str, Any]] = {}
    with chromium(width=1400, height=900) as page:
        page.goto(url)
        for title, chart_key, table_key, last in SHOWN:
            page.locator("[data-testid=stSidebarNav]").get_by_role("link", name=title).click(timeout=TIMEOUT_MS)
            page.get_by_role("heading", name=title, exact=True).wait_for(timeout=TIMEOUT_MS)
            if last:
                page.locator(f".st-key-{last}").wait_for(timeout=TIMEOUT_MS)
            page.wait_for_timeout(300)
            page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden", timeout=TIMEOUT_MS)
            if title == "Runs":
                _chart_newest_training(page)
            facts: dict[str, Any] = {"errors": page.locator("[data-testid=stException]").all_inner_texts()}
            if chart_key:
                page.wait_for_function(f"() => ({CHART_JS})('{chart_key}') !== null", timeout=TIMEOUT_MS)
                chart = page.evaluate(CHART_JS, chart_key)
                facts["chart"] = {"title": chart["title"], "traces": {t["name"]: t for t in chart["traces"]}}
            if table_key:
                page.locator(f".st-key-table_{table_key} [role=gridcell]").first.wait_for(state="attached",
                                                                                          timeout=TIMEOUT_MS)
                facts["rows"] = page.evaluate(GRID_ROWS_JS, table_key)
            screenshot(page, out / f"{title.lower()}.png")
            seen[title] = facts
    return seen


def _chart_newest_training(page: Any) -> None:
    """Pick the newest training run in the Runs page's chart selector, as a person would: type its id, press Enter
    (nothing is charted by default once no job runs)."""
    from engine.runner import list_jobs

    newest = next((j["run_id"] for j in list_jobs() if j["kind"] == "train"), None)
    if newest is None:
        return
    page.locator(".st-key-live_runs input").fill(newest)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden", timeout=TIMEOUT_MS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.tour", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "tour", help="folder of the screenshots")
    args = parser.parse_args(argv)
    data = data_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(data, args.out / "streamlit.log") as url:
        for title, facts in tour(url, args.out).items():
            drawn = ", ".join(f"{k}: {v['title']!r} with {len(v['traces'])} traces" if k == "chart" else f"{k}: {v}"
                              for k, v in facts.items() if k != "errors")
            print(f"{title}: {drawn or 'drawn'}" + (f"; ERROR {facts['errors']}" if facts["errors"] else ""))
    (args.out / "streamlit.log").unlink()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
