"""The dashboard end to end in a real browser: `streamlit run app.py` as a subprocess, driven by Playwright through
Debian's Chromium (dashboard/server.py).

The store holds the hand-made runs of tests/test_dashboard_store.py (a mixing run with stored samples, an
evaluation with outputs and judge verdicts) plus the tiny world's SFT model and preference files at the launch
form's default paths, so a real DPO job can train from the form. Expected values come from the store the job wrote,
from hand importance weighting and from the verdict counts. Screenshots of every page land in artifacts/browser/.
"""

import re
import shutil
import time

import numpy as np
import pytest
from scipy.special import softmax

from dashboard.server import GRID_JS, chromium, open_page, read_chart, read_grid, screenshot, serve, settle
from engine.paths import REPO_ROOT
from engine.store.runs import StoreReader, read_run
from tests.test_dashboard_store import JUDGE_WINS, OUTPUTS, SCRIPT_OUTPUT, fill_store, mixing_samples

SHOTS = REPO_ROOT / "artifacts" / "browser"
TRAIN_TIMEOUT_MS = 150_000
UI_TIMEOUT_MS = 30_000

@pytest.fixture(scope="module")
def app(tiny_world, tmp_path_factory):
    """The dashboard on a filled store, and one browser page on it; dialogs (an injected alert) are recorded."""
    data = tmp_path_factory.mktemp("browser") / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFLAB_DATA", str(data))
        fill_store()  # writes empty placeholder files at the default paths: real ones replace them below
        shutil.rmtree(data / "models" / "sft")
        shutil.copytree(tiny_world.sft, data / "models" / "sft")
        shutil.copy(tiny_world.prefs_train, data / "demo" / "prefs_sentiment_train.parquet")
        shutil.copy(tiny_world.prefs_test, data / "demo" / "prefs_sentiment_test.parquet")
        with serve(data, data.parent / "streamlit.log") as url, chromium() as page:
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            # The first visit imports every module the page needs: the slowest by far on a busy machine.
            page.get_by_role("heading", name="Runs").wait_for(timeout=3 * UI_TIMEOUT_MS)
            yield page, dialogs


def _open(page, title: str) -> None:
    open_page(page, title, UI_TIMEOUT_MS)


def _settle(page) -> None:
    settle(page, UI_TIMEOUT_MS)


def _grid(page, key: str) -> list[dict]:
    return read_grid(page, key, UI_TIMEOUT_MS)


def _traces(page, key: str) -> dict[str, dict]:
    return read_chart(page, key, UI_TIMEOUT_MS)["traces"]


def _metrics(page) -> list[float]:
    return [float(v) for v in page.locator("[data-testid=stMetricValue]").all_inner_texts()[:2]]


def _eventually(read, expected):
    """What ``read()`` returns once it equals ``expected``, or its last value after UI_TIMEOUT_MS (the caller's
    assert then shows it): the page redraws when the server's script run after an action reaches that element."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_a_dpo_run_launched_from_the_form_trains_finishes_and_is_charted(app):
    page, _ = app
    page.get_by_text("Launch a training run").click()
    page.locator(".st-key-launch-dpo-example-training-max_steps input").fill("3")
    page.locator(".st-key-launch-dpo-example-logging-run_name input").fill("browser dpo")
    page.locator(".st-key-launch-dpo-example-data-eval input").fill("")  # no held-out pass: a shorter job
    page.locator(".st-key-launch_submit_dpo button").click()
    started = page.get_by_text(re.compile(r"Started run \S+;"))
    started.wait_for(timeout=UI_TIMEOUT_MS)
    run_id = re.search(r"Started run (\S+);", started.inner_text()).group(1)
    config = read_run(run_id)["config"]
    assert (config["training"]["max_steps"], config["data"]["eval"], config["dpo"]["beta"]) == (3, None, 0.1)

    # Followed live: the table refreshes while the run is active, the run details follow the new run.
    followed = f"browser dpo ({run_id})"
    assert _eventually(lambda: page.locator(".st-key-detail_run input").input_value(), followed) == followed
    page.wait_for_function(f"() => (({GRID_JS})('runs') || []).some(r => r.run_id === '{run_id}' "
                           "&& r.status === 'finished')", timeout=TRAIN_TIMEOUT_MS)
    page.get_by_text("Status: finished").wait_for(timeout=UI_TIMEOUT_MS)
    _settle(page)
    assert read_run(run_id)["status"] == "finished"
    stored = StoreReader().query("SELECT step, value FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                                 [run_id])
    assert len(stored) == 3
    expected = (stored["step"].tolist(), pytest.approx(stored["value"].tolist()))
    loss = _eventually(lambda: _curve(page, "live_metrics", "browser dpo"), expected)
    assert loss == expected
    row = next(r for r in _grid(page, "runs") if r["run_id"] == run_id)
    assert (row["name"], row["method"], row["status"], row["steps"]) == ("browser dpo", "dpo", "finished",
                                                                          str(stored["step"].max()))
    ended = _eventually(lambda: f"run {run_id} finished" in page.locator(".st-key-log_tail code").inner_text(), True)
    assert ended and "\x1b" not in page.locator(".st-key-log_tail code").inner_text()  # no terminal codes
    screenshot(page, SHOTS / "runs.png")


def _curve(page, key: str, name: str) -> tuple[list, list] | None:
    trace = _traces(page, key).get(name)
    return None if trace is None else (trace["x"], trace["y"])


def _hand_estimate(weights) -> np.ndarray:
    """Self-normalized importance weighting of the stored reference samples, per prompt, then the prompt mean."""
    samples = mixing_samples()
    w = softmax(samples.logratios @ np.asarray(weights, dtype=float), axis=1)
    return (w[..., None] * samples.scores).sum(axis=1).mean(axis=0)


def test_moving_a_mixer_slider_changes_the_estimate(app):
    page, _ = app
    _open(page, "Mixer")
    start = pytest.approx(_hand_estimate([0.6, 0.4]).tolist(), abs=1e-4)  # the run's lambda.json
    assert _eventually(lambda: _metrics(page), start) == start
    screenshot(page, SHOTS / "mixer.png")
    _drag_slider(page, "mixer_w_run-mix_0", 0.9)
    # The server rebalances the other weight so that the two sum to 1, then redraws the estimate.
    moved = _eventually(lambda: _slider_values(page, 2)[1] != 0.4, True)
    weights = _slider_values(page, 2)
    assert moved and weights[0] == pytest.approx(0.9, abs=0.03) and sum(weights) == pytest.approx(1.0)
    estimate = _hand_estimate(weights)
    expected = pytest.approx(estimate.tolist(), abs=1e-4)  # shown with 4 decimals
    assert _eventually(lambda: _metrics(page), expected) == expected
    assert _metrics(page) != start
    star = ([pytest.approx(estimate[0])], [pytest.approx(estimate[1])])  # the chart's point is not rounded
    assert _eventually(lambda: _curve(page, "mixer_pareto", "current mixture"), star) == star
    screenshot(page, SHOTS / "mixer_moved.png")


def _slider_values(page, k: int) -> list[float]:
    return [float(page.locator(f".st-key-mixer_w_run-mix_{i} input[type=range]").input_value()) for i in range(k)]


def _drag_slider(page, key: str, fraction: float) -> None:
    """Drag the slider's thumb with the mouse to ``fraction`` of its track."""
    thumb = page.locator(f".st-key-{key} [data-testid=stSliderThumbValue]").locator("..").bounding_box()
    track = page.locator(f".st-key-{key} [data-testid=stSliderThumbValue]").locator("../..").bounding_box()
    page.mouse.move(thumb["x"] + thumb["width"] / 2, thumb["y"] + thumb["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], thumb["y"] + thumb["height"] / 2, steps=8)
    page.mouse.up()


def _battles(page) -> dict[str, int]:
    return {r["model"]: int(r["battles"]) for r in _grid(page, "leaderboard")}


def test_model_output_stays_literal_and_a_vote_reaches_the_leaderboard(app):
    page, dialogs = app
    _open(page, "Compare")
    before = {m: sum(JUDGE_WINS[pair]) for pair in JUDGE_WINS for m in pair}
    assert _eventually(lambda: _battles(page), before) == before
    assert page.get_by_text("Some models never met").is_visible()  # two rating groups so far
    screenshot(page, SHOTS / "compare_before_vote.png")

    _open(page, "Generations")
    shown = page.locator(".st-key-output_gen_0, .st-key-output_gen_1").all_inner_texts()
    assert [t.strip() for t in shown] == [OUTPUTS["dpo"], SCRIPT_OUTPUT]  # A = dpo, B = mallows by default
    injected = page.evaluate("() => document.querySelectorAll('[data-testid=stMain] script, [data-testid=stMain] "
                             "[class*=st-key-output] :is(b, strong, em)').length")
    assert injected == 0 and dialogs == []
    assert "+ <script>alert(1)</script>" in page.locator(".st-key-gen_diff code").inner_text().splitlines()
    screenshot(page, SHOTS / "generations.png")
    page.locator(".st-key-vote_a button").click()
    page.get_by_text("Vote stored").wait_for(timeout=UI_TIMEOUT_MS)
    screenshot(page, SHOTS / "generations_voted.png")
    votes = StoreReader().query("SELECT model_a, model_b, winner FROM judgments WHERE source = 'human'")
    assert votes.values.tolist() == [["dpo", "mallows", "a"]]

    _open(page, "Compare")
    after = {**before, "dpo": before["dpo"] + 1, "mallows": before["mallows"] + 1}
    assert _eventually(lambda: _battles(page), after) == after
    assert not page.get_by_text("Some models never met").is_visible()  # the vote joined the two groups
    human = next(r for r in _grid(page, "pair_win_rates") if r["source"] == "human")
    assert (human["model"], human["opponent"], float(human["win_rate"]), human["n"]) == ("dpo", "mallows", 1.0, "1")
    screenshot(page, SHOTS / "compare.png")


def test_pareto_page_draws_the_front(app):
    page, dialogs = app
    _open(page, "Pareto")
    traces = _traces(page, "pareto")
    assert {"model", "mixture:estimate", "Pareto front"} <= set(traces)
    points = _grid(page, "pareto_points")
    on_front = {r["name"] for r in points if r["on_front"] == "true"}
    assert "mallows" not in on_front and {"sft", "dpo"} <= on_front  # hand-chosen scores: mallows is dominated
    assert dialogs == []
    screenshot(page, SHOTS / "pareto.png")
