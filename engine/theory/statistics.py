"""Statistics of evaluation, as pure functions: numpy / pandas in, plain values out.

Methods and references
----------------------
* ``win_rate``: mean per-prompt outcome (1 win, 0.5 tie, 0 loss) with a percentile bootstrap interval over
  prompts (Efron & Tibshirani 1993). Outcomes take three values, so the bootstrap mean of N resampled prompts is
  a function of the multinomial counts of those values; drawing the counts is the same distribution as
  resampling prompts and costs O(n_resamples) memory instead of O(n_resamples * N).
* ``length_controlled_win_rate``: AlpacaEval 2's length-controlled win rate (Dubois, Galambosi, Liang,
  Hashimoto, "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators", 2024). A logistic
  model of the judge's preference, ``logit P(A preferred) = b0 + b1 * tanh(d / std(d))`` with
  ``d = length_a - length_b``, is fitted and read at ``d = 0``: ``sigmoid(b0)``. AlpacaEval's GLM also has an
  instruction-difficulty term fitted across many models; with one pair of models it is absorbed in ``b0``.
* ``bradley_terry``: Bradley-Terry ratings on the Elo scale as in Chatbot Arena (Chiang et al., "Chatbot Arena:
  An Open Platform for Evaluating LLMs by Human Preference", ICML 2024): ``P(a beats b) = sigmoid(w_a - w_b)``
  fitted by logistic regression without intercept, ratings ``400 / ln 10`` Elo points per logit, ties counted
  as half a win each way, percentile bootstrap intervals over battles.
* ``pareto_front``: the non-dominated set, larger is better in every column.
* ``implicit_reward_margins``: DPO's implicit reward margin ``beta * (h(y_w) - h(y_l))`` with
  ``h = log pi - log pi_ref`` (Rafailov et al. 2023) and the share of pairs it orders correctly, the numbers TRL
  logs as ``rewards/margins`` and ``rewards/accuracies``.

Both logistic fits carry a weak Gaussian prior (sd 10 logits, about 1700 Elo points) on the non-intercept
coefficients: it keeps them finite when one side wins every comparison (the maximum-likelihood estimate is
then infinite) and moves well-determined estimates by far less than their sampling error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

# Elo points per logit unit: 400 points mean odds of 10 to 1.
ELO_PER_LOGIT = 400.0 / np.log(10.0)
_PRIOR_SD_LOGITS = 10.0
# scikit-learn minimises C * sum(weighted log-loss) + ||w||^2 / 2, so C = sd^2 is a N(0, sd^2) prior.
_PRIOR_C = _PRIOR_SD_LOGITS**2
_OUTCOME_VALUES = (0.0, 0.5, 1.0)
_WINNER_LABELS = ("a", "b", "tie")

# ---------------------------------------------------------------------------------------------- validation


def _vector(x: Any, name: str) -> np.ndarray:
    """A finite, non-empty float64 vector from a list, numpy array, pandas Series or torch tensor."""
    if hasattr(x, "detach"):  # torch tensors, possibly requiring grad or living on a GPU
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric 1-D array (got {type(x).__name__})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, one value per prompt (got shape {arr.shape})")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; evaluate at least one prompt")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or recompute those entries")
    return arr


def _outcomes(outcomes: Any) -> np.ndarray:
    arr = _vector(outcomes, "outcomes")
    bad = ~np.isin(arr, _OUTCOME_VALUES)
    if bad.any():
        raise ValueError(
            f"outcomes must be 1 (win), 0.5 (tie) or 0 (loss); found {arr[bad][0]!r} at index "
            f"{int(np.flatnonzero(bad)[0])} (use outcomes_from_probabilities for judge probabilities)"
        )
    return arr


def _same_length(n: int, **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} entries but outcomes has {n}; pass one value per prompt")


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (got {confidence})")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer (got {n_resamples})")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval along axis 0, ignoring NaN (resamples where a quantity is undefined)."""
    tail = (1.0 - confidence) / 2.0
    return np.nanquantile(samples, tail, axis=0), np.nanquantile(samples, 1.0 - tail, axis=0)


# ---------------------------------------------------------------------------------------------- win rates


def outcomes_from_probabilities(probabilities: Any) -> np.ndarray:
    """Per-prompt outcomes from a pairwise judge's probabilities that A beats B.

    p > 0.5 is a win (1), p < 0.5 a loss (0), p == 0.5 a tie (0.5): the judge's decision, not its confidence,
    is what a win rate counts. Returns a float array ready for ``win_rate``.
    """
    p = _vector(probabilities, "probabilities")
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probabilities must lie in [0, 1]; pass P(A beats B), not a logit or a score")
    return np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))


def win_rate(
    outcomes: Any, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Win rate of A against B with a percentile bootstrap interval over prompts.

    Ties count half. Returns ``(rate, low, high)`` with ``rate`` the plain mean of ``outcomes``; the interval
    is the equal-tailed ``confidence`` percentile interval of ``n_resamples`` bootstrap means, reproducible
    through ``seed``. Prompts, not judge calls, are resampled because the prompt set is what would change if
    the evaluation were repeated.
    """
    arr = _outcomes(outcomes)
    _check_confidence(confidence, n_resamples)
    n = arr.size
    freq = np.array([np.mean(arr == v) for v in _OUTCOME_VALUES])
    counts = np.random.default_rng(seed).multinomial(n, freq, size=int(n_resamples))
    means = (counts @ np.asarray(_OUTCOME_VALUES)) / n
    low, high = _percentiles(means, confidence)
    return float(arr.mean()), float(low), float(high)


def length_controlled_win_rate(outcomes: Any, length_a: Any, length_b: Any) -> float:
    """AlpacaEval 2 length-controlled win rate: the judge's preference predicted at equal lengths.

    Fits ``logit P(A preferred) = b0 + b1 * tanh(d / std(d))``, ``d = length_a - length_b`` (lengths in any
    unit: tokens or characters), and returns ``sigmoid(b0)``. A judge that rewards length alone puts its
    preference in ``b1``, so a model that only writes longer answers moves toward 0.5. Ties enter as two rows
    of weight 0.5, one won and one lost. When all lengths are equal the covariate vanishes and the result is
    the raw win rate. When every outcome is the same win or loss the intercept's estimate is infinite and the
    limit (1.0 or 0.0) is returned.
    """
    y = _outcomes(outcomes)
    la, lb = _vector(length_a, "length_a"), _vector(length_b, "length_b")
    _same_length(y.size, length_a=la, length_b=lb)
    if np.any(la < 0) or np.any(lb < 0):
        raise ValueError("length_a and length_b must be non-negative (token or character counts)")
    if np.all(y == 1.0) or np.all(y == 0.0):
        return float(y[0])
    d = la - lb
    scale = d.std()
    # No centring: d = 0 must stay the point where the lengths are equal.
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    # Each prompt becomes a won row with weight y and a lost row with weight 1 - y (ties: 0.5 each).
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    model = LogisticRegression(C=_PRIOR_C, tol=1e-10, max_iter=1000)
    with threadpool_limits(limits=1, user_api="blas"):  # one small fit: BLAS threads only add hand-off cost
        model.fit(features[keep], labels[keep], sample_weight=weights[keep])
    # scikit-learn's lbfgs leaves the intercept unpenalised, so it is the maximum-likelihood b0.
    return float(1.0 / (1.0 + np.exp(-model.intercept_[0])))


# ---------------------------------------------------------------------------------------------- Pareto front


def pareto_front(points: Any) -> np.ndarray:
    """Boolean mask of the non-dominated points; larger is better in every column.

    A point is dominated when another is at least as good in every column and strictly better in one, so
    duplicates do not dominate each other and are both kept. Points are visited in descending lexicographic
    order: any dominator of a point comes earlier, and if some earlier point dominates it then so does a point
    already on the front (dominance is transitive), so each point is compared only with the front so far.
    """
    if hasattr(points, "to_numpy"):
        points = points.to_numpy()
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"points must be a numeric [N, D] array (got {type(points).__name__})") from None
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] == 0:
        raise ValueError(f"points must have shape [N points, D objectives] with N, D >= 1 (got {pts.shape})")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points contains NaN or infinite values; drop those rows first")
    order = np.lexsort(pts.T[::-1])[::-1]  # descending, first column most significant
    front: list[int] = []
    for i in order:
        if front:
            rivals = pts[front]
            dominated = np.all(rivals >= pts[i], axis=1) & np.any(rivals > pts[i], axis=1)
            if dominated.any():
                continue
        front.append(int(i))
    mask = np.zeros(pts.shape[0], dtype=bool)
    mask[front] = True
    return mask


# ---------------------------------------------------------------------------------------------- Bradley-Terry


def _battle_codes(battles: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Index]:
    """Integer codes (model_a, model_b, outcome) for each battle, and the model names in order of appearance."""
    if not isinstance(battles, pd.DataFrame):
        raise ValueError(f"battles must be a pandas DataFrame (got {type(battles).__name__})")
    missing = [c for c in ("model_a", "model_b", "winner") if c not in battles.columns]
    if missing:
        raise ValueError(f"battles lacks column(s) {missing}; expected model_a, model_b, winner")
    if len(battles) == 0:
        raise ValueError("battles is empty; pass at least one comparison")
    if battles["model_a"].isna().any() or battles["model_b"].isna().any():
        raise ValueError("battles has missing model_a/model_b names; drop those rows")
    winner = battles["winner"].astype(str).str.lower().to_numpy()
    unknown = sorted(set(winner) - set(_WINNER_LABELS))
    if unknown:
        raise ValueError(f"battles.winner has unknown label(s) {unknown[:5]}; use 'a', 'b' or 'tie'")
    if (battles["model_a"].to_numpy() == battles["model_b"].to_numpy()).any():
        raise ValueError("battles has rows with model_a == model_b; a model cannot battle itself")
    codes, names = pd.factorize(pd.concat([battles["model_a"], battles["model_b"]], ignore_index=True))
    n = len(battles)
    outcome = np.searchsorted(np.array(_WINNER_LABELS), winner)  # labels are sorted: a=0, b=1, tie=2
    return codes[:n], codes[n:], outcome, names


def _design(ia: np.ndarray, ib: np.ndarray, outcome: np.ndarray, n_models: int):
    """Logistic-regression rows for grouped battles: features, labels, group of each row, weight per battle.

    Row features are +1 for model_a and -1 for model_b, label 1 when model_a wins. A tie is a won and a lost row
    of half weight. Every row also appears mirrored (features negated, label flipped) at half weight: the
    likelihood is unchanged, the fit no longer depends on which side was called "a", and both classes exist
    even when one side won every battle.
    """
    rows_x, rows_y, rows_g, rows_w = [], [], [], []
    for g, (a, b, o) in enumerate(zip(ia, ib, outcome)):
        feat = np.zeros(n_models)
        feat[a], feat[b] = 1.0, -1.0
        labelled = [(1.0, 1.0)] if o == 0 else [(0.0, 1.0)] if o == 1 else [(1.0, 0.5), (0.0, 0.5)]
        for label, share in labelled:
            for sign, y in ((1.0, label), (-1.0, 1.0 - label)):
                rows_x.append(sign * feat)
                rows_y.append(y)
                rows_g.append(g)
                rows_w.append(0.5 * share)
    return np.array(rows_x), np.array(rows_y), np.array(rows_g), np.array(rows_w)


def _fit_strengths(x: np.ndarray, y: np.ndarray, w: np.ndarray, tol: float = 1e-9, max_steps: int = 100) -> np.ndarray:
    """Maximum a posteriori strengths for many weightings of the same rows at once: row r of ``w`` weights the rows
    of ``x``/``y`` for fit r. Minimises ``C * sum(w * logloss) + ||theta||^2 / 2`` (scikit-learn's regularised
    logistic regression without intercept, the prior of _PRIOR_C) by Newton's method with step halving, batched
    over the fits: the objective is strictly convex, so each fit has one optimum. One batched solve replaces a
    bootstrap's hundreds of separate fits (0.55 s to a few ms for 200 resamples)."""
    n_fits, n_models = w.shape[0], x.shape[1]
    theta = np.zeros((n_fits, n_models))

    def objective(t: np.ndarray) -> np.ndarray:
        z = t @ x.T
        return _PRIOR_C * np.sum(w * (np.logaddexp(0.0, z) - y * z), axis=1) + 0.5 * np.sum(t * t, axis=1)

    value = objective(theta)
    for _ in range(max_steps):
        p = 1.0 / (1.0 + np.exp(-(theta @ x.T)))
        grad = _PRIOR_C * (w * (p - y)) @ x + theta
        if np.abs(grad).max() < tol:
            return theta
        hessian = _PRIOR_C * np.einsum("fr,ri,rj->fij", w * p * (1.0 - p), x, x) + np.eye(n_models)
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]
        scale = np.ones(n_fits)
        for _ in range(40):  # halve each fit's step until its objective does not rise
            candidate = theta - scale[:, None] * step
            new_value = objective(candidate)
            rose = new_value > value + 1e-12 * np.abs(value)
            if not rose.any():
                break
            scale = np.where(rose, scale / 2, scale)
        theta, value = candidate, new_value
    raise RuntimeError(f"Bradley-Terry fit did not converge in {max_steps} Newton steps (gradient "
                       f"{np.abs(grad).max():.2e})")


def _to_elo(strengths: np.ndarray, present: np.ndarray, anchor_idx: int | None, base_rating: float) -> np.ndarray:
    """Elo ratings; models absent from this sample of battles are NaN and take no part in the anchoring."""
    if anchor_idx is None:
        shift = strengths[present].mean()
    elif present[anchor_idx]:
        shift = strengths[anchor_idx]
    else:
        return np.full(strengths.shape, np.nan)
    return np.where(present, base_rating + ELO_PER_LOGIT * (strengths - shift), np.nan)


def bradley_terry(
    battles: pd.DataFrame,
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    anchor: str | None = None,
    base_rating: float = 1000.0,
) -> pd.DataFrame:
    """Bradley-Terry ratings on the Elo scale with bootstrap intervals, as Chatbot Arena computes them.

    ``battles`` has one row per comparison with columns ``model_a``, ``model_b`` and ``winner`` in
    {"a", "b", "tie"}. ``P(a beats b) = sigmoid(w_a - w_b)`` is fitted by scikit-learn's logistic regression
    (no intercept); ratings are ``base_rating + 400/ln(10) * (w - shift)`` where ``shift`` makes the mean
    rating ``base_rating``, or, with ``anchor`` naming a model, gives that model ``base_rating`` (its interval
    then has zero width: the others are measured against it). ``low``/``high`` are the percentile interval
    over ``n_resamples`` resamples of the battles (each resample is a full refit, hence the smaller default
    than ``win_rate``'s). Battles are grouped by (model_a, model_b, winner), so a fit costs the number of
    distinct groups, not battles. Returns one row per model, best first.
    """
    ia, ib, outcome, names = _battle_codes(battles)
    _check_confidence(confidence, n_resamples)
    n_models = len(names)
    anchor_idx = None
    if anchor is not None:
        if anchor not in names:
            raise ValueError(f"anchor {anchor!r} does not appear in battles; pick one of {list(names)[:10]}")
        anchor_idx = int(names.get_loc(anchor))
    graph = np.zeros((n_models, n_models))
    graph[ia, ib] = 1.0
    n_parts, _ = connected_components(graph, directed=False)
    if n_parts > 1:
        raise ValueError(
            f"battles splits the models into {n_parts} groups that never meet; ratings across groups are not "
            "comparable, so add battles between them or rate each group separately"
        )

    groups, group_count = np.unique(np.stack([ia, ib, outcome], axis=1), axis=0, return_counts=True)
    x, y, row_group, row_weight = _design(groups[:, 0], groups[:, 1], groups[:, 2], n_models)

    rng = np.random.default_rng(seed)
    n_battles = len(ia)
    draws = rng.multinomial(n_battles, group_count / n_battles, size=int(n_resamples)).astype(np.float64)
    counts = np.vstack([group_count.astype(np.float64), draws])  # the point estimate, then every resample
    strengths = _fit_strengths(x, y, counts[:, row_group] * row_weight)
    ratings = []
    for fit_counts, fit_strengths in zip(counts, strengths):
        present = np.zeros(n_models, dtype=bool)
        present[groups[fit_counts > 0, 0]] = True
        present[groups[fit_counts > 0, 1]] = True
        ratings.append(_to_elo(fit_strengths, present, anchor_idx, base_rating))
    point, boot = ratings[0], np.stack(ratings[1:])
    low, high = _percentiles(boot, confidence)
    table = pd.DataFrame({"model": list(names), "rating": point, "low": low, "high": high})
    return table.sort_values("rating", ascending=False, ignore_index=True)


# ---------------------------------------------------------------------------------------------- reward margins


def implicit_reward_margins(
    policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float
) -> tuple[np.ndarray, float]:
    """DPO implicit reward margins ``beta * ((pc - rc) - (pr - rr))`` per example, and their accuracy.

    Inputs are summed response log-probs, one per example. Accuracy is the share of strictly positive margins
    (TRL's ``rewards/accuracies``): a zero margin has not learned the preference. Margins that keep growing
    with accuracy near 1 signal over-optimisation rather than success (docs/methods/dpo.md).
    """
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive number (got {beta})")
    pc = _vector(policy_chosen, "policy_chosen")
    arrays = {
        "policy_rejected": _vector(policy_rejected, "policy_rejected"),
        "ref_chosen": _vector(ref_chosen, "ref_chosen"),
        "ref_rejected": _vector(ref_rejected, "ref_rejected"),
    }
    for name, arr in arrays.items():
        if arr.size != pc.size:
            raise ValueError(f"{name} has {arr.size} entries but policy_chosen has {pc.size}; one per example")
    margins = beta * ((pc - arrays["ref_chosen"]) - (arrays["policy_rejected"] - arrays["ref_rejected"]))
    return margins, float(np.mean(margins > 0))
