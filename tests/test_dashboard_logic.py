"""The dashboard's logic: launch-form fields and parsing, error placement, config diff, win rates and ratings from
verdicts, Pareto tables (engine.store.standings', read through dashboard.queries), word diffs and simplex sliders."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import softmax

from dashboard import forms, simplex, tables, textdiff
from engine.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from engine.methods import get_method, method_names
from engine.store.runs import RunWriter
from tests.test_dashboard_store import make_files, mixing_samples

METHOD_PARAMS = {name: get_method(name).params for name in method_names()}

ELO_PER_LOGIT = 400 / math.log(10)

# ---------------------------------------------------------------------------------------------- launch form


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_form_has_one_field_per_config_leaf(method):
    leaves = set(tables.flatten(_bare(method)))
    paths = {s.path for s in forms.form_fields(method)}
    lora_fields = {f"model.lora.{f.name}" for f in dataclasses.fields(forms.LoraSection)}
    assert paths - lora_fields == leaves - {"method"}


def _bare(method):
    """A config dict of `method` with dataclass defaults, built without validation (default paths may not exist)."""
    return config_to_dict(RunConfig(method=method, params=METHOD_PARAMS[method]()))


def test_form_reproduces_every_example_config(data_root):
    from dashboard.queries import config_presets

    presets = config_presets()
    assert set(presets) == set(METHOD_PARAMS)
    for preset in presets.values():  # every local file or model folder the examples name
        for value in tables.flatten(preset).values():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and ref.startswith(("demo/", "models/")):
                    target = data_root / ref
                    if ref.startswith("models/"):
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(b"")
    for method, preset in presets.items():
        values = forms.initial_values(method, preset)
        assert config_from_dict(forms.raw_config(method, values)) == config_from_dict(preset), method


def test_text_fields_parse_to_the_declared_types():
    hints = {s.path: s.annotation for s in forms.form_fields("mrpo") + forms.form_fields("mallows_po")}
    assert forms.parse_value(hints["training.learning_rate"], "1e-6") == 1e-6
    assert forms.parse_value(hints["training.batch_size"], " 16 ") == 16
    assert forms.parse_value(hints["training.batch_size"], "sixteen") == "sixteen"  # left for validation to name
    assert forms.parse_value(hints["data.limit"], "") is None
    assert forms.parse_value(hints["data.limit"], "100") == 100
    assert forms.parse_value(hints["mrpo.alpha"], "") is None
    assert forms.parse_value(hints["mrpo.alpha"], "0.7, 0.3") == [0.7, 0.3]
    assert forms.parse_value(hints["mrpo.references"], "models/sft, models/ref2") == ["models/sft", "models/ref2"]
    assert forms.parse_value(hints["mallows_po.phi_star"], "auto") == "auto"
    assert forms.parse_value(hints["mallows_po.phi_star"], "0.3") == 0.3
    for value in (1e-6, 0.1, 5e-4, 123456.789):
        assert forms.parse_value(float, forms.format_value(value)) == value


def test_objective_lines_round_trip_and_reject_extra_parts():
    objectives = [{"name": "a", "train": "x.parquet", "judge": "sentiment", "eval": "y.parquet"},
                  {"name": "b", "train": "z.parquet", "judge": "conciseness"}]
    text = forms.format_objectives(objectives)
    assert text == "a, x.parquet, sentiment, y.parquet\nb, z.parquet, conciseness"
    assert forms.parse_objectives(text + "\n\n", "mixing_po.objectives") == objectives
    with pytest.raises(ConfigError, match=r"mixing_po.objectives\[0\]"):
        forms.parse_objectives("a, b, c, d, e", "mixing_po.objectives")


@pytest.mark.parametrize("change, field", [
    ({"training.max_steps": "0"}, "training.max_steps"),
    ({"training.batch_size": "eight"}, "training.batch_size"),
    ({"dpo.beta": "-0.1"}, "dpo.beta"),
    ({"model.lora": True, "model.lora.r": "0"}, "model.lora.r"),
    ({"data.train": "demo/missing.parquet"}, "data.train"),
])
def test_validation_errors_name_the_field_they_belong_to(data_root, change, field):
    make_files()
    values = {**forms.initial_values("dpo"), **change}
    paths = [s.path for s in forms.form_fields("dpo")]
    with pytest.raises(ConfigError) as err:
        config_from_dict(forms.raw_config("dpo", values), forms.FORM_SOURCE)
    assert forms.error_field(str(err.value), paths) == field


def test_nested_errors_go_to_the_field_holding_them(data_root):
    make_files()
    paths = [s.path for s in forms.form_fields("mixing_po")]
    values = {**forms.initial_values("mixing_po"),
              "mixing_po.objectives": "a, demo/prefs_sentiment_train.parquet\nb, demo/prefs_sentiment_train.parquet, x"}
    with pytest.raises(ConfigError) as err:
        config_from_dict(forms.raw_config("mixing_po", values), forms.FORM_SOURCE)
    assert "objectives[0].judge" in str(err.value)
    assert forms.error_field(str(err.value), paths) == "mixing_po.objectives"
    assert forms.error_field("form: method: must be one of dpo", paths) is None


# ---------------------------------------------------------------------------------------------- tables


def test_config_diff_lists_exactly_the_changed_fields():
    a = {"method": "mixing_po", "training": {"seed": 0, "lr": 0.1},
         "mixing_po": {"objectives": [{"name": "s", "judge": "sentiment"}]}}
    b = {"method": "mixing_po", "training": {"seed": 0, "lr": 0.2},
         "mixing_po": {"objectives": [{"name": "s", "judge": "conciseness"}], "eta": 0.02}}
    diff = tables.config_diff(a, b)
    assert diff.values.tolist() == [["mixing_po.eta", "—", "0.02"],
                                    ["mixing_po.objectives[0].judge", '"sentiment"', '"conciseness"'],
                                    ["training.lr", "0.1", "0.2"]]
    assert len(tables.config_diff(a, b, only_different=False)) == 6  # + method, name, seed


def test_judgment_win_rates_read_each_pair_from_the_first_models_side():
    rows = pd.DataFrame({"source": ["j"] * 4 + ["human"],
                         "model_a": ["x", "y", "x", "y", "y"], "model_b": ["y", "x", "y", "x", "x"],
                         "winner": ["a", "a", "tie", "b", "a"]})
    table = tables.judgment_win_rates(rows, n_resamples=200).set_index("source")
    # x's outcomes from source j: win, loss (y won as a), tie, win (y lost as a) -> 2.5 / 4
    assert table.loc["j", "model"] == "x" and table.loc["j", "opponent"] == "y"
    assert table.loc["j", "win_rate"] == pytest.approx(0.625) and table.loc["j", "n"] == 4
    assert table.loc["j", "low"] <= 0.625 <= table.loc["j", "high"]
    assert table.loc["human", "win_rate"] == 0.0


def test_leaderboard_matches_the_two_model_closed_form_per_group(data_root):
    from dashboard import queries

    battles = [("p", "q", "a")] * 6 + [("p", "q", "b")] * 2 + [("r", "s", "a")] * 3 + [("s", "r", "a")] * 1
    RunWriter("verdicts").append("judgments", [{"source": "j", "model_a": a, "model_b": b, "winner": w}
                                               for a, b, w in battles])
    board = queries.leaderboard(n_resamples=50).set_index("model")
    # Bradley-Terry MLE for two models: the logit gap is log(wins / losses); the weak prior moves it by < 1 Elo.
    assert board.loc["p", "rating"] - board.loc["q", "rating"] == pytest.approx(ELO_PER_LOGIT * math.log(3), abs=2)
    assert board.loc["r", "rating"] - board.loc["s", "rating"] == pytest.approx(ELO_PER_LOGIT * math.log(3), abs=2)
    assert board["group"].to_dict() == {"p": 0, "q": 0, "r": 1, "s": 1}  # the 8-battle group first
    assert board["battles"].to_dict() == {"p": 8, "q": 8, "r": 4, "s": 4}
    assert queries.leaderboard(["other"]).empty


def _mixture_rows(points, kind="estimate"):
    return [{"label": label, "weights": json.dumps(w), "objective": o, "score": v, "kind": kind, "ess": ess}
            for label, w, ess, scores in points for o, v in zip(("s", "c"), scores)]


def test_pareto_table_keeps_grid_points_apart_counts_each_point_once_and_marks_the_front(data_root):
    from dashboard import queries

    evaluation = RunWriter("e")
    evaluation.append("evaluations", [{"model": m, "metric": f"score/{o}", "value": v}
                                      for m, scores in (("m1", (0.9, 0.1)), ("m2", (0.5, 0.05))) for o, v in
                                      zip(("s", "c"), scores)] + [{"model": "m3", "metric": "score/s", "value": 0.99}])
    RunWriter("e2").append("evaluations", [{"model": "m1", "metric": "score/s", "value": 0.95}])  # m1 rescored on s
    mix = RunWriter("r")
    mix.append("mixtures", _mixture_rows([("grid", [1, 0], 4.0, (0.6, 0.6)), ("grid", [0, 1], 3.0, (0.2, 0.7)),
                                          ("lambda*", [0.3, 0.7], 2.0, (0.1, 0.1))]))
    # The sweep ran again: lambda* moved; the run's own evaluations rows are its generated points.
    mix.append("mixtures", _mixture_rows([("lambda*", [0.4, 0.6], 2.5, (0.3, 0.65))]))
    mix.append("mixtures", _mixture_rows([("lambda*", [0.4, 0.6], None, (0.35, 0.62))], kind="generated"))
    mix.append("evaluations", [{"model": "lambda*", "metric": f"score/{o}", "value": v}
                               for o, v in zip(("s", "c"), (0.35, 0.62))])
    points = queries.pareto_table(["s", "c"])
    by_kind = points.set_index(["name", "kind"])
    coords = {key: (row.s, row.c) for key, row in by_kind.iterrows()}
    # m3 lacks c; m1 is one point with its latest scores; lambda* once per kind, at its latest sweep.
    assert coords == {("m1", "model"): (0.95, 0.1), ("m2", "model"): (0.5, 0.05),
                      ("λ=[1, 0] · r", "mixture:estimate"): (0.6, 0.6),
                      ("λ=[0, 1] · r", "mixture:estimate"): (0.2, 0.7),
                      ("lambda* · r", "mixture:estimate"): (0.3, 0.65),
                      ("lambda* · r", "mixture:generated"): (0.35, 0.62)}
    assert by_kind.loc[("m1", "model"), "run_id"] == "e2"
    assert by_kind.loc[("lambda* · r", "mixture:estimate"), ["weights", "ess"]].tolist() == ["[0.4, 0.6]", 2.5]
    assert by_kind.loc[("λ=[0, 1] · r", "mixture:estimate"), ["weights", "ess"]].tolist() == ["[0, 1]", 3.0]
    for key, (s, c) in coords.items():  # brute force: dominated by any other point?
        dominated = any(q[0] >= s and q[1] >= c and q != (s, c) for q in coords.values())
        assert by_kind.loc[key, "on_front"] == (not dominated), key
    assert by_kind["on_front"].sum() == 5  # only m2 is dominated (by m1)
    only_models = queries.pareto_table(["s", "c"], kinds=["model"])
    assert only_models["name"].tolist() == ["m1", "m2"] and only_models["on_front"].tolist() == [True, False]
    mixtures = queries.pareto_table(["s", "c"], run_ids=["r"])
    assert set(mixtures["kind"]) == {"mixture:estimate", "mixture:generated"} and len(mixtures) == 4
    assert queries.score_objectives() == ["c", "s"]


def test_pareto_fronts_are_drawn_per_distribution(data_root):
    """An estimate of pi_lambda at temperature 1 neither dominates nor is dominated by points sampled from another
    distribution: each distribution has its own front, and the chart draws one front per distribution."""
    from dashboard import charts, queries

    mix = RunWriter("r")
    estimate = [{**row, "distribution": "sequence T=1"} for row in _mixture_rows([("lambda*", [0.5, 0.5], 9.0,
                                                                                  (0.9, 0.9))])]
    token = [{**row, "distribution": "token T=0.5"} for row in _mixture_rows([("lambda*", [0.5, 0.5], None,
                                                                               (0.5, 0.5))], kind="generated")]
    mix.append("mixtures", estimate + token)
    RunWriter("e").append("evaluations", [{"model": "m", "metric": f"score/{o}", "value": v, "distribution": d}
                                          for o, v, d in (("s", 0.4, "token T=0.5"), ("c", 0.6, "token T=0.5"))])
    RunWriter("old").append("evaluations", [{"model": "legacy", "metric": f"score/{o}", "value": 0.1}
                                            for o in ("s", "c")])  # written before distributions were recorded
    table = queries.pareto_table(["s", "c"])
    points = table.set_index(["name", "kind"])
    assert points["distribution"].to_dict() == {("lambda* · r", "mixture:estimate"): "sequence T=1",
                                                ("lambda* · r", "mixture:generated"): "token T=0.5",
                                                ("m", "model"): "token T=0.5", ("legacy", "model"): "unknown"}
    assert points["on_front"].all()  # the estimate at (0.9, 0.9) would dominate everything on one front
    fig = charts.pareto_chart(table, ["s", "c"])
    fronts = {t.legendgroup: set(zip(t.x, t.y)) for t in fig.data if t.name == "Pareto front"}
    assert fronts == {"sequence T=1": {(0.9, 0.9)}, "token T=0.5": {(0.5, 0.5), (0.4, 0.6)}, "unknown": {(0.1, 0.1)}}
    labels = {text for t in fig.data if t.name != "Pareto front" for text in t.text}
    assert {"lambda*", "m", "legacy"} <= labels


def test_estimate_path_equals_hand_importance_weighting():
    samples = mixing_samples()
    lam = pd.DataFrame([(step, o, w) for step, w0 in enumerate([0.5, 0.7, 0.9])
                        for o, w in zip(samples.objectives, [w0, 1 - w0])], columns=["step", "objective", "weight"])
    path = tables.estimate_path(samples, lam, samples.objectives)
    assert path["step"].tolist() == [0, 1, 2]
    for row, w0 in zip(path.itertuples(), [0.5, 0.7, 0.9]):
        w = softmax(samples.logratios @ np.array([w0, 1 - w0]), axis=1)  # self-normalized weights per prompt
        expected = (w[..., None] * samples.scores).sum(axis=1).mean(axis=0)
        assert [row.sentiment, row.conciseness] == pytest.approx(expected.tolist())
        assert json.loads(row.weights) == pytest.approx([w0, 1 - w0])


# ---------------------------------------------------------------------------------------------- text diff


@given(st.text(alphabet="ab \n<*>", max_size=40), st.text(alphabet="ab \n<*>", max_size=40))
def test_word_diff_chunks_rebuild_both_texts(a, b):
    chunks = textdiff.word_diff(a, b)
    assert "".join(t for op, t in chunks if op != "+") == a
    assert "".join(t for op, t in chunks if op != "-") == b


def test_diff_text_marks_removed_and_added_words_literally():
    text = textdiff.diff_text("the film was <b>great</b>", "the movie was **great**")
    assert text.splitlines() == ["  the", "- film", "+ movie", "  was", "- <b>great</b>", "+ **great**"]
    assert textdiff.similarity("same words", "same words") == 1.0


def test_terminal_codes_are_dropped_from_a_log_and_brackets_kept():
    from dashboard.widgets import terminal_text

    line = "  0%|          | 0/2 [00:00<?, ?it/s]\x1b[A{'eval_loss': '0.67'}\x1b[0;32m ok\x1b[0m \x1b[?25l[x]"
    assert terminal_text(line) == "  0%|          | 0/2 [00:00<?, ?it/s]{'eval_loss': '0.67'} ok [x]"


# ---------------------------------------------------------------------------------------------- simplex


@given(st.lists(st.floats(0, 1), min_size=2, max_size=5), st.data())
def test_rebalance_stays_on_the_simplex(weights, data):
    index = data.draw(st.integers(0, len(weights) - 1))
    value = data.draw(st.floats(0, 1))
    out = simplex.rebalance(weights, index, value)
    assert sum(out) == pytest.approx(1.0, abs=1e-9) and min(out) >= 0
    assert out[index] == pytest.approx(value, abs=2e-3)


def test_rebalance_keeps_the_ratios_of_the_others():
    assert simplex.rebalance([0.2, 0.3, 0.5], 0, 0.6) == pytest.approx([0.6, 0.15, 0.25])
    assert simplex.rebalance([1.0, 0.0, 0.0], 0, 0.4) == pytest.approx([0.4, 0.3, 0.3])  # others all 0: shared
    assert simplex.snap([2.0, 1.0, 1.0]) == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="index"):
        simplex.rebalance([0.5, 0.5], 2, 0.1)
    with pytest.raises(ValueError, match="positive weight"):
        simplex.snap([0.0, 0.0])

