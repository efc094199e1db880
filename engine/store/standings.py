"""Standings across the whole store: the Bradley-Terry leaderboard over every judgment (judges and human votes) and
the Pareto table over every evaluated model and mixture point. The dashboard's Compare, Pareto and Mixer pages read
these live views, the one implementation of each; the evaluation job (engine/eval_job.py) writes what they read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components

from engine.store.runs import StoreReader
from engine.theory.statistics import bradley_terry, pareto_front


def leaderboard(reader: StoreReader, sources: Sequence[str] | None = None, n_resamples: int = 200) -> pd.DataFrame:
    """Bradley-Terry Elo ratings from every judgment in the store (judges and human votes), best first.

    ``sources`` keeps only those judgment sources (e.g. ``["human"]``). Models that never meet, even through
    others, cannot share a scale: each connected group is rated on its own (column ``group``, 0 the largest).
    Returns columns model, rating, low, high, battles, group; empty when there are no judgments.
    """
    # A vote stored without a winner label counts by its probability, as the judge's own verdicts do.
    sql = ("SELECT model_a, model_b, coalesce(winner, CASE WHEN prob_a > 0.5 THEN 'a' WHEN prob_a < 0.5 THEN 'b' "
           "ELSE 'tie' END) AS winner FROM judgments WHERE model_a <> model_b AND (winner IS NOT NULL OR prob_a IS "
           "NOT NULL)")
    order = " ORDER BY model_a, model_b, winner"  # the same store gives the same bootstrap draws, hence intervals
    battles = reader.query((sql + " AND list_contains(?, source)" if sources else sql) + order,
                           [list(sources)] if sources else [])
    columns = ["model", "rating", "low", "high", "battles", "group"]
    if battles.empty:
        return pd.DataFrame(columns=columns)
    codes, names = pd.factorize(pd.concat([battles["model_a"], battles["model_b"]], ignore_index=True))
    graph = np.zeros((len(names), len(names)))
    graph[codes[: len(battles)], codes[len(battles):]] = 1.0
    _, label = connected_components(graph, directed=False)
    group_of = dict(zip(names, label))
    battles["group"] = battles["model_a"].map(group_of)
    counts = pd.concat([battles["model_a"], battles["model_b"]]).value_counts()
    parts = []
    for rank, (_, part) in enumerate(sorted(battles.groupby("group"), key=lambda g: -len(g[1]))):
        rated = bradley_terry(part[["model_a", "model_b", "winner"]], n_resamples=n_resamples)
        parts.append(rated.assign(battles=rated["model"].map(counts).astype(int), group=rank))
    return pd.concat(parts, ignore_index=True)[columns]


_POINT_COLUMNS = ["name", "label", "kind", "distribution", "run_id", "weights", "ess"]
UNKNOWN_DISTRIBUTION = "unknown"  # rows stored before distributions were recorded
_COST_OBJECTIVES = ("kl",)  # the sweep's KL to the reference: a cost drawn on no front


def _point_name(label: str, kind: str, weights: str, run_id: str) -> str:
    """Models are named by themselves; a grid estimate by its weights, any other mixture point by its label, and
    both by their run, so the names of different runs' points never collide."""
    if kind == "model":
        return label
    return f"{f'λ={weights}' if label == 'grid' else label} · {run_id}"


def pareto_table(reader: StoreReader, objectives: Sequence[str] | None = None, kinds: Sequence[str] | None = None,
                 run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-objective scores of every evaluated model and every mixture point, with ``on_front`` marking the
    non-dominated ones among the points kept of the same ``distribution`` (larger is better in every objective):
    an estimate of ``pi_lambda`` at temperature 1 never dominates, nor is dominated by, a token-level mixture or a
    model sampled at another temperature (engine.decoding.distributions).

    A model is one point: its latest ``score/<objective>`` of any evaluation run (``run_id``: the run of its latest
    score). A mixture point is one (run, label, kind) of the ``mixtures`` table at its latest weights, so a sweep
    that ran again replaces the run's points, except that the many ``grid`` estimates of a sweep stay apart, one
    point per weights. A mixing run's own ``evaluations`` rows are the scores of its generated points: they count
    once, as mixtures. ``objectives`` defaults to every objective scored except the sweep's ``kl`` (a cost); points
    lacking one of them are left out. ``kinds`` ("model", "mixture:estimate", ...) and ``run_ids`` keep only those
    points; the front is drawn among them. Returns columns name (see ``_point_name``), label, kind, distribution,
    run_id, weights (JSON list, "" for models), ess (NaN for models), one per objective, on_front; sorted by kind and
    name.
    """
    models = reader.query(
        "SELECT label, 'model' AS kind, arg_max(run_id, time) OVER (PARTITION BY label) AS run_id, '' AS point, "
        "'' AS weights, NULL::DOUBLE AS ess, arg_max(distribution, time) OVER (PARTITION BY label) AS distribution, "
        "objective, score FROM (SELECT model AS label, substr(metric, 7) AS objective, arg_max(run_id, time) AS "
        "run_id, arg_max(value, time) AS score, arg_max(distribution, time) AS distribution, max(time) AS time "
        "FROM evaluations e WHERE starts_with(metric, 'score/') AND NOT EXISTS (SELECT 1 FROM mixtures m "
        "WHERE m.run_id = e.run_id AND m.label = e.model) GROUP BY model, metric)")
    mixtures = reader.query(
        "SELECT label, kind, run_id, point, arg_max(weights, time) OVER (PARTITION BY run_id, label, kind, point) "
        "AS weights, ess, distribution, objective, score FROM (SELECT label, 'mixture:' || kind AS kind, run_id, "
        "CASE WHEN label = 'grid' THEN weights ELSE '' END AS point, arg_max(weights, time) AS weights, "
        "arg_max(ess, time) AS ess, arg_max(distribution, time) AS distribution, objective, "
        "arg_max(score, time) AS score, max(time) AS time FROM mixtures "
        "GROUP BY run_id, label, kind, point, objective)")
    points = pd.concat([models, mixtures], ignore_index=True)
    points["distribution"] = points["distribution"].fillna(UNKNOWN_DISTRIBUTION)
    wanted = (sorted(set(points["objective"]) - set(_COST_OBJECTIVES)) if objectives is None
              else list(objectives))
    if kinds is not None:
        points = points[points["kind"].isin(list(kinds))]
    if run_ids is not None:
        points = points[points["run_id"].isin(list(run_ids))]
    points = points[points["objective"].isin(wanted)]
    columns = [*_POINT_COLUMNS, *wanted, "on_front"]
    if points.empty or not wanted:
        return pd.DataFrame(columns=columns)
    keys = ["label", "kind", "run_id", "point"]
    wide = points.pivot_table(index=keys, columns="objective", values="score", aggfunc="last")
    about = points.groupby(keys).agg(weights=("weights", "last"), ess=("ess", "max"),
                                     distribution=("distribution", "last"))
    wide = wide.reindex(columns=wanted).dropna().join(about).reset_index()
    wide.columns.name = None
    wide["name"] = [_point_name(*r) for r in wide[["label", "kind", "weights", "run_id"]].itertuples(index=False)]
    wide["on_front"] = np.zeros(len(wide), dtype=bool)
    for _, group in wide.groupby("distribution"):
        wide.loc[group.index, "on_front"] = pareto_front(group[wanted].to_numpy())
    return wide[columns].sort_values(["kind", "name"], ignore_index=True)
