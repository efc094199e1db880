"""Evaluation statistics checked against scipy, brute force, maximum likelihood by hand and closed forms."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize, stats
from scipy.special import expit

from engine.evaluation import (
    ELO_PER_LOGIT,
    bradley_terry,
    implicit_reward_margins,
    length_controlled_win_rate,
    outcomes_from_probabilities,
    pareto_front,
    win_rate,
)

# ---------------------------------------------------------------------------------------------- win_rate


@pytest.mark.parametrize(
    "n, probs, seed", [(40, (0.3, 0.1, 0.6), 0), (200, (0.5, 0.2, 0.3), 1), (500, (0.1, 0.0, 0.9), 2)]
)
def test_win_rate_interval_matches_scipy_percentile_bootstrap(n, probs, seed):
    rng = np.random.default_rng(seed)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=n, p=probs)
    rate, low, high = win_rate(outcomes, n_resamples=4000, confidence=0.9, seed=seed)
    ref = stats.bootstrap(
        (outcomes,), np.mean, n_resamples=9999, confidence_level=0.9, method="percentile", random_state=seed + 10
    ).confidence_interval
    assert rate == pytest.approx(outcomes.mean(), abs=1e-12)
    assert low == pytest.approx(ref.low, abs=0.01)
    assert high == pytest.approx(ref.high, abs=0.01)


def test_win_rate_hand_cases():
    # One win, one loss: bootstrap means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the central 95%
    # interval runs from 0 to 1.
    assert win_rate([1, 0], n_resamples=4000) == (0.5, 0.0, 1.0)
    # Nothing varies, nothing to resample.
    assert win_rate([0.5] * 7) == (0.5, 0.5, 0.5)
    assert win_rate(np.ones(3)) == (1.0, 1.0, 1.0)
    # Same seed, same interval; wider confidence, wider interval.
    data = [1, 0.5, 0, 1, 1, 0, 1, 0.5]
    assert win_rate(data, seed=3) == win_rate(data, seed=3)
    _, lo80, hi80 = win_rate(data, confidence=0.8, seed=3)
    _, lo99, hi99 = win_rate(data, confidence=0.99, seed=3)
    assert lo99 <= lo80 and hi80 <= hi99 and (lo99 < lo80 or hi80 < hi99)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"outcomes": []}, "outcomes"),
        ({"outcomes": [1, 0.7]}, "outcomes"),
        ({"outcomes": [1, 2]}, "outcomes"),
        ({"outcomes": [1, np.nan]}, "outcomes"),
        ({"outcomes": [[1, 0]]}, "outcomes"),
        ({"outcomes": [1, 0], "confidence": 1.0}, "confidence"),
        ({"outcomes": [1, 0], "n_resamples": 0}, "n_resamples"),
    ],
)
def test_win_rate_rejects_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        win_rate(**kwargs)


def test_outcomes_from_probabilities():
    got = outcomes_from_probabilities(np.array([0.9, 0.5, 0.1, 0.51, 0.49, 1.0, 0.0]))
    np.testing.assert_array_equal(got, [1, 0.5, 0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="probabilities"):
        outcomes_from_probabilities([0.2, 1.3])
    with pytest.raises(ValueError, match="probabilities"):
        outcomes_from_probabilities([])


# ---------------------------------------------------------------------------------------------- length control


def test_lc_of_a_model_that_only_gets_longer_moves_to_half():
    # The judge sees no quality difference and prefers the longer answer; model A writes longer answers.
    rng = np.random.default_rng(0)
    n = 3000
    length_b = rng.uniform(50, 150, n)
    length_a = np.clip(length_b + rng.normal(40, 40, n), 1, None)
    d = length_a - length_b
    p_a = expit(2.0 * np.tanh(d / d.std()))
    outcomes = (rng.random(n) < p_a).astype(float)
    raw = outcomes.mean()
    lc = length_controlled_win_rate(outcomes, length_a, length_b)
    assert raw > 0.7
    assert abs(lc - 0.5) < 0.05
    assert abs(lc - 0.5) < abs(raw - 0.5) / 4


def test_lc_keeps_a_real_quality_gap():
    # Same lengths policy as above, plus a genuine advantage of +1 logit: LC must land near sigmoid(1).
    rng = np.random.default_rng(1)
    n = 3000
    length_b = rng.uniform(50, 150, n)
    length_a = np.clip(length_b + rng.normal(40, 40, n), 1, None)
    d = length_a - length_b
    outcomes = (rng.random(n) < expit(1.0 + 2.0 * np.tanh(d / d.std()))).astype(float)
    assert length_controlled_win_rate(outcomes, length_a, length_b) == pytest.approx(expit(1.0), abs=0.04)


def test_lc_equals_raw_rate_when_lengths_are_equal():
    rng = np.random.default_rng(2)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=101, p=[0.3, 0.2, 0.5])
    lengths = np.full(101, 80.0)
    assert length_controlled_win_rate(outcomes, lengths, lengths) == pytest.approx(outcomes.mean(), abs=1e-6)


def test_lc_hand_cases():
    # Two length groups, d = +c and d = -c: the two-parameter model fits both groups' rates exactly, so
    # b0 = (logit 0.9 + logit 0.5) / 2 = ln(9)/2 and LC = sigmoid(ln 3) = 3/4, while the raw rate is 0.7.
    outcomes = np.r_[np.ones(90), np.zeros(10), np.ones(50), np.zeros(50)]
    length_a = np.r_[np.full(100, 120.0), np.full(100, 80.0)]
    length_b = np.full(200, 100.0)
    assert outcomes.mean() == pytest.approx(0.7)
    assert length_controlled_win_rate(outcomes, length_a, length_b) == pytest.approx(0.75, abs=0.005)
    # Ties only: no preference at any length.
    assert length_controlled_win_rate([0.5] * 4, [10, 20, 30, 40], [20, 20, 20, 20]) == pytest.approx(0.5, abs=1e-6)
    # Every prompt won: the limit of the fit.
    assert length_controlled_win_rate([1, 1, 1], [10, 20, 30], [5, 5, 50]) == 1.0


@pytest.mark.parametrize(
    "args, word",
    [
        (([1, 0], [1, 2, 3], [1, 2]), "length_a"),
        (([1, 0], [1, 2], [1]), "length_b"),
        (([1, 0], [1, -2], [1, 2]), "non-negative"),
        (([1, 0.3], [1, 2], [1, 2]), "outcomes"),
        (([], [], []), "outcomes"),
    ],
)
def test_lc_rejects_bad_input(args, word):
    with pytest.raises(ValueError, match=word):
        length_controlled_win_rate(*args)


# ---------------------------------------------------------------------------------------------- Pareto front


def _brute_force_front(points):
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if np.all(points[j] >= points[i]) and np.any(points[j] > points[i]):
                keep[i] = False
                break
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dim", [2, 3])
def test_pareto_front_matches_brute_force(seed, dim):
    rng = np.random.default_rng(seed)
    # Few distinct values: many ties within columns and exact duplicate points.
    points = rng.integers(0, 6, size=(60, dim)).astype(float)
    np.testing.assert_array_equal(pareto_front(points), _brute_force_front(points))
    continuous = rng.normal(size=(80, dim))
    np.testing.assert_array_equal(pareto_front(continuous), _brute_force_front(continuous))


def test_pareto_front_hand_cases():
    pts = [[1, 2], [2, 1], [1, 1], [2, 1], [0, 3]]
    np.testing.assert_array_equal(pareto_front(pts), [True, True, False, True, True])
    np.testing.assert_array_equal(pareto_front(pd.DataFrame({"a": [1.0, 3.0], "b": [1.0, 3.0]})), [False, True])
    np.testing.assert_array_equal(pareto_front([[5.0]]), [True])
    for bad in ([], [1, 2, 3], [[1, np.nan]]):
        with pytest.raises(ValueError, match="points"):
            pareto_front(bad)


# ---------------------------------------------------------------------------------------------- Bradley-Terry


def _battles(pairs):
    """pairs: list of (model_a, model_b, winner, count)."""
    rows = [(a, b, w) for a, b, w, k in pairs for _ in range(k)]
    return pd.DataFrame(rows, columns=["model_a", "model_b", "winner"])


def _synthetic_tournament(seed, n_models=10, n_battles=4000, tie_rate=0.1):
    rng = np.random.default_rng(seed)
    strengths = rng.normal(0, 1, n_models)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    a_wins = rng.random(n_battles) < expit(strengths[a] - strengths[b])
    winner = np.where(rng.random(n_battles) < tie_rate, "tie", np.where(a_wins, "a", "b"))
    names = np.array([f"m{i}" for i in range(n_models)])
    return strengths, pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})


def _neg_log_likelihood(w, a, b, score):
    # Ties counted half: score 1, 0.5 or 0 for model_a.
    z = w[a] - w[b]
    return -np.sum(score * np.log(expit(z)) + (1 - score) * np.log(expit(-z)))


def test_bradley_terry_recovers_synthetic_strengths_and_matches_direct_mle():
    strengths, battles = _synthetic_tournament(seed=0)
    table = bradley_terry(battles, n_resamples=30, seed=0).set_index("model")
    names = [f"m{i}" for i in range(len(strengths))]
    ratings = table.loc[names, "rating"].to_numpy()
    assert stats.spearmanr(ratings, strengths).statistic >= 0.95
    # Independent maximum likelihood with scipy's BFGS on the same battles.
    a = battles["model_a"].str[1:].astype(int).to_numpy()
    b = battles["model_b"].str[1:].astype(int).to_numpy()
    score = battles["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy()
    w = optimize.minimize(_neg_log_likelihood, np.zeros(len(strengths)), args=(a, b, score), method="BFGS").x
    np.testing.assert_allclose(ratings, 1000 + ELO_PER_LOGIT * (w - w.mean()), atol=1.0)
    assert ratings.mean() == pytest.approx(1000.0, abs=1e-6)
    assert np.all(table["low"] <= table["rating"]) and np.all(table["rating"] <= table["high"])
    assert np.all(table["high"] - table["low"] > 0)
    assert list(table["rating"]) == sorted(table["rating"], reverse=True)


def test_bradley_terry_two_models_closed_form_and_bootstrap():
    # 300 wins to 100: P = 3/4, so the gap is 400 log10(3) Elo points, split around the mean of 1000.
    battles = _battles([("x", "y", "a", 300), ("x", "y", "b", 100)])
    table = bradley_terry(battles, n_resamples=300, seed=0).set_index("model")
    half_gap = 200 * np.log10(3)
    assert table.loc["x", "rating"] == pytest.approx(1000 + half_gap, abs=0.1)
    assert table.loc["y", "rating"] == pytest.approx(1000 - half_gap, abs=0.1)
    # x's rating is 1000 + (ELO/2) logit(p_hat), monotone in p_hat, so its percentile interval maps back to the
    # percentile interval of the mean outcome (same 0.01 tolerance as the win-rate check).
    ref = stats.bootstrap(
        (np.r_[np.ones(300), np.zeros(100)],), np.mean, n_resamples=9999, method="percentile", random_state=1
    ).confidence_interval
    to_p = lambda rating: expit(2 * (rating - 1000) / ELO_PER_LOGIT)  # noqa: E731
    assert to_p(table.loc["x", "low"]) == pytest.approx(ref.low, abs=0.01)
    assert to_p(table.loc["x", "high"]) == pytest.approx(ref.high, abs=0.01)


def test_bradley_terry_ties_count_half_and_anchor():
    # 100 wins and 200 ties for x equal 200 wins to 100: gap 400 log10(2); orientation of the rows is irrelevant.
    battles = _battles([("x", "y", "a", 100), ("y", "x", "tie", 200)])
    table = bradley_terry(battles, n_resamples=20, anchor="y", base_rating=1200.0).set_index("model")
    assert table.loc["y", "rating"] == 1200.0
    assert table.loc["y", "low"] == table.loc["y", "high"] == 1200.0
    assert table.loc["x", "rating"] == pytest.approx(1200 + 400 * np.log10(2), abs=0.1)
    # A model that never loses stays finite (weak prior) and on top.
    unbeaten = bradley_terry(_battles([("p", "q", "a", 5), ("q", "r", "a", 5), ("r", "q", "a", 5)]), n_resamples=10)
    assert unbeaten["model"].iloc[0] == "p" and np.isfinite(unbeaten["rating"]).all()


@pytest.mark.parametrize(
    "battles, word",
    [
        (pd.DataFrame({"model_a": ["x"], "model_b": ["y"], "winner": ["draw"]}), "winner"),
        (pd.DataFrame({"model_a": ["x"], "model_b": ["y"]}), "winner"),
        (pd.DataFrame({"model_a": [], "model_b": [], "winner": []}), "empty"),
        (pd.DataFrame({"model_a": ["x"], "model_b": ["x"], "winner": ["a"]}), "model_a == model_b"),
        (pd.DataFrame({"model_a": ["x", "u"], "model_b": ["y", "v"], "winner": ["a", "b"]}), "never meet"),
        ([("x", "y", "a")], "DataFrame"),
    ],
)
def test_bradley_terry_rejects_bad_input(battles, word):
    with pytest.raises(ValueError, match=word):
        bradley_terry(battles, n_resamples=5)


def test_bradley_terry_rejects_unknown_anchor():
    with pytest.raises(ValueError, match="anchor"):
        bradley_terry(_battles([("x", "y", "a", 2)]), n_resamples=5, anchor="z")


# ---------------------------------------------------------------------------------------------- reward margins


def test_implicit_reward_margins_hand_values():
    # Log-ratios chosen: (-1)-(-2) = 1, rejected: (-3)-(-2) = -1 -> margin 0.1 * 2 = 0.2; second: 0; third < 0.
    margins, accuracy = implicit_reward_margins(
        np.array([-1.0, -5.0, -4.0]), np.array([-3.0, -5.0, -1.0]), [-2.0, -5.0, -4.0], [-2.0, -5.0, -2.0], beta=0.1
    )
    np.testing.assert_allclose(margins, [0.2, 0.0, -0.1])
    assert accuracy == pytest.approx(1 / 3)
    t = torch.tensor([-1.0], requires_grad=True)
    margins, accuracy = implicit_reward_margins(t, [-3.0], [-2.0], [-2.0], beta=0.5)
    np.testing.assert_allclose(margins, [1.0])
    assert accuracy == 1.0
    with pytest.raises(ValueError, match="ref_rejected"):
        implicit_reward_margins([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0], beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        implicit_reward_margins([1.0], [1.0], [1.0], [1.0], beta=0.0)


def test_batched_strength_fit_equals_scikit_learn_per_resample():
    """The bootstrap's one batched Newton solve gives, for every weighting, scikit-learn's own regularised fit."""
    from sklearn.linear_model import LogisticRegression

    from engine.theory.statistics import _PRIOR_C, _design, _fit_strengths

    rng = np.random.default_rng(3)
    n_models, n_groups = 6, 25
    ia = rng.integers(0, n_models, n_groups)
    ib = (ia + rng.integers(1, n_models, n_groups)) % n_models
    x, y, group, share = _design(ia, ib, rng.integers(0, 3, n_groups), n_models)
    counts = rng.integers(0, 40, size=(8, n_groups)).astype(float)
    counts[0, :3] = 0.0  # a resample that drew none of some groups
    ours = _fit_strengths(x, y, counts[:, group] * share)
    for fit, row in zip(ours, counts):
        w = row[group] * share
        reference = LogisticRegression(C=_PRIOR_C, fit_intercept=False, tol=1e-12, max_iter=10_000)
        reference.fit(x[w > 0], y[w > 0], sample_weight=w[w > 0])
        np.testing.assert_allclose(fit, reference.coef_[0], atol=1e-4)
