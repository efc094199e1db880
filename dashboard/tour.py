"""A tour of the dashboard after the demo: every page opened in headless Chromium, what it draws read back from the
page, and a screenshot of each. The README's screenshots come from here, against the store the full demo filled:

    python -m dashboard.tour --out docs/screenshots     # PREFLAB_DATA (default data/) after `python -m engine demo run`

The test-scale demo test (tests/test_demo_pipeline.py) runs the same tour in CI and checks what each page shows.
Like dashboard/server.py, nothing in the dashboard or the engine imports this module.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dashboard.server import chromium, open_page, read_chart, read_grid, screenshot, serve, settle
from engine.paths import REPO_ROOT, data_dir

TIMEOUT_MS = 90_000  # the first visit imports every module a page needs: slow on a busy 2-core machine
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
            open_page(page, title, TIMEOUT_MS)
            if last:
                page.locator(f".st-key-{last}").wait_for(timeout=TIMEOUT_MS)
                settle(page, TIMEOUT_MS)
            if title == "Runs":
                _chart_newest_training(page)
            facts: dict[str, Any] = {"errors": page.locator("[data-testid=stException]").all_inner_texts()}
            if chart_key:
                facts["chart"] = read_chart(page, chart_key, TIMEOUT_MS)
            if table_key:
                facts["rows"] = len(read_grid(page, table_key, TIMEOUT_MS))
            screenshot(page, out / f"{title.lower()}.png")
            seen[title] = facts
    return seen


def _chart_newest_training(page: Any) -> None:
    """Pick the newest training run in the Runs page's chart selector, as a person would: type its id, click its option
    (nothing is charted by default once no job runs)."""
    from engine.store.jobs import list_jobs

    newest = next((j["run_id"] for j in list_jobs() if j["kind"] == "train"), None)
    if newest is None:
        return
    # Typed key by key after a click, as a person does: `fill` sets the value without the key events the select
    # filters on, and left the list empty. The option is clicked once listed: an early Enter selected nothing.
    page.locator(".st-key-live_runs input").click(timeout=TIMEOUT_MS)
    page.keyboard.type(newest)
    page.get_by_role("option").filter(has_text=newest).first.click(timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    settle(page, TIMEOUT_MS)


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
