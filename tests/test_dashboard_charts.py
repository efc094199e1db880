"""Chart builders: every figure carries exactly the DataFrame's numbers, and the Pareto front goes through exactly the
non-dominated points (found here by brute force)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from dashboard import charts


def _non_dominated(points: np.ndarray) -> set[tuple]:
    """Brute force: a point is dominated when another is >= everywhere and > somewhere (larger is better)."""
    keep = set()
    for i, p in enumerate(points):
        if not any(np.all(q >= p) and np.any(q > p) for j, q in enumerate(points) if j != i):
            keep.add(tuple(p))
    return keep


def _trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def test_a_single_logged_point_is_a_visible_marker_and_short_runs_tick_whole_steps():
    curves = pd.DataFrame({"run_id": ["one", "many", "many", "many"], "step": [3, 1, 2, 3],
                           "value": [0.6, 0.7, 0.69, 0.66]})
    fig = charts.metric_curves(curves, "eval/accuracy")
    assert _trace(fig, "one").mode == "markers" and _trace(fig, "many").mode == "lines"
    assert fig.layout.xaxis.dtick == 1  # 1, 2, 3 rather than 1, 1.5, 2, ...
    long = pd.DataFrame({"run_id": "r", "step": np.arange(500), "value": np.linspace(1, 0, 500)})
    assert charts.metric_curves(long, "loss").layout.xaxis.dtick is None  # plotly's own spacing


def test_ema_matches_hand_values_and_zero_weight_is_identity():
    assert np.allclose(charts.ema([1.0, 2.0, 3.0], 0.5), [1.0, 1.5, 2.25])
    assert np.allclose(charts.ema([4.0, 0.0, 8.0], 0.75), [4.0, 3.0, 4.25])
    assert np.array_equal(charts.ema([3.0, -1.0, 7.5], 0.0), [3.0, -1.0, 7.5])
    with pytest.raises(ValueError, match="weight"):
        charts.ema([1.0], 1.0)


def test_metric_curves_one_line_per_run_with_the_stored_values():
    curves = pd.DataFrame({"run_id": ["b", "a", "a", "b", "a"], "step": [1, 2, 0, 0, 1],
                           "value": [5.0, 3.0, 1.0, 4.0, 2.0]})
    fig = charts.metric_curves(curves, "loss", names={"a": "run A"})
    assert [t.name for t in fig.data] == ["run A", "b"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [1.0, 2.0, 3.0]
    assert list(fig.data[1].x) == [0, 1] and list(fig.data[1].y) == [4.0, 5.0]

    smooth = charts.metric_curves(curves, "loss", smoothing=0.5)
    raw_a, smooth_a = [t for t in smooth.data if t.legendgroup == "a"]
    assert list(raw_a.y) == [1.0, 2.0, 3.0]
    assert np.allclose(smooth_a.y, [1.0, 1.5, 2.25])


def test_win_rate_bars_carry_values_and_asymmetric_intervals():
    rows = pd.DataFrame({"label": ["m1 vs b", "m2 vs b", "m1 vs b", "m2 vs b"],
                         "metric": ["win rate", "win rate", "LC win rate", "LC win rate"],
                         "value": [0.7, 0.4, 0.65, 0.45], "low": [0.6, 0.25, np.nan, np.nan],
                         "high": [0.75, 0.5, np.nan, np.nan]})
    fig = charts.win_rate_bars(rows)
    raw, lc = _trace(fig, "win rate"), _trace(fig, "LC win rate")
    assert list(raw.x) == ["m1 vs b", "m2 vs b"] and np.allclose(raw.y, [0.7, 0.4])
    assert np.allclose(raw.error_y.array, [0.05, 0.1]) and np.allclose(raw.error_y.arrayminus, [0.1, 0.15])
    assert np.allclose(lc.y, [0.65, 0.45]) and np.isnan(lc.error_y.array).all()


def test_leaderboard_chart_orders_ratings_with_intervals():
    table = pd.DataFrame({"model": ["x", "y"], "rating": [1100.0, 900.0], "low": [1050.0, 800.0],
                          "high": [1180.0, 950.0]})
    trace = charts.leaderboard_chart(table).data[0]
    assert list(trace.y) == ["y", "x"] and list(trace.x) == [900.0, 1100.0]
    assert np.allclose(trace.error_x.array, [50.0, 80.0]) and np.allclose(trace.error_x.arrayminus, [100.0, 50.0])


def _points(scores: np.ndarray, objectives: list[str]) -> pd.DataFrame:
    from engine.evaluation import pareto_front

    frame = pd.DataFrame(scores, columns=objectives)
    frame.insert(0, "name", [f"p{i}" for i in range(len(frame))])
    frame["kind"] = np.where(np.arange(len(frame)) % 2 == 0, "model", "mixture:estimate")
    frame["run_id"], frame["weights"], frame["ess"] = "r", "", np.nan
    frame["on_front"] = pareto_front(scores)
    return frame


def test_pareto_front_is_drawn_through_exactly_the_non_dominated_points():
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0, 1, size=(25, 2)), 2)
    scores[5] = scores[4]  # a duplicate: neither copy dominates the other
    points = _points(scores, ["sentiment", "conciseness"])
    fig = charts.pareto_chart(points, ["sentiment", "conciseness"])
    front = _trace(fig, "Pareto front")
    drawn = list(zip(front.x, front.y))
    assert set(drawn) == _non_dominated(scores)
    assert len(drawn) == sum(tuple(p) in _non_dominated(scores) for p in scores)  # duplicates both drawn
    assert list(front.x) == sorted(front.x)  # drawn left to right
    by_kind = {t.name: set(zip(t.x, t.y)) for t in fig.data if t.name in ("model", "mixture:estimate")}
    assert by_kind["model"] | by_kind["mixture:estimate"] == set(map(tuple, scores))


def test_three_objectives_give_a_3d_chart_with_the_3d_front():
    rng = np.random.default_rng(4)
    scores = rng.uniform(0, 1, size=(30, 3))
    points = _points(scores, ["a", "b", "c"])
    fig = charts.pareto_chart(points, ["a", "b", "c"], current={"a": 0.5, "b": 0.5, "c": 0.5})
    front = _trace(fig, "Pareto front")
    assert front.type == "scatter3d"
    assert set(zip(front.x, front.y, front.z)) == _non_dominated(scores)
    current = _trace(fig, "current mixture")
    assert (current.x[0], current.y[0], current.z[0]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="2 or 3"):
        charts.pareto_chart(points, ["a"])


def test_pareto_hover_names_the_point_and_escapes_markup():
    points = _points(np.array([[0.1, 0.9], [0.8, 0.2]]), ["x", "y"])
    points.loc[0, "name"] = "<img src=x onerror=alert(1)>"
    points.loc[1, "weights"], points.loc[1, "ess"] = "[0.3, 0.7]", 12.5
    fig = charts.pareto_chart(points, ["x", "y"], path=pd.DataFrame({"step": [0, 5], "weights": ["[0.5, 0.5]",
                                                                                            "[0.6, 0.4]"],
                                                                   "x": [0.3, 0.4], "y": [0.5, 0.45]}))
    hover = _trace(fig, "model").hovertext[0]
    assert "&lt;img src=x onerror=alert(1)&gt;" in hover and "<img" not in hover
    assert "<img" not in _trace(fig, "model").text[0]  # the label written beside the point is escaped too
    assert "weights: [0.3, 0.7]" in _trace(fig, "mixture:estimate").hovertext[0]
    assert "ESS: 12.5" in _trace(fig, "mixture:estimate").hovertext[0]
    path = _trace(fig, "λ path (estimated)")
    assert list(path.x) == [0.3, 0.4] and list(path.y) == [0.5, 0.45]


def test_lambda_chart_one_line_per_objective():
    path = pd.DataFrame(list(itertools.product([0, 1, 2], ["s", "c"])), columns=["step", "objective"])
    path["weight"] = [0.5, 0.5, 0.6, 0.4, 0.7, 0.3]
    fig = charts.lambda_chart(path)
    assert {t.name: list(t.y) for t in fig.data} == {"c": [0.5, 0.4, 0.3], "s": [0.5, 0.6, 0.7]}
