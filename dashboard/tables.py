"""DataFrame transforms behind the pages: pure functions from query results to the tables and chart inputs.

The statistics themselves are engine.evaluation's (win_rate) and engine.store.standings' (leaderboard, pareto_table,
called through dashboard.queries); this module only shapes store rows for them and names the results for display.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

_OUTCOME_OF_A = {"a": 1.0, "tie": 0.5, "b": 0.0}


# ---------------------------------------------------------------------------------------------- configs


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dict to dotted keys; lists of mappings get indexed keys (objectives[0].name)."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(config, list) and any(isinstance(v, dict) for v in config):
        out = {}
        for i, value in enumerate(config):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: config}


def config_diff(a: dict[str, Any], b: dict[str, Any], only_different: bool = True) -> pd.DataFrame:
    """Field-by-field comparison of two run configs: columns field, a, b (values as JSON text, '—' if absent)."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va = json.dumps(fa[key]) if key in fa else "—"
        vb = json.dumps(fb[key]) if key in fb else "—"
        if va != vb or not only_different:
            rows.append({"field": key, "a": va, "b": vb})
    return pd.DataFrame(rows, columns=["field", "a", "b"])


# ---------------------------------------------------------------------------------------------- win rates


def eval_win_rates(rows: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows (metric win_rate / lc_win_rate) to chart input: label 'model vs baseline', metric, value,
    low, high (NaN where the store has no interval, as for the length-controlled rate), run_id, n, distribution."""
    columns = ["label", "metric", "value", "low", "high", "run_id", "model", "baseline", "n", "distribution"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = rows.assign(label=rows["model"] + " vs " + rows["baseline"])
    out["metric"] = out["metric"].map({"win_rate": "win rate", "lc_win_rate": "LC win rate"}).fillna(out["metric"])
    return out[columns].astype({"value": float, "low": float, "high": float}).reset_index(drop=True)


def judgment_win_rates(judgments: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Win rate of each pair of models from stored verdicts (judges' and human votes), per source.

    Each pair is read from the side of the alphabetically first model, whichever side of the row it sat on; the
    interval is win_rate's percentile bootstrap over verdicts. Columns model, opponent, source, win_rate, low,
    high, n.
    """
    from engine.evaluation import win_rate  # scikit-learn comes with it: kept off the Runs page's imports

    columns = ["model", "opponent", "source", "win_rate", "low", "high", "n"]
    if judgments.empty:
        return pd.DataFrame(columns=columns)
    first = judgments[["model_a", "model_b"]].min(axis=1)
    flipped = judgments["model_a"] != first
    outcome = judgments["winner"].map(_OUTCOME_OF_A).astype(float)
    frame = pd.DataFrame({"model": first, "opponent": judgments[["model_a", "model_b"]].max(axis=1),
                          "source": judgments["source"], "outcome": outcome.where(~flipped, 1.0 - outcome)})
    rows = []
    for (model, opponent, source), group in frame.groupby(["model", "opponent", "source"], sort=True):
        rate, low, high = win_rate(group["outcome"].to_numpy(), n_resamples=n_resamples, seed=seed)
        rows.append({"model": model, "opponent": opponent, "source": source, "win_rate": rate, "low": low,
                     "high": high, "n": len(group)})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------- Pareto


def estimate_path(samples: Any, lam_path: pd.DataFrame, objectives: list[str], max_points: int = 60) -> pd.DataFrame:
    """Estimated scores along a mixing run's λ iterates (engine.recipes.mixing_estimates.instant_estimate on the stored
    samples, no generation), at most ``max_points`` evenly spaced steps. Columns step, weights, *objectives."""
    from engine.recipes.mixing_estimates import instant_estimate

    wide = lam_path.pivot_table(index="step", columns="objective", values="weight").reindex(
        columns=samples.objectives)
    wide = wide.dropna()
    if wide.empty:
        return pd.DataFrame(columns=["step", "weights", *objectives])
    picks = np.unique(np.linspace(0, len(wide) - 1, min(max_points, len(wide))).round().astype(int))
    rows = []
    for step, lam in wide.iloc[picks].iterrows():
        est = instant_estimate(samples, lam.to_numpy())
        rows.append({"step": int(step), "weights": json.dumps([round(float(x), 3) for x in lam]),
                     **{o: est["scores"][o] for o in objectives}})
    return pd.DataFrame(rows, columns=["step", "weights", *objectives])
