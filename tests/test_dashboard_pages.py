"""Each dashboard page driven through Streamlit's AppTest on a store filled by tests/test_dashboard_store.py.

Plotly charts reach AppTest as UnknownElement with the figure JSON in ``proto.spec``; numeric arrays in it are
base64 typed arrays, decoded by ``_array``.
"""

import base64
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from streamlit.testing.v1 import AppTest

from dashboard.launch import EXAMPLE, field_key
from engine.data.worlds import WORLDS
from engine.paths import REPO_ROOT
from engine.store.runs import RunWriter, StoreReader, list_run_ids, read_run
from tests.test_dashboard_store import (
    JUDGE_WINS,
    OUTPUTS,
    PROMPT,
    SCORES,
    SCRIPT_OUTPUT,
    STEPS,
    WIN_RATES,
    fill_store,
    mixing_samples,
)

APP = str(REPO_ROOT / "app.py")
PAGES = "dashboard/pages/"


def _open(page: str = "runs") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page != "runs":
        at.switch_page(f"{PAGES}{page}.py").run()
    assert not at.exception, at.exception
    return at


def _launch_form() -> AppTest:
    """The Runs page with its launch form switched open (it is drawn only when open)."""
    at = _open()
    at.toggle(key="launch_open").set_value(True).run()
    return at


def _array(value) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def _figure(at: AppTest, key: str) -> dict:
    charts = [c for c in at.get("plotly_chart") if c.key == f"chart_{key}"]
    assert len(charts) == 1, [c.key for c in at.get("plotly_chart")]
    return json.loads(charts[0].proto.spec)


def _table(at: AppTest, key: str):
    """The DataFrame shown by dashboard.widgets.table under this key."""

    def find(node):
        if getattr(node, "key", None) == f"table_{key}":
            return node
        for child in getattr(node, "children", {}).values():
            found = find(child)
            if found is not None:
                return found
        return None

    block = find(at.main)
    assert block is not None, f"no table {key}"
    return next(c for c in block.children.values() if type(c).__name__ == "Dataframe").value


def _traces(fig: dict) -> dict[str, dict]:
    return {t.get("name"): t for t in fig["data"]}


@pytest.fixture
def filled(data_root):
    fill_store()
    return data_root


@pytest.fixture
def fake_jobs(monkeypatch):
    """Jobs run `python -c pass` instead of the engine; the engine arguments asked for are recorded."""
    import engine.store.jobs

    asked = []

    def command(engine_args, num_processes=1):
        asked.append(list(engine_args))
        return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(engine.store.jobs, "job_command", command)
    return asked


# ---------------------------------------------------------------------------------------------- runs


def test_runs_table_lists_every_run_and_filters(filled):
    at = _open()
    table = _table(at, "runs").set_index("run_id")
    assert set(table.index) == {"run-dpo", "run-dpo2", "run-eval", "run-mix"}
    assert table.loc["run-dpo2", ["method", "model", "status", "steps"]].tolist() == ["dpo", "models/sft", "finished",
                                                                                       STEPS - 1]
    assert all(table["duration"].dt.total_seconds() >= 0)
    at.multiselect(key="runs_method").set_value(["dpo"]).run()
    assert sorted(_table(at, "runs")["run_id"]) == ["run-dpo", "run-dpo2"]
    at.text_input(key="runs_search").input("beta 0.2").run()
    assert _table(at, "runs")["run_id"].tolist() == ["run-dpo2"]


def test_metric_chart_overlays_runs_with_their_values_and_smooths(filled):
    at = _open()
    at.multiselect(key="live_runs").set_value(["run-dpo", "run-dpo2"]).run()
    _metric_selector(at).select("loss").run()
    traces = _traces(_figure(at, "live_metrics"))
    for name, slope in (("dpo beta 0.1", 0.01), ("dpo beta 0.2", 0.02)):
        assert np.allclose(_array(traces[name]["y"]), [0.7 - slope * s for s in range(STEPS)])
    at.slider(key="live_smoothing").set_value(0.5).run()
    y = _array(_traces(_figure(at, "live_metrics"))["dpo beta 0.1"]["y"])
    expected = [0.7]
    for s in range(1, STEPS):
        expected.append(0.5 * expected[-1] + 0.5 * (0.7 - 0.01 * s))
    assert np.allclose(y, expected)


def test_metric_selector_follows_the_loss_until_a_pick_and_keeps_the_pick(filled):
    writer = RunWriter.create("run-new", method="dpo", name="new", config={}, kind="train")
    writer.log_metrics(0, {"data/train_pairs": 96.0})  # bookkeeping first, as a starting run logs it
    at = _open()
    at.multiselect(key="live_runs").set_value(["run-new"]).run()
    assert _metric_selector(at).value == "data/train_pairs"
    writer.log_metrics(1, {"loss": 0.69, "grad_norm": 1.5})
    at.run()
    assert _metric_selector(at).value == "loss"
    _metric_selector(at).select("grad_norm").run()
    writer.log_metrics(2, {"eval_loss": 0.7})  # new names: the selector is redrawn, the pick stays
    at.run()
    assert _metric_selector(at).value == "grad_norm"
    assert _figure(at, "live_metrics")["layout"]["title"]["text"] == "grad_norm"


def _metric_selector(at: AppTest):
    (selector,) = [s for s in at.selectbox if s.label == "Metric"]
    return selector


def _element_after(at: AppTest, key: str):
    """The element drawn right after the widget with this key (depth-first document order)."""

    def walk(node):
        for child in getattr(node, "children", {}).values():
            yield child
            yield from walk(child)

    elements = list(walk(at.main))
    index = next(i for i, e in enumerate(elements) if getattr(e, "key", None) == key)
    return elements[index + 1]


def test_launch_form_shows_a_validation_error_next_to_its_field(filled, fake_jobs):
    at = _launch_form()
    key = field_key("dpo", EXAMPLE, "dpo.beta")
    at.text_input(key=key).input("-1")
    at.button(key="launch_submit_dpo").click().run()
    error = _element_after(at, key)
    assert type(error).__name__ == "Error" and "dpo.beta: must be > 0" in error.value
    assert fake_jobs == [] and len(list_run_ids()) == 4


def test_launch_form_starts_train_with_the_validated_config(filled, fake_jobs):
    import yaml

    from engine.config import config_from_dict, config_to_dict

    at = _launch_form()
    for path, value in (("dpo.beta", "0.25"), ("training.max_steps", "7"), ("logging.run_name", "my run")):
        at.text_input(key=field_key("dpo", EXAMPLE, path)).input(value)
    at.button(key="launch_submit_dpo").click().run()
    assert not at.error, [e.value for e in at.error]
    new = [r for r in list_run_ids() if r not in ("run-dpo", "run-dpo2", "run-eval", "run-mix")]
    assert len(new) == 1 and fake_jobs == [["train", "--run", new[0]]]
    expected = yaml.safe_load((REPO_ROOT / "configs" / "dpo_demo.yaml").read_text())
    expected["dpo"]["beta"] = 0.25
    expected["training"]["max_steps"] = 7
    expected["logging"] = {"run_name": "my run"}
    run = read_run(new[0])
    assert run["config"] == config_to_dict(config_from_dict(expected)) and run["name"] == "my run"
    assert new[0] in _table(at, "runs")["run_id"].tolist() and new[0] in at.success[0].value
    assert at.multiselect(key="live_runs").value == [new[0]] and at.selectbox(key="detail_run").value == new[0]


def test_mixing_objective_without_judge_is_flagged_on_the_objectives_field(filled, fake_jobs):
    at = _launch_form()
    at.selectbox(key="launch_method").select("mixing_po").run()
    key = field_key("mixing_po", EXAMPLE, "mixing_po.objectives")
    at.text_area(key=key).input("a, demo/prefs_sentiment_train.parquet\nb, demo/prefs_sentiment_train.parquet, x")
    at.button(key="launch_submit_mixing_po").click().run()
    assert "mixing_po.objectives[0].judge: required" in _element_after(at, key).value
    assert fake_jobs == []


def test_cancel_stops_a_running_job_and_the_log_tail_shows_its_end(filled):
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        writer = RunWriter.create("run-live", method="dpo", name="live", config={}, kind="train")
        writer.set_status("running", pid=proc.pid)
        at = _open()
        at.selectbox(key="detail_run").select("run-live").run()
        at.button(key="cancel_run").click().run()
        assert read_run("run-live")["status"] == "cancelled"
        assert proc.wait(timeout=10) == -15  # SIGTERM
    finally:
        proc.kill()
        proc.wait()
    at.selectbox(key="detail_run").select("run-dpo").run()
    at.number_input(key="log_lines").set_value(10).run()
    assert at.code[-1].value.splitlines() == [f"line {i}" for i in range(90, 100)]


def test_config_diff_shows_only_the_changed_field(filled):
    at = _open()
    at.selectbox(key="diff_a").select("run-dpo").run()
    at.selectbox(key="diff_b").select("run-dpo2").run()
    diff = _table(at, "config_diff")
    assert diff.values.tolist() == [["dpo.beta", "0.1", "0.2"]]


@pytest.mark.parametrize(("world", "button", "engine_args", "caption"), [
    ("tiny", "prepare_demo", ["demo", "prepare", "--world", "tiny"], "Demo prepare tiny:"),
    ("tiny", "run_demo", ["demo", "run", "--world", "tiny"], "Demo run tiny:"),
    ("smollm2", "run_demo", ["demo", "run", "--world", "smollm2"], "Demo run smollm2:"),
])
def test_first_run_screen_starts_the_demo_of_the_chosen_world_as_a_job(data_root, fake_jobs, world, button,
                                                                        engine_args, caption):
    at = _open()
    assert at.subheader[0].value == "Welcome to PrefLab"
    assert at.toggle(key="launch_open").value  # no runs yet: the launch form starts open
    choice = at.radio(key="demo_world")
    assert choice.value == "tiny" and list(choice.options) == [  # each world says what it is and how long it takes
        f"{w.name}: {w.summary} ({w.duration})" for w in WORLDS.values()]
    assert all("min" in w.duration for w in WORLDS.values())
    choice.set_value(world).run()
    at.button(key=button).click().run()
    assert fake_jobs == [engine_args]
    (run_id,) = list_run_ids()
    assert read_run(run_id)["kind"] == "demo"
    assert any(m.value.startswith(caption) for m in at.markdown)


def test_first_run_screen_leaves_once_the_demo_world_and_a_training_run_exist(filled, monkeypatch):
    import dashboard.launch

    monkeypatch.setattr(dashboard.launch, "demo_ready", lambda: True)
    assert not [s for s in _open().subheader if s.value == "Welcome to PrefLab"]
    monkeypatch.setattr(dashboard.launch, "demo_ready", lambda: False)
    assert [s for s in _open().subheader if s.value == "Welcome to PrefLab"]


# ---------------------------------------------------------------------------------------------- compare


def test_compare_win_rates_and_leaderboard(filled):
    at = _open("compare")
    traces = _traces(_figure(at, "eval_win_rates"))
    raw, lc = traces["win rate"], traces["LC win rate"]
    assert list(raw["x"]) == ["dpo vs sft", "mallows vs sft"]
    assert np.allclose(_array(raw["y"]), [WIN_RATES[m][0] for m in ("dpo", "mallows")])
    assert np.allclose(_array(raw["error_y"]["array"]), [WIN_RATES[m][2] - WIN_RATES[m][0] for m in ("dpo", "mallows")])
    assert np.allclose(_array(lc["y"]), [WIN_RATES[m][3] for m in ("dpo", "mallows")])
    board = _table(at, "leaderboard").set_index("model")
    for (a, b), (wins, losses) in JUDGE_WINS.items():
        gap = board.loc[a, "rating"] - board.loc[b, "rating"]
        assert gap == pytest.approx(400 / math.log(10) * math.log(wins / losses), abs=2)
    assert len(at.warning) == 1  # the two pairs never meet: two rating groups


def test_margin_curves_come_from_the_logged_metrics(filled):
    at = _open("compare")
    at.selectbox(key="cmp_margin_metric").select("rewards/margins").run()
    traces = _traces(_figure(at, "margins"))
    assert np.allclose(_array(traces["dpo beta 0.2"]["y"]), [0.1 * s for s in range(STEPS)])


# ---------------------------------------------------------------------------------------------- generations


def test_model_output_is_shown_literally(filled):
    at = _open("generations")
    at.multiselect(key="gen_models").set_value(["dpo", "mallows"]).run()
    texts = [t.value for t in at.text]
    assert SCRIPT_OUTPUT in texts and OUTPUTS["dpo"] in texts
    interpreted = [e.value for e in [*at.markdown, *at.caption, *at.info, *at.success]]
    assert not any("<script>" in v or "**bold**" in v for v in interpreted)
    diff = at.code[-1]
    assert diff.language == "diff" and "+ <script>alert(1)</script>" in diff.value.splitlines()


def test_votes_are_stored_as_human_judgments_and_reach_the_compare_page(filled):
    at = _open("generations")
    at.multiselect(key="gen_models").set_value(["dpo", "sft"]).run()
    p_ab = float(at.metric[0].value)
    at.selectbox(key="gen_pair_a").select("sft").run()
    at.selectbox(key="gen_pair_b").select("dpo").run()
    assert float(at.metric[0].value) == pytest.approx(1 - p_ab, abs=1e-3)  # the judge is antisymmetric
    at.button(key="vote_b").click().run()
    stored = StoreReader().query("SELECT * FROM judgments WHERE source = 'human'")
    assert stored[["prompt", "model_a", "model_b", "output_a", "output_b", "winner", "prob_a"]].values.tolist() == [
        [PROMPT, "sft", "dpo", OUTPUTS["sft"], OUTPUTS["dpo"], "b", 0.0]]
    at.switch_page(f"{PAGES}compare.py").run()
    pairs = _table(at, "pair_win_rates").set_index("source")
    assert pairs.loc["human", ["model", "opponent", "win_rate", "n"]].tolist() == ["dpo", "sft", 1.0, 1]
    board = _table(at, "leaderboard").set_index("model")
    assert board.loc["dpo", "battles"] == sum(JUDGE_WINS[("dpo", "sft")]) + 1


# ---------------------------------------------------------------------------------------------- pareto


def _non_dominated(points: dict) -> set:
    return {n for n, p in points.items()
            if not any(all(q[i] >= p[i] for i in range(2)) and q != p for q in points.values())}


def test_pareto_front_and_lambda_path(filled):
    at = _open("pareto")
    at.multiselect(key="pareto_objectives").set_value(["sentiment", "conciseness"]).run()
    fig = _figure(at, "pareto")
    points = _table(at, "pareto_points").set_index("name")
    assert {n: tuple(points.loc[n, ["sentiment", "conciseness"]]) for n in SCORES} == SCORES
    coords = {n: (r.sentiment, r.conciseness) for n, r in points.iterrows()}
    front = _traces(fig)["Pareto front"]
    drawn = set(zip(_array(front["x"]).tolist(), _array(front["y"]).tolist()))
    assert drawn == {coords[n] for n in _non_dominated(coords)}
    assert not points.loc["mallows", "on_front"]

    at.selectbox(key="pareto_path_run").select("run-mix").run()
    fig = _figure(at, "pareto")
    path = _traces(fig)["λ path (estimated)"]
    samples = mixing_samples()
    first = softmax(samples.logratios @ np.array([0.5, 0.5]), axis=1)  # step 0 of the logged path: λ = (0.5, 0.5)
    expected = (first[..., None] * samples.scores).sum(axis=1).mean(axis=0)
    assert [_array(path["x"])[0], _array(path["y"])[0]] == pytest.approx(expected.tolist())
    lam = _traces(_figure(at, "lambda_path"))
    assert _array(lam["sentiment"]["y"])[-1] == pytest.approx(0.6)


# ---------------------------------------------------------------------------------------------- mixer


def _hand_estimate(weights):
    samples = mixing_samples()
    w = softmax(samples.logratios @ np.asarray(weights), axis=1)
    return (w[..., None] * samples.scores).sum(axis=1).mean(axis=0)


def _shown_scores(at: AppTest) -> list[float]:
    return [float(m.value) for m in at.metric[:2]]


def test_mixer_sliders_stay_on_the_simplex_and_update_the_estimate(filled):
    at = _open("mixer")
    assert [s.value for s in at.slider] == [0.6, 0.4]  # the run's lambda.json
    assert _shown_scores(at) == pytest.approx(_hand_estimate([0.6, 0.4]).tolist(), abs=1e-4)
    at.slider(key="mixer_w_run-mix_0").set_value(0.8).run()
    assert [s.value for s in at.slider] == pytest.approx([0.8, 0.2])
    assert _shown_scores(at) == pytest.approx(_hand_estimate([0.8, 0.2]).tolist(), abs=1e-4)
    current = _traces(_figure(at, "mixer_pareto"))["current mixture"]
    assert [_array(current["x"])[0], _array(current["y"])[0]] == pytest.approx(_hand_estimate([0.8, 0.2]).tolist())


def test_balance_sets_the_sliders_to_the_minimizer_of_f(filled):
    ell = mixing_samples().logratios
    m = ell.shape[1]
    best = minimize_scalar(lambda a: np.mean(logsumexp(ell @ np.array([a, 1 - a]), axis=1) - np.log(m)),
                           bounds=(0, 1), method="bounded", options={"xatol": 1e-8}).x
    at = _open("mixer")
    at.button(key="mixer_balance").click().run()
    assert [s.value for s in at.slider] == pytest.approx([best, 1 - best], abs=5e-3)


def test_generate_shows_the_mixture_beside_each_single_objective_policy(filled, monkeypatch):
    import engine.recipes.mixing

    calls = []

    def fake_mix_generate(run_id, weights, prompts, n=8, seed=0):
        calls.append((run_id, list(weights), list(prompts), n))
        return [{"prompt": p, "output": f"{SCRIPT_OUTPUT} w={list(weights)}", "num_tokens": 3,
                 "scores": {"sentiment": 0.5, "conciseness": 0.25}, "ess": None, "distribution": "sequence T=1"}
                for p in prompts[:n]]

    monkeypatch.setattr(engine.recipes.mixing, "mix_generate", fake_mix_generate)
    at = _open("mixer")
    at.button(key="mixer_generate").click().run()
    assert calls == [("run-mix", [0.6, 0.4], ["prompt 0"], 1), ("run-mix", [1.0, 0.0], ["prompt 0"], 1),
                     ("run-mix", [0.0, 1.0], ["prompt 0"], 1)]
    texts = [t.value for t in at.text]
    for weights in ([0.6, 0.4], [1.0, 0.0], [0.0, 1.0]):
        assert f"{SCRIPT_OUTPUT} w={weights}" in texts


# ---------------------------------------------------------------------------------------------- imports


NO_TORCH_SCRIPT = """
import sys
from streamlit.testing.v1 import AppTest
from tests.test_dashboard_store import fill_store
fill_store()
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
for page in ("compare", "pareto", "mixer", "generations"):
    at.switch_page(f"dashboard/pages/{page}.py").run()
    assert not at.exception, (page, at.exception)
at.switch_page("dashboard/pages/mixer.py").run()
at.slider(key="mixer_w_run-mix_0").set_value(0.3).run()
at.button(key="mixer_balance").click().run()
assert not at.exception, at.exception
heavy = sorted(m for m in ("torch", "transformers", "trl") if m in sys.modules)
print("heavy:", heavy)
"""


def test_no_page_imports_torch(data_root):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, APP], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "heavy: []" in result.stdout, result.stdout
    assert time.monotonic() - start < 120
